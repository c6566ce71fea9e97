"""The rule reward used by our configs (``reward.custom_reward_function.path=pkg://reweight.reward``).

verl's DAPO reward manager calls ``compute_score(data_source, solution_str, ground_truth, extra_info)``
and reads ``score`` (the reward) and ``acc`` (the ``filter_groups`` metric) from the returned dict;
verl's loader (``verl.trainer.ppo.reward.get_custom_reward_fn``) adds the keyword arguments of
``reward.custom_reward_function.reward_kwargs`` to every call, which is how a config picks the scorer
(``reward.custom_reward_function.reward_kwargs.scorer``). This dispatches on ``data_source``:

- the synthetic arithmetic task -> exact integer check of the last ``\\boxed{}``
  (:mod:`reweight.data.synthetic`), whatever the scorer;
- DAPO-Math-17k and the AIME / AMC validation sets -> the selected math scorer (:data:`SCORERS`),
  so that AMC is scored (verl's default dispatch does not know it) and still gets its own
  ``val-core/amc/...`` metrics:

  - ``dapo`` (default; DAPO, arXiv 2503.14476, and the authors' verl 0.5 runs): +1 if the **last**
    ``Answer:`` line of the response's last 300 characters, normalised as DAPO does (verl's
    ``math_dapo.normalize_final_answer``), equals the normalised ground truth; -1 otherwise --
    including a response with only a ``\\boxed{}`` answer;
  - ``verl``: verl 0.9.1's ``math_dapo.compute_score``, the same rule but, when the response has no
    ``Answer:`` line, the last ``\\boxed{}`` in its last 100 characters compared verbatim (more
    lenient: Qwen2.5-Math's habitual ``\\boxed{}`` answers score +1);
- anything else -> verl's ``default_compute_score``.

Every math result is ``{"score": ±1.0, "acc": bool, "pred": str}`` (``pred``: the extracted answer).
"""

from __future__ import annotations

from typing import Any

from reweight.data import synthetic

# data_source values written by ``reweight-prepare-data``.
MATH_SOURCES = ("math_dapo", "aime24", "aime25", "amc")
# Math scorers, by the name ``reward.custom_reward_function.reward_kwargs.scorer`` takes.
SCORERS = ("dapo", "verl")
DEFAULT_SCORER = "dapo"
# DAPO scores only the tail of a response (the longest MATH-500 answer has 159 characters).
DAPO_TAIL_CHARS = 300


def check_scorer(scorer: str) -> str:
    """Return ``scorer`` if it names a math scorer; raise ``ValueError`` naming the key otherwise."""
    if scorer not in SCORERS:
        raise ValueError(
            f"scorer={scorer!r} (reward.custom_reward_function.reward_kwargs.scorer): not a math scorer; "
            f"choose one of {', '.join(SCORERS)}"
        )
    return scorer


def dapo_score(solution_str: str, ground_truth: str) -> dict:
    """DAPO's rule: only the last ``Answer:`` line of the last 300 characters counts; ±1."""
    from verl.utils.reward_score.math_dapo import is_correct_minerva

    correct, pred = is_correct_minerva(solution_str[-DAPO_TAIL_CHARS:], str(ground_truth))
    return {"score": 1.0 if correct else -1.0, "acc": bool(correct), "pred": pred}


def verl_score(solution_str: str, ground_truth: str) -> dict:
    """verl 0.9.1's ``math_dapo`` scorer (the ``Answer:`` line, else the last ``\\boxed{}``); ±1."""
    from verl.utils.reward_score import math_dapo

    out = math_dapo.compute_score(solution_str, str(ground_truth))
    return {"score": float(out["score"]), "acc": bool(out["acc"]), "pred": "" if out["pred"] is None else out["pred"]}


_MATH_SCORERS = {"dapo": dapo_score, "verl": verl_score}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: Any = None,
    scorer: str = DEFAULT_SCORER,
    **kwargs: Any,
) -> dict | float:
    """Score one response (the reward function verl loads, and the one evaluation calls).

    Args:
        data_source: the row's ``data_source`` (selects the checker, see the module docstring).
        solution_str: the decoded response.
        ground_truth: the row's ``reward_model.ground_truth``.
        extra_info: the row's ``extra_info`` (passed on to verl's default scorer only).
        scorer: the math scorer, one of :data:`SCORERS`; ignored by the synthetic task's exact checker.
        kwargs: whatever else verl passes (e.g. a reward-model router), for verl's default scorer.
    """
    check_scorer(scorer)
    if data_source == synthetic.DATA_SOURCE:
        return synthetic.compute_score(data_source, solution_str, ground_truth, extra_info)
    if data_source in MATH_SOURCES:
        return _MATH_SCORERS[scorer](solution_str, ground_truth)
    from verl.utils.reward_score import default_compute_score

    return default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
