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


def test_question_splits_are_disjoint_and_draws_stay_in_their_split():
    from collections import Counter

    from reweight.data.synthetic import all_questions, make_split_problems, question_split, split_questions

    questions = all_questions((1, 3))
    assert len(questions) == 100 + 121 == len({p.question for p in questions})
    by_split = {s: {p.question for p in split_questions((1, 3), s)} for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == len(questions)  # a partition of the question space
    assert not (by_split["train"] & by_split["val"]) and not (by_split["test"] & (by_split["train"] | by_split["val"]))
    drawn = make_split_problems(300, seed=5, levels=(1, 3), split="train")
    assert len(drawn) == 300 and {p.question for p in drawn} <= by_split["train"]
    assert all(eval(p.question) == p.answer for p in drawn)  # noqa: S307 - our own arithmetic strings
    assert question_split("7*8") == question_split("7*8")  # stable across calls (hash of the text)
    counts = Counter(question_split(p.question) for p in questions)
    assert 0.25 < counts["test"] / len(questions) < 0.45
    with pytest.raises(ValueError, match="split='holdout'"):
        make_split_problems(1, 0, (1,), "holdout")
# ------------------------------------------------------------------------------ the math scorers

PAPER_PRESETS = ["dapo", "dapo_reweight", "qwen25_math_7b_dapo", "qwen25_math_7b_reweight",
                 "qwen3_8b_base_dapo", "qwen3_8b_base_reweight"]
LONG_TAIL = "\nCheck: " + "the steps above are consistent. " * 12  # > 300 characters after the answer

# (response, ground truth, reward under DAPO's rule, reward under verl 0.9.1's math_dapo), derived by
# hand from the rules: DAPO reads only the last `Answer:` line of the last 300 characters and normalises
# it (strips $...$, \text{}, \boxed{}, expands \frac12); verl falls back to the last \boxed{} in the
# last 100 characters, compared verbatim, when there is no `Answer:` line at all.
SCORER_TABLE = [
    ("Answer-line", "Some steps.\nAnswer: 42", "42", 1.0, 1.0),
    ("Answer-line, dollars", "Steps.\nAnswer: $42$", "42", 1.0, 1.0),
    ("Answer-line, boxed inside", "Steps.\nAnswer: \\boxed{42}", "42", 1.0, 1.0),
    ("last Answer-line wins", "Answer: 41\nNo, recheck.\nAnswer: 42", "42", 1.0, 1.0),
    ("boxed-only", "So the sum is \\boxed{42}.", "42", -1.0, 1.0),
    ("both, agreeing", "Thus \\boxed{42}.\nAnswer: 42", "42", 1.0, 1.0),
    ("both, Answer right", "Thus \\boxed{41}.\nAnswer: 42", "42", 1.0, 1.0),
    ("both, boxed right", "Answer: 41\nActually \\boxed{42}.", "42", -1.0, -1.0),
    ("wrong Answer-line", "Steps.\nAnswer: 41", "42", -1.0, -1.0),
    ("wrong boxed-only", "So \\boxed{41}.", "42", -1.0, -1.0),
    ("malformed: no colon", "Steps.\nAnswer 42", "42", -1.0, -1.0),
    ("malformed: unclosed box", "So \\boxed{42", "42", -1.0, -1.0),
    ("malformed: empty", "", "42", -1.0, -1.0),
    ("answer too far from the end", "Answer: 42" + LONG_TAIL, "42", -1.0, -1.0),
    ("fraction, Answer-line", "Steps.\nAnswer: $\\frac{1}{2}$", "\\frac{1}{2}", 1.0, 1.0),
    ("fraction, shorthand", "Steps.\nAnswer: \\frac12", "\\frac{1}{2}", 1.0, 1.0),
    ("fraction, boxed-only", "Hence \\boxed{\\frac{1}{2}}", "\\frac{1}{2}", -1.0, 1.0),
    ("fraction, dfrac boxed-only", "Hence \\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", -1.0, -1.0),
    ("fraction, not simplified", "Steps.\nAnswer: 2/4", "\\frac{1}{2}", -1.0, -1.0),
]


def _preset_reward_fn(name, overrides=()):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from reweight.train import compose_config

    model = ["actor_rollout_ref.model.path=/m"] if name in ("dapo", "dapo_reweight") else []
    return get_custom_reward_fn(compose_config(name, model + list(overrides)))


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_presets_score_math_with_dapos_rule_and_verl_on_request(name):
    """Through verl's own loader, as the reward workers load it: dapo by default, verl when selected."""
    from reweight.data.synthetic import DATA_SOURCE

    fns = {"dapo": _preset_reward_fn(name),
           "verl": _preset_reward_fn(name, ["reward.custom_reward_function.reward_kwargs.scorer=verl"])}
    for case, response, truth, *expected in SCORER_TABLE:
        for (scorer, fn), want in zip(fns.items(), expected):
            for source in ("math_dapo", "aime24", "amc"):
                got = fn(data_source=source, solution_str=response, ground_truth=truth, extra_info={})
                assert (got["score"], got["acc"]) == (want, want > 0), (scorer, case, source, got)
        # the synthetic task keeps its exact checker whatever the scorer
    for fn in fns.values():
        assert fn(data_source=DATA_SOURCE, solution_str="So \\boxed{42}", ground_truth="42")["score"] == 1.0
        assert fn(data_source=DATA_SOURCE, solution_str="Answer: 42", ground_truth="42")["score"] == -1.0


def test_verl_scorer_is_verls_math_dapo():
    from verl.utils.reward_score import math_dapo

    for _, response, truth, *_ in SCORER_TABLE:
        ours = compute_score("math_dapo", response, truth, scorer="verl")
        assert (ours["score"], ours["acc"]) == (math_dapo.compute_score(response, truth)["score"],
                                                math_dapo.compute_score(response, truth)["acc"])


def test_unknown_scorer_refused_naming_the_key():
    from reweight.checks import ConfigError, check_config
    from reweight.reward import SCORERS
    from reweight.train import compose_config

    assert SCORERS == ("dapo", "verl")
    with pytest.raises(ValueError, match=r"scorer.*'lenient'"):
        compute_score("math_dapo", "Answer: 1", "1", scorer="lenient")
    cfg = compose_config("dapo", ["actor_rollout_ref.model.path=/m", "reward.custom_reward_function.reward_kwargs.scorer=lenient"])
    with pytest.raises(ConfigError, match=r"reward\.custom_reward_function\.reward_kwargs\.scorer='lenient'"):
        check_config(cfg)
