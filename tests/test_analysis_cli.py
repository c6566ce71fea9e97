"""reweight-analyze end to end on tiny local models: outputs, resumption, bad input, histograms."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import reweight.analysis.shards as shards_mod
from reweight.analysis import METRIC_NAMES, token_metrics
from reweight.analysis.cli import main
from reweight.analysis.pipeline import AnalysisConfig, run_analysis
from reweight.analysis.report import HIST_METRICS, histogram_figure
from reweight.data.synthetic import make_problems
from reweight.models import TokenizerMismatchError, check_same_tokenizer


@pytest.fixture(scope="module")
def responses_file(tmp_path_factory, tiny_tokenizer):
    """10 rows: chat prompts, text or token-id responses, from base and rl; rows 0 and 5 have empty responses."""
    rows = []
    for i, p in enumerate(make_problems(10, seed=7)):
        response = "" if i in (0, 5) else p.solution + " the answer is final"
        if i % 3 == 1:  # some responses given as token ids
            response = tiny_tokenizer(response, add_special_tokens=False)["input_ids"]
        rows.append(
            {
                "id": f"q{i}",
                "prompt": [{"role": "user", "content": p.prompt}],
                "response": response,
                "source": "base" if i % 2 else "rl",
            }
        )
    path = tmp_path_factory.mktemp("inputs") / "responses.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def _args(dirs, responses, out, *extra):
    return [
        "--base", dirs[0], "--rl", dirs[1], "--responses", str(responses),
        "--out", str(out), "--no-progress", "--shard-size", "3", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_outputs_match_library_and_resume_skips_finished_shards(
    tiny_pair, tiny_pair_dirs, responses_file, tmp_path, monkeypatch
):
    tok, base, rl = tiny_pair
    calls = []
    real_run = shards_mod.ShardWorker.run

    def counting_run(self, index, items, shard_dir, on_batch=None):
        calls.append(index)
        if index == 2 and fail["now"]:
            raise RuntimeError("simulated crash in shard 2")
        return real_run(self, index, items, shard_dir, on_batch)

    fail = {"now": True}
    monkeypatch.setattr(shards_mod.ShardWorker, "run", counting_run)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(_args(tiny_pair_dirs, responses_file, out, "--batch-tokens", "64"))
    assert calls == [0, 1, 2]
    assert not (out / "summary.json").exists()
    assert not list((out / "shards").glob(".*tmp*"))  # no partial files left behind
    first_mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-0000[01].*")}

    calls.clear()
    fail["now"] = False
    assert main(_args(tiny_pair_dirs, responses_file, out, "--batch-tokens", "64")) == 0
    assert calls == [2, 3]  # 10 rows / 3 per shard = 4 shards; 0 and 1 were done
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-0000[01].*")} == first_mtimes

    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards"] == {"total": 4, "run_now": [2, 3]}
    assert summary["n_samples"] == 10 and summary["n_empty_responses"] == 2
    tokens = pq.read_table(out / "tokens.parquet").to_pandas()
    samples = pq.read_table(out / "samples.parquet").to_pandas()
    assert list(samples["sample_id"]) == [f"q{i}" for i in range(10)]
    assert summary["n_tokens"] == len(tokens) == samples["n_response_tokens"].sum()
    assert set(tokens["sample_id"]) == {f"q{i}" for i in range(10) if i not in (0, 5)}

    # Each response's records equal token_metrics on that sequence alone (independent of batching/sharding).
    for _, s in samples[samples["n_response_tokens"] > 0].iterrows():
        p, r = list(s["prompt_ids"]), list(s["response_ids"])
        ids = torch.tensor([p + r])
        resp = torch.zeros_like(ids)
        resp[0, len(p) :] = 1
        want = token_metrics(base, rl, input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=resp)
        got = tokens[tokens["sample_id"] == s["sample_id"]].sort_values("position")
        assert list(got["token_id"]) == r and list(got["position"]) == list(range(len(r)))
        assert list(got["source"]) == [s["source"]] * len(r)
        for m in METRIC_NAMES:
            np.testing.assert_allclose(got[m].to_numpy(), want[m][0, len(p) :].numpy(), atol=1e-5)
        assert "".join(got["token"]) == tok.decode(r)

    # Summary statistics against a direct computation from the records.
    d = tokens["delta_logp"].to_numpy(np.float64)
    assert summary["abs_delta_logp_above"]["all"]["0.1"] == pytest.approx((np.abs(d) > 0.1).mean())
    for src, group in tokens.groupby("source"):
        for m in METRIC_NAMES:
            assert summary["per_source_means"][src][m] == pytest.approx(group[m].mean(), abs=1e-6)
    assert summary["metrics"]["kl_rl_base"]["all"]["quantiles"]["0.5"] == pytest.approx(
        np.quantile(tokens["kl_rl_base"].to_numpy(np.float64), 0.5)
    )

    top = json.loads((out / "top_tokens.json").read_text())
    assert top["most_positive"][0]["delta_logp"] == pytest.approx(d.max())
    assert top["most_negative"][0]["delta_logp"] == pytest.approx(d.min())
    first = top["most_positive"][0]
    row = tokens[(tokens["sample_id"] == first["sample_id"]) & (tokens["position"] == first["position"])]
    before = tokens[(tokens["sample_id"] == first["sample_id"]) & (tokens["position"] < first["position"])]
    assert row["token"].item() == first["token"]
    assert first["context_before"] == "".join(before["token"].tolist()[-24:])

    # The histogram PNG: an image, one panel per metric (recorded in the PNG and rebuilt from the data).
    img = Image.open(out / "histograms.png")
    img.load()
    assert img.format == "PNG" and img.width > img.height > 100
    assert json.loads(img.text["panels"]) == list(HIST_METRICS)
    assert summary["figure"]["n_axes"] == len(HIST_METRICS)

    # Everything finished: a further run has no shard left to run (and loads no model).
    monkeypatch.setattr(shards_mod, "ShardWorker", lambda *a, **k: pytest.fail("no worker is needed"))
    assert shards_mod.run_shards(None, [[None]] * 4, out / "shards", progress=False) == []


def test_histogram_figure_has_one_log_panel_per_metric_with_both_sources():
    rng = np.random.default_rng(0)
    metrics = ("delta_logp", "entropy_rl", "kl_base_rl")
    values = {s: {m: rng.normal(size=50 + 10 * i) for m in metrics} for i, s in enumerate(("base", "rl"))}
    values["rl"]["kl_base_rl"] = np.zeros(0)  # a source without tokens for one panel still gets the panel
    fig = histogram_figure(values, metrics)
    assert len(fig.axes) == len(metrics)
    for ax, m in zip(fig.axes, metrics):
        assert ax.get_yscale() == "log" and ax.get_xlabel() == m
        labels = ax.get_legend_handles_labels()[1]
        assert labels == (["base responses (n=50)"] if m == "kl_base_rl" else ["base responses (n=50)", "rl responses (n=60)"])


def test_tokenizer_mismatch_is_refused_before_loading_models(tiny_pair_dirs, responses_file, tmp_path, monkeypatch):
    from reweight.tiny import build_model, build_tokenizer, save_tiny

    other_tok = build_tokenizer(vocab_size=400, seed=3)
    other = save_tiny(tmp_path / "other", build_model(len(other_tok), seed=4), other_tok)
    monkeypatch.setattr(shards_mod, "load_model", lambda *a, **k: pytest.fail("models must not load"))
    cfg = AnalysisConfig(base_model=tiny_pair_dirs[0], rl_model=str(other), out_dir=str(tmp_path / "o"),
                         responses=str(responses_file), progress=False)  # fmt: skip
    with pytest.raises(TokenizerMismatchError) as err:
        run_analysis(cfg)
    assert tiny_pair_dirs[0] in str(err.value) and str(other) in str(err.value)
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as code:  # the CLI: a message and exit status 2, not a traceback
        main(_args((tiny_pair_dirs[0], str(other)), responses_file, tmp_path / "o"))
    assert code.value.code == 2


def test_same_tokenizer_check_compares_vocabulary_and_special_tokens(tiny_tokenizer):
    import copy

    check_same_tokenizer(tiny_tokenizer, copy.deepcopy(tiny_tokenizer), "a", "b")
    changed = copy.deepcopy(tiny_tokenizer)
    changed.pad_token = "<|im_end|>"
    with pytest.raises(TokenizerMismatchError, match="special tokens"):
        check_same_tokenizer(tiny_tokenizer, changed, "a", "b")


def test_bad_input_is_reported_clearly_before_models_load(tiny_pair_dirs, responses_file, tmp_path, monkeypatch):
    monkeypatch.setattr(shards_mod, "load_model", lambda *a, **k: pytest.fail("models must not load"))
    base_cfg = dict(base_model=tiny_pair_dirs[0], rl_model=tiny_pair_dirs[1], out_dir=str(tmp_path / "o"), progress=False)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        run_analysis(AnalysisConfig(responses=str(tmp_path / "missing.parquet"), **base_cfg))
    with pytest.raises(KeyError, match="'answer'"):
        run_analysis(AnalysisConfig(responses=str(responses_file), response_key="answer", **base_cfg))
    no_source = tmp_path / "nosource.jsonl"
    pd.read_json(responses_file, lines=True).drop(columns=["source"]).to_json(no_source, orient="records", lines=True)
    with pytest.raises(KeyError, match="--source"):
        run_analysis(AnalysisConfig(responses=str(no_source), **base_cfg))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        run_analysis(AnalysisConfig(responses=str(responses_file), **{**base_cfg, "rl_model": str(tmp_path / "nowhere")}))
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_different_job(tiny_pair_dirs, responses_file, tmp_path, capsys):
    out = tmp_path / "out"
    main(_args(tiny_pair_dirs, responses_file, out, "--shard-size", "10"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(_args(tiny_pair_dirs, responses_file, out, "--shard-size", "10", "--temperature", "0.5"))
    assert e.value.code == 2  # our refusal (reweight.cli_errors), not an argparse error or a crash
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"reweight-analyze: error: {str(out)!r} holds a different analysis job (differs in ['temperature']); "
        "use another output directory or --overwrite to start afresh"
    ], lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["temperature"] == 1.0


def test_generation_from_prompts_by_both_models(tiny_pair_dirs, tmp_path):
    prompts = tmp_path / "prompts.parquet"
    pd.DataFrame({"prompt": [p.prompt for p in make_problems(2, seed=1)]}).to_parquet(prompts)
    out = tmp_path / "gen"
    args = ["--base", tiny_pair_dirs[0], "--rl", tiny_pair_dirs[1], "--prompts", str(prompts),
            "--chat-template", "--max-new-tokens", "6", "--samples-per-prompt", "2", "--out", str(out),
            "--no-progress", "--device", "cpu", "--temperature", "0.8"]  # fmt: skip
    main(args)
    samples = pq.read_table(out / "samples.parquet").to_pandas()
    assert sorted(samples["sample_id"]) == sorted(f"{i}/{s}/{k}" for i in range(2) for s in ("base", "rl") for k in range(2))
    assert ((samples["n_response_tokens"] >= 1) & (samples["n_response_tokens"] <= 6)).all()
    assert samples["prompt_ids"].map(len).nunique() == 2  # two different prompts
    tokens = pq.read_table(out / "tokens.parquet")
    assert tokens.num_rows == samples["n_response_tokens"].sum()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_source_means"]) == {"base", "rl"}
    assert (out / "histograms.png").exists() and summary["figure"]
    # --no-figure: the same analysis without histograms.png (reweight-study's per-seed steps)
    main([*args[:args.index("--out") + 1], str(tmp_path / "nofig"), *args[args.index("--out") + 2:], "--no-figure"])
    assert (tmp_path / "nofig" / "summary.json").exists() and not (tmp_path / "nofig" / "histograms.png").exists()
    assert json.loads((tmp_path / "nofig" / "summary.json").read_text())["figure"] is None
