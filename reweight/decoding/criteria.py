"""Replacement criteria of Algorithm 1: which of the base model's proposed tokens to replace.

Each criterion maps one decoding step to a per-sequence score and a direction:

============== ====================================== =========================
name           score (per sequence, this step)         flagged when
============== ====================================== =========================
``logp_diff``  Δlog p(y_t) = log π_RL(y_t) − log π_Base(y_t)   score ≤ τ
``entropy``    H(π_Base)                               score ≥ τ
``rl_entropy`` H(π_RL)                                 score ≥ τ
``kl``         KL(π_RL ‖ π_Base)                       score ≥ τ
``kl_reverse`` KL(π_Base ‖ π_RL)                       score ≥ τ
``random``     u ~ U(0, 1) (the sequence's own stream) score < τ
``none``       —                                       never
``all``        —                                       always
============== ====================================== =========================

π_Base and π_RL here are the models' **full-vocabulary** next-token distributions at the
**sampling temperature** (``log_softmax(logits / T)``), *before* top-p truncation: top-p only
shapes what is sampled, not how the two models are compared (so the scores equal the
teacher-forced metrics of the direction analysis at the same temperature, and are finite for
every token). y_t is the base model's proposal.
"""

from __future__ import annotations

import math

import torch

from reweight.decoding.distributions import entropy, kl_divergence

CRITERIA = ("logp_diff", "entropy", "rl_entropy", "kl", "kl_reverse", "random", "none", "all")
#: Criteria that flag when the score is ≤ τ / < τ (the others flag when score ≥ τ).
_FLAG_BELOW = {"logp_diff"}


def check_criterion(criterion: str, tau: float) -> float:
    """Validate a criterion name and threshold; return τ as a float. Raises ``ValueError``."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise ValueError(f"tau for criterion {criterion!r} must be a number, got {tau!r}") from None
    if math.isnan(tau):
        raise ValueError(f"tau for criterion {criterion!r} is NaN")
    return tau


def criterion_scores(
    criterion: str,
    logp_base: torch.Tensor,
    logp_rl: torch.Tensor,
    proposed: torch.Tensor,
    uniform: torch.Tensor,
) -> torch.Tensor | None:
    """The per-sequence score the criterion thresholds (``None`` for ``none`` / ``all``).

    Args:
        logp_base: ``[B, V]`` full temperature-scaled base log-probs.
        logp_rl: ``[B, V]`` full temperature-scaled RL log-probs.
        proposed: ``[B]`` the base model's proposed tokens y_t.
        uniform: ``[B]`` uniforms in [0, 1) (used by ``random`` only).

    Returns:
        ``[B]`` float scores, or ``None``.
    """
    if criterion == "logp_diff":
        idx = proposed.unsqueeze(-1)
        return (logp_rl.gather(-1, idx) - logp_base.gather(-1, idx)).squeeze(-1)
    if criterion == "entropy":
        return entropy(logp_base)
    if criterion == "rl_entropy":
        return entropy(logp_rl)
    if criterion == "kl":
        return kl_divergence(logp_rl, logp_base)
    if criterion == "kl_reverse":
        return kl_divergence(logp_base, logp_rl)
    if criterion == "random":
        return uniform.to(logp_base.dtype)
    if criterion in ("none", "all"):
        return None
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")


def flag_positions(criterion: str, tau: float, scores: torch.Tensor | None, batch_size: int, device=None) -> torch.Tensor:
    """``[B]`` bool: which proposals the criterion replaces, given :func:`criterion_scores`' output."""
    if criterion == "none":
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    if criterion == "all":
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    assert scores is not None
    if criterion == "random":
        return scores < tau
    if criterion in _FLAG_BELOW:
        return scores <= tau
    return scores >= tau
