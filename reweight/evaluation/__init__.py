"""Evaluation: answer checking, avg@k / unbiased pass@k, sampling, Invisible Leash support metrics, reports."""

from reweight.evaluation.scoring import get_checker, is_correct, last_boxed, math_checker, register_checker

__all__ = ["get_checker", "is_correct", "last_boxed", "math_checker", "register_checker"]
