"""Statistics of the update's direction on a training batch: Δlog p = log π_old − log π_base per token.

arXiv 2603.22117 (Fig. 1b) describes an RLVR update by the signed log-probability change of the
sampled tokens against the base model. The live monitor (:mod:`reweight.monitor`) computes Δlog p on
the step's sampled response tokens -- π_old is the rollout policy (verl's ``old_log_prob``), π_base
the model training started from -- and logs the statistics below; this module is the math only
(numpy, no verl), so every figure can be checked against a naive reference.

| key (under ``direction/``) | meaning |
|---|---|
| ``logp_diff_mean`` | mean Δlog p over response tokens |
| ``logp_diff_q05`` / ``logp_diff_q95`` | its 5 % and 95 % quantiles (linear interpolation, numpy's default) |
| ``frac_abs_gt_0.5`` / ``frac_abs_gt_1`` | fraction of tokens with abs(Δlog p) > 0.5 / > 1 |
| ``logp_diff_mean_pos_adv`` / ``logp_diff_mean_neg_adv`` | mean Δlog p over tokens with advantage > 0 / < 0 (NaN when there is none) |
| ``corr_weight`` | Pearson correlation of the token weight w with Δlog p (only with our loss; 0 when either is constant) |
"""

from __future__ import annotations

import math

import numpy as np

PREFIX = "direction/"
# Thresholds of the abs(Δlog p) fractions (the offline analysis reports the same ones, among others).
ABS_THRESHOLDS = (0.5, 1.0)
HIST_BINS = 64
# Keys of the W&B histograms (wandb.Histogram) the monitor logs on monitored steps.
HIST_KEYS = {"logp_diff": PREFIX + "hist/logp_diff", "prob": PREFIX + "hist/prob", "weight": PREFIX + "hist/weight"}


def _threshold_name(t: float) -> str:
    return f"{PREFIX}frac_abs_gt_{t:g}"


def direction_stats(
    delta: np.ndarray,
    mask: np.ndarray,
    advantages: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    """The ``direction/`` scalars of one batch.

    Args:
        delta: Δlog p = log π_old − log π_base of each token, ``(batch, response_len)``.
        mask: response-token mask, ``(batch, response_len)``; only its nonzero entries count.
        advantages: Â of each token, ``(batch, response_len)``; None leaves out the split by its sign.
        weights: the token weight w of our loss, ``(batch, response_len)``; None leaves out ``corr_weight``.

    Returns:
        ``{key: float}`` with the keys of the module's table, computed in float64. A batch without a
        response token raises ``ValueError`` (the monitor never sees one: verl drops empty batches).
    """
    m = np.asarray(mask).astype(bool)
    d = np.asarray(delta, dtype=np.float64)[m]
    if d.size == 0:
        raise ValueError("direction_stats: the mask selects no token")
    q05, q95 = np.quantile(d, (0.05, 0.95))
    out = {
        PREFIX + "logp_diff_mean": float(d.mean()),
        PREFIX + "logp_diff_q05": float(q05),
        PREFIX + "logp_diff_q95": float(q95),
    }
    for t in ABS_THRESHOLDS:
        out[_threshold_name(t)] = float(np.count_nonzero(np.abs(d) > t) / d.size)
    if advantages is not None:
        a = np.asarray(advantages, dtype=np.float64)[m]
        for name, sel in (("pos_adv", a > 0), ("neg_adv", a < 0)):
            out[f"{PREFIX}logp_diff_mean_{name}"] = float(d[sel].mean()) if sel.any() else math.nan
    if weights is not None:
        out[PREFIX + "corr_weight"] = correlation(np.asarray(weights, dtype=np.float64)[m], d)
    return out


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equal-length vectors; 0 when either is constant (no linear relation
    can be measured: on the first step Δlog p is exactly 0, and with scheme ``none`` w is exactly 1)."""
    xc, yc = x - x.mean(), y - y.mean()
    sx, sy = math.sqrt(float(np.dot(xc, xc))), math.sqrt(float(np.dot(yc, yc)))
    if sx == 0.0 or sy == 0.0:
        return 0.0
    return float(np.dot(xc, yc) / (sx * sy))


def histograms(
    delta: np.ndarray, prob: np.ndarray, mask: np.ndarray, weights: np.ndarray | None = None, bins: int = HIST_BINS
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{HIST_KEYS name: (counts, bin_edges)}`` over response tokens (``np.histogram``), for Δlog p, p and w.

    Args: ``(batch, response_len)`` arrays: Δlog p, p = π_old(token), the mask, and w (None: no ``weight``).
    p is binned on [0, 1]; Δlog p and w on their own range.
    """
    m = np.asarray(mask).astype(bool)
    out = {
        HIST_KEYS["logp_diff"]: np.histogram(np.asarray(delta, dtype=np.float64)[m], bins=bins),
        HIST_KEYS["prob"]: np.histogram(np.asarray(prob, dtype=np.float64)[m], bins=bins, range=(0.0, 1.0)),
    }
    if weights is not None:
        out[HIST_KEYS["weight"]] = np.histogram(np.asarray(weights, dtype=np.float64)[m], bins=bins)
    return out
