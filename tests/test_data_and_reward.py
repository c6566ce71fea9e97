"""reweight-prepare-data on local files, and the reward dispatch verl loads from our config."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from reweight.data.prepare import DAPO_INSTRUCTION, SOURCES, dapo_prompt, main, normalise_answer, prepare
from reweight.reward import compute_score


def _dapo_style_rows():
    """Rows in verl's schema with DAPO's prompt, each problem repeated as in DAPO's hub file."""
    rows = []
    for k in range(3):
        for _ in range(4):
            rows.append({
                "data_source": "math_dapo",
                "prompt": [{"role": "user", "content": dapo_prompt(f"What is {k} + {k}?")}],
                "ability": "MATH",
                "reward_model": {"style": "rule", "ground_truth": str(2 * k)},
                "extra_info": {"index": "x"},
            })
    return rows


def test_prepare_from_local_files(tmp_path):
    pd.DataFrame(_dapo_style_rows()).to_parquet(tmp_path / "dapo.parquet")
    with open(tmp_path / "aime.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"ID": f"2024-I-{i}", "Problem": f"Find {i} squared.", "Answer": i * i}) + "\n")
    pd.DataFrame({"problem": ["p1", "p2"], "answer": [142.0, 0.5]}).to_parquet(tmp_path / "amc.parquet")

    out = prepare(["dapo-math-17k", "aime24", "amc"], tmp_path / "out",
                  {"dapo-math-17k": tmp_path / "dapo.parquet", "aime24": tmp_path / "aime.jsonl",
                   "amc": tmp_path / "amc.parquet"})
    train = pd.read_parquet(out["dapo-math-17k"])
    assert len(train) == 3  # de-duplicated
    assert train.prompt[0][0]["content"] == dapo_prompt("What is 0 + 0?")  # not wrapped twice
    assert list(train.reward_model.map(lambda r: r["ground_truth"])) == ["0", "2", "4"]
    assert set(train.data_source) == {"math_dapo"}

    aime = pd.read_parquet(out["aime24"])
    assert len(aime) == 5 * 32 and set(aime.data_source) == {"aime24"}  # avg@32 file
    assert aime.prompt[0][0]["content"].startswith(DAPO_INSTRUCTION)
    assert aime.extra_info[31]["index"] == 0 and aime.extra_info[32]["index"] == 1

    amc = pd.read_parquet(out["amc"])
    assert list(amc.reward_model.map(lambda r: r["ground_truth"])) == ["142", "0.5"]
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave nothing behind


def test_prepared_files_load_in_verls_rl_dataset(tmp_path, tiny_tokenizer):
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    pd.DataFrame({"problem": ["What is 1+1?", "What is 2+3?"], "answer": [2, 5]}).to_parquet(tmp_path / "in.parquet")
    path = prepare(["aime25"], tmp_path, {"aime25": tmp_path / "in.parquet"})["aime25"]
    cfg = OmegaConf.create({"max_prompt_length": 256, "prompt_key": "prompt", "filter_overlong_prompts": False,
                            "truncation": "error", "return_raw_chat": True})
    ds = RLHFDataset(data_files=[str(path)], tokenizer=tiny_tokenizer, config=cfg)
    assert len(ds) == 2
    item = ds[1]
    assert item["data_source"] == "aime25" and item["reward_model"]["ground_truth"] == "5"


@pytest.mark.parametrize("argv,match", [
    (["--only", "gsm8k"], "unknown dataset 'gsm8k'"),
    (["--from-file", "amc=/no/such/file.parquet"], "file not found"),
    (["--from-file", "amc"], "NAME=VALUE"),
])
def test_cli_bad_input(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--out-dir", str(tmp_path), *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


def test_missing_answer_column_named(tmp_path):
    pd.DataFrame({"problem": ["p"], "solution": ["s"]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no answer column"):
        prepare(["amc"], tmp_path, {"amc": tmp_path / "x.parquet"})


def test_normalise_answer():
    assert [normalise_answer(x) for x in (142.0, "142.0", " 7 ", "\\frac{1}{2}", 0.25)] == ["142", "142", "7", "\\frac{1}{2}", "0.25"]


@pytest.mark.parametrize("source", ["math_dapo", "aime24", "aime25", "amc"])
def test_reward_dispatch_math_sources(source):
    right = compute_score(source, "Some steps.\nAnswer: 42", "42")
    wrong = compute_score(source, "Some steps.\nAnswer: 41", "42")
    assert (right["score"], right["acc"]) == (1.0, True)
    assert (wrong["score"], wrong["acc"]) == (-1.0, False)


def test_reward_dispatch_synthetic_and_loaded_by_verl_from_our_config():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from reweight.data.synthetic import DATA_SOURCE
    from reweight.train import compose_config

    cfg = compose_config("dapo_reweight", ["actor_rollout_ref.model.path=/m"])
    fn = get_custom_reward_fn(cfg)
    assert fn(data_source=DATA_SOURCE, solution_str="2+3=5. \\boxed{5}", ground_truth="5")["acc"] is True
    assert fn(data_source=DATA_SOURCE, solution_str="\\boxed{6}", ground_truth="5")["score"] == -1.0
    assert fn(data_source="amc", solution_str="Answer: 3", ground_truth="3")["score"] == 1.0
    assert set(SOURCES) == {"dapo-math-17k", "aime24", "aime25", "amc"}
