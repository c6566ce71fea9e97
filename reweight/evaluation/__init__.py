"""Evaluation: answer checking, avg@k / unbiased pass@k, sampling, Invisible Leash support metrics, reports.

Light imports only here (no torch / transformers): the checker and the metrics. Sampling
(:mod:`reweight.evaluation.sampling`), support metrics (:mod:`reweight.evaluation.support`) and the
report (:mod:`reweight.evaluation.report`) are imported from their modules.
"""

from reweight.evaluation.metrics import avg_at_k, bootstrap_ci, pass_at_k, pass_at_k_array, pass_at_k_curve, summarise
from reweight.evaluation.scoring import get_checker, is_correct, last_boxed, math_checker, register_checker

__all__ = [
    "avg_at_k",
    "bootstrap_ci",
    "get_checker",
    "is_correct",
    "last_boxed",
    "math_checker",
    "pass_at_k",
    "pass_at_k_array",
    "pass_at_k_curve",
    "register_checker",
    "summarise",
]
