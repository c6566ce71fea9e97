"""The answer checker on a table of equivalent and wrong answers (math_verify + the synthetic checker)."""

from __future__ import annotations

import pytest

from reweight.data.synthetic import DATA_SOURCE
from reweight.evaluation.scoring import get_checker, is_correct, last_boxed, math_checker, register_checker

ACCEPTED = [
    # fractions: \frac vs decimal vs slash, both directions
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "\\frac{1}{2}"),
    ("\\boxed{\\dfrac{3}{4}}", "0.75"),
    # radicals
    ("so the side is \\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"),
    # nested braces inside the box
    ("We get \\boxed{\\frac{\\sqrt{2}}{2}} in the end", "\\frac{1}{\\sqrt{2}}"),
    # \boxed inside text; the last box wins
    ("Try \\boxed{3}. No wait, it is \\boxed{4}.", "4"),
    ("\\boxed{42}", "42"),
    ("\\boxed{7}", "$7$"),
    ("\\boxed{x^2+1}", "1+x^2"),
    ("\\boxed{(1,2)}", "(1,2)"),
]

REJECTED = [
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{8}"),
    ("Try \\boxed{4}. No wait, it is \\boxed{3}.", "4"),  # only the last box counts
    ("\\boxed{-3}", "3"),
    ("\\boxed{(2,1)}", "(1,2)"),
    ("The answer is 0.5", "0.5"),  # no \boxed at all
    ("", "1"),
    ("\\boxed{\\frac{1}{2}", "0.5"),  # box never closed (truncated response)
]


@pytest.mark.parametrize("response,truth", ACCEPTED)
@pytest.mark.parametrize("source", [None, "aime24"])
def test_equivalent_answers_accepted(response, truth, source):
    assert is_correct(response, truth, source, scorer="boxed") is True


@pytest.mark.parametrize("response,truth", REJECTED)
def test_wrong_or_missing_answers_rejected(response, truth):
    assert is_correct(response, truth) is False
    assert is_correct(response, truth, "aime25", scorer="boxed") is False


def test_last_boxed_handles_nesting_and_absence():
    assert last_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{1} and \\fbox{2}") == "2"
    assert last_boxed("\\boxed 5 done") == "5"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{\\frac{1}{2}") is None


def test_synthetic_task_uses_its_exact_integer_checker():
    assert get_checker(DATA_SOURCE) is not math_checker
    assert is_correct("12+7=19. \\boxed{19}", "19", DATA_SOURCE) is True
    assert is_correct("\\boxed{19.0}", "19", DATA_SOURCE) is False  # exact integer only
    assert is_correct("\\boxed{19.0}", "19") is True  # the math checker accepts it
    assert is_correct("19", "19", DATA_SOURCE) is False


def test_register_checker_is_pluggable_per_data_source():
    @register_checker("test_evaluation_upper")
    def upper_checker(response: str, ground_truth: str) -> bool:
        return response.strip().upper() == ground_truth.upper()

    assert get_checker("test_evaluation_upper") is upper_checker
    assert is_correct(" yes ", "YES", "test_evaluation_upper") is True
    assert is_correct("\\boxed{YES}", "YES", "test_evaluation_upper") is False
    with pytest.raises(ValueError, match="data_source"):
        register_checker("", upper_checker)


RESPONSES = [
    "So the answer is 42.\nAnswer: 42",
    "So the sum is \\boxed{42}.",
    "The value is \\boxed{41}.\nAnswer: 42",
    "Answer: 41",
    "Answer: \\frac{1}{2}",
    "no answer at all",
    "12+30=42. \\boxed{42}",
]


@pytest.mark.parametrize(
    "config_name,data_source,truth",
    [("dapo_reweight", "math_dapo", "42"), ("dapo_reweight", "aime24", "\\frac{1}{2}"), ("embedded", "synthetic_arith", "42")],
)
def test_evaluation_scores_exactly_as_the_training_reward(tmp_path, config_name, data_source, truth):
    """reweight-eval (default scorer) judges responses as the reward function verl loads from the config."""
    import json

    from verl.trainer.ppo.reward import get_custom_reward_fn

    from reweight.evaluation.cli import main
    from reweight.evaluation.records import read_results
    from reweight.train import compose_config

    reward_fn = get_custom_reward_fn(compose_config(config_name))
    expected = [bool(reward_fn(data_source, r, truth, {})["acc"]) for r in RESPONSES]
    assert any(expected) and not all(expected)  # the table separates right from wrong under this rule
    rows = [{"responses": RESPONSES, "ground_truth": truth, "data_source": data_source}]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--responses", str(tmp_path / "responses.jsonl"), "--out", str(out), "--no-progress"]) == 0
    [result] = read_results(out)[1]
    assert result.correct == expected
