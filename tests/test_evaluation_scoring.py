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
    assert is_correct(response, truth, source) is True


@pytest.mark.parametrize("response,truth", REJECTED)
def test_wrong_or_missing_answers_rejected(response, truth):
    assert is_correct(response, truth) is False
    assert is_correct(response, truth, "aime25") is False


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
