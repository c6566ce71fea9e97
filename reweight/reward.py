"""The rule reward used by our configs (``reward.custom_reward_function.path=pkg://reweight.reward``).

verl's DAPO reward manager calls ``compute_score(data_source, solution_str, ground_truth, extra_info)``
and reads ``score`` (the reward) and ``acc`` (the ``filter_groups`` metric) from the returned dict.
This dispatches on ``data_source``:

- the synthetic arithmetic task -> exact integer check of the last ``\\boxed{}`` (:mod:`reweight.data.synthetic`);
- DAPO-Math-17k and the AIME / AMC validation sets -> verl's ``math_dapo`` scorer (DAPO's ±1 reward on
  the ``Answer:`` line), so that AMC is scored (verl's default dispatch does not know it) and still gets
  its own ``val-core/amc/...`` metrics;
- anything else -> verl's ``default_compute_score``.
"""

from __future__ import annotations

from typing import Any

from reweight.data import synthetic

# data_source values written by ``reweight-prepare-data``.
MATH_SOURCES = ("math_dapo", "aime24", "aime25", "amc")


def compute_score(data_source: str, solution_str: str, ground_truth: str, extra_info: Any = None, **kwargs: Any):
    if data_source == synthetic.DATA_SOURCE:
        return synthetic.compute_score(data_source, solution_str, ground_truth, extra_info)
    if data_source in MATH_SOURCES:
        from verl.utils.reward_score import math_dapo

        return math_dapo.compute_score(solution_str, ground_truth)
    from verl.utils.reward_score import default_compute_score

    return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
