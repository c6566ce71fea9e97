"""reweight-eval end to end on tiny local checkpoints: sample, score a file, support, report; bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reweight.data.synthetic import make_problems, to_verl_row
from reweight.evaluation.cli import main
from reweight.evaluation.records import read_results


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    problems = make_problems(3, seed=11)
    pd.DataFrame([to_verl_row(p, "test", i) for i, p in enumerate(problems)]).to_parquet(root / "data.parquet")
    return root, problems


def test_cli_sample_score_support_report(tiny_pair_dirs, dataset, capsys):
    base_dir, rl_dir = tiny_pair_dirs
    root, problems = dataset
    data = str(root / "data.parquet")
    common = ["--data", data, "--n", "2", "--max-new-tokens", "3", "--batch-size", "4", "--no-progress"]
    assert main(["sample", "--model", base_dir, "--out", str(root / "base.jsonl"), *common]) == 0
    assert main(["sample", "--model", base_dir, "--out", str(root / "base.jsonl"), *common]) == 0  # resumed: nothing left
    assert "already in" in capsys.readouterr().out

    # a decoder's output: one response per row, problem = dataset row; the first sample of each is right
    with open(root / "decoded.jsonl", "w") as f:
        for i, p in enumerate(problems):
            for j in range(2):
                f.write(json.dumps({"prompt_index": i, "response": f"\\boxed{{{p.answer + j}}}", "finish_reason": "stop"}) + "\n")
    assert main(["score", "--responses", str(root / "decoded.jsonl"), "--data", data, "--out", str(root / "rw.jsonl"), "--no-progress"]) == 0
    _, rw = read_results(root / "rw.jsonl")
    assert [r.correct for r in rw] == [[True, False]] * 3

    assert main([
        "support", "--base-results", str(root / "rw.jsonl"), "--rl-results", str(root / "rw.jsonl"),
        "--out", str(root / "support.json"), "--no-token-entropy", "--no-progress",
    ]) == 0
    support = json.loads((root / "support.json").read_text())
    assert support["k"] == 2 and len(support["problems"]) == 3
    # the same results on both sides, each problem solved within k: all preserved, SRR = 1, NDR = 0
    assert support["aggregate"]["average"]["preservation"] == 3 and support["aggregate"]["average"]["SRR"] == 1.0

    out = root / "report"
    assert main([
        "report", "--results", f"base={root / 'base.jsonl'}", "--results", f"reweighted={root / 'rw.jsonl'}",
        "--support", str(root / "support.json"), "--out-dir", str(out), "--bootstrap", "50",
    ]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["ks"] == [1, 2]
    rw_avg = report["models"]["reweighted"]["summary"]["average"]
    assert rw_avg["pass@1"]["value"] == pytest.approx(0.5) and rw_avg["pass@2"]["value"] == pytest.approx(1.0)
    _, base = read_results(root / "base.jsonl")
    assert report["models"]["base"]["summary"]["average"]["avg@2"]["value"] == pytest.approx(sum(r.num_correct for r in base) / 6)
    md = (out / "report.md").read_text()
    assert "| reweighted |" in md and "| base |" in md and "Support (Invisible Leash)" in md
    assert (out / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_fails_before_loading_a_model(dataset, tmp_path, capsys):
    root, _ = dataset
    pd.DataFrame([{"prompt": "What is 1+1?", "data_source": "amc"}]).to_parquet(tmp_path / "nogt.parquet")
    # the model (a hub id, never fetched) is not loaded: the ground-truth error must come first
    rc = main(["sample", "--model", "no-org/no-model", "--data", str(tmp_path / "nogt.parquet"), "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "reward_model.ground_truth" in capsys.readouterr().err

    with open(tmp_path / "r.jsonl", "w") as f:
        f.write(json.dumps({"meta": {}}) + "\n")
        f.write(json.dumps({"uid": "a/0", "data_source": "a", "ground_truth": "1", "prompt": "q",
                            "responses": ["x", "y"], "correct": [False, True]}) + "\n")
    rc = main(["report", "--results", f"m={tmp_path / 'r.jsonl'}", "--k", "3", "--out-dir", str(tmp_path / "rep")])
    assert rc == 2 and "k > n" in capsys.readouterr().err and not (tmp_path / "rep").exists()

    (tmp_path / "empty.jsonl").write_text("")
    rc = main(["report", "--results", f"m={tmp_path / 'empty.jsonl'}", "--out-dir", str(tmp_path / "rep")])
    assert rc == 2 and "empty.jsonl" in capsys.readouterr().err
    rc = main(["report", "--results", str(tmp_path / "r.jsonl"), "--out-dir", str(tmp_path / "rep")])
    assert rc == 2 and "LABEL=PATH" in capsys.readouterr().err
