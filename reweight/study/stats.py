"""Statistics over seeds and problems: avg@n, pass@k and paired differences with bootstrap intervals.

An arm's results are a ``(S, P)`` matrix per metric: S seeds (training runs) × P test problems, each
entry the metric of one trained model on one problem (e.g. the fraction of its n samples that are
correct). The estimate is the mean over seeds of the mean over problems. Intervals come from a
two-level percentile bootstrap: each resample draws S seeds and P problems with replacement and
averages the selected sub-matrix, so both sources of variation (which problems, which training run)
are in the interval. A comparison of two arms is *paired*: the same resampled seeds and problems are
used for both (seed s of one arm is paired with seed s of the other; the same problems), which removes
the between-problem variance that both share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from reweight.evaluation.metrics import pass_at_k_array
from reweight.evaluation.records import ProblemResult


def results_matrix(runs: Sequence[Sequence[ProblemResult]], uids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``(uids, n, c)``: samples ``n`` and correct ``c`` per run and problem, each ``(S, P)``.

    Problems are matched by uid; every run must hold the same problems (``uids`` fixes their order).
    """
    if not runs:
        raise ValueError("no runs")
    by_run = [{r.uid: r for r in run} for run in runs]
    uids = list(uids) if uids is not None else sorted(by_run[0])
    for i, run in enumerate(by_run):
        missing = [u for u in uids if u not in run]
        if missing:
            raise ValueError(f"run {i} lacks {len(missing)} problem(s), e.g. {missing[0]!r}")
    n = np.array([[run[u].n for u in uids] for run in by_run], dtype=np.int64)
    c = np.array([[sum(bool(x) for x in run[u].correct) for u in uids] for run in by_run], dtype=np.int64)
    return uids, n, c


def pass_at_k_matrix(n: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per run and problem, ``(S, P)``."""
    return np.stack([pass_at_k_array(n[s], c[s], k) for s in range(n.shape[0])])


def _indices(rng: np.random.Generator, shape: tuple[int, int], resamples: int) -> tuple[np.ndarray, np.ndarray]:
    s, p = shape
    return rng.integers(0, s, size=(resamples, s)), rng.integers(0, p, size=(resamples, p))


def _percentile_interval(means: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap resample means (percentile method)."""
    lo, hi = np.quantile(means, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return lo, hi


def _resampled_means(values: np.ndarray, seeds: np.ndarray, problems: np.ndarray) -> np.ndarray:
    """Mean of ``values[seeds[r]][:, problems[r]]`` for each resample r, ``(R,)``."""
    rows = values[seeds]  # (R, S, P)
    picked = np.take_along_axis(rows, problems[:, None, :].repeat(values.shape[0], axis=1), axis=2)
    return picked.mean(axis=(1, 2))


def mean_ci(values: np.ndarray, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict[str, float | list[float]]:
    """``{"mean", "ci95"}`` of an ``(S, P)`` matrix: mean over all entries, two-level bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"expected a non-empty (seeds, problems) matrix, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    s_idx, p_idx = _indices(rng, values.shape, resamples)
    means = _resampled_means(values, s_idx, p_idx)
    lo, hi = _percentile_interval(means, confidence)
    return {"mean": float(values.mean()), "ci95": [float(lo), float(hi)]}


def paired_difference(
    arm: np.ndarray, baseline: np.ndarray, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """Mean of ``arm − baseline`` over seeds and problems, with a paired two-level bootstrap interval.

    Both are ``(S, P)`` on the same problems; seeds are paired by position (arm seed i with baseline
    seed i), so both must have the same number of seeds.
    """
    arm, baseline = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if arm.shape != baseline.shape:
        raise ValueError(f"paired difference of shapes {arm.shape} and {baseline.shape}: same seeds and problems needed")
    out = mean_ci(arm - baseline, resamples, confidence, seed)
    return {"delta": out["mean"], "ci95": out["ci95"]}


def unseeded_difference(
    arm: np.ndarray, baseline: np.ndarray, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """:func:`paired_difference` without the pairing of seeds: each resample draws the two arms' seeds
    independently (and the problems jointly, as they are the same problems). Its interval is what the
    comparison would resolve if seed i of one arm had nothing in common with seed i of the other; next to
    the paired interval it shows what pairing buys."""
    arm, baseline = np.asarray(arm, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if arm.shape != baseline.shape:
        raise ValueError(f"difference of shapes {arm.shape} and {baseline.shape}: same seeds and problems needed")
    rng = np.random.default_rng(seed)
    s_arm, problems = _indices(rng, arm.shape, resamples)
    s_base = rng.integers(0, arm.shape[0], size=(resamples, arm.shape[0]))
    means = _resampled_means(arm, s_arm, problems) - _resampled_means(baseline, s_base, problems)
    lo, hi = _percentile_interval(means, confidence)
    return {"delta": float((arm - baseline).mean()), "ci95": [float(lo), float(hi)]}


def seed_correlation(arm: np.ndarray, baseline: np.ndarray) -> float | None:
    """Pearson correlation over seeds of the two arms' per-seed means (rows of ``(S, P)`` matrices paired by
    position); None with fewer than 3 seeds or when either arm does not vary. Near 1: the arms share most of a
    seed's luck, so the paired difference cancels it; near 0: pairing by seed buys nothing."""
    a, b = np.asarray(arm, dtype=np.float64).mean(axis=1), np.asarray(baseline, dtype=np.float64).mean(axis=1)
    if a.shape != b.shape or a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


# The difference a study should be able to resolve (fraction of problems): 3 accuracy points.
TARGET_RESOLUTION = 0.03


def seeds_to_resolve(ci: Sequence[float], seeds: int, target: float = TARGET_RESOLUTION) -> int:
    """Seeds per arm for a 95% interval of half-width ``target``, projected from one of ``seeds`` seeds.

    The half-width shrinks as 1/sqrt(seeds) when the seed-to-seed variation of training dominates the
    interval (the problems are the same for every seed, so more seeds do not shrink their part); the
    projection is then ``ceil(seeds · (half-width / target)²)``, and at least ``seeds``. An estimate
    from S seeds is itself rough: a planning number, not a guarantee.
    """
    half = (ci[1] - ci[0]) / 2
    return max(seeds, math.ceil(seeds * (half / target) ** 2 - 1e-9))


def verdict(name: str, baseline: str, delta: float, ci: Sequence[float], unit: float = 100.0, seeds: int | None = None) -> str:
    """One sentence from a paired difference: better, worse, or no difference resolved at this budget.

    With ``seeds`` (per arm), an unresolved verdict also says the half-width this budget resolves and the
    seeds per arm projected to resolve :data:`TARGET_RESOLUTION` (:func:`seeds_to_resolve`).
    """
    lo, hi = ci
    d, a, b = delta * unit, lo * unit, hi * unit
    text = f"{d:+.1f} points avg@n vs {baseline} (95% CI [{a:+.1f}, {b:+.1f}])"
    if lo > 0:
        return f"**{name} beats {baseline}**: {text}."
    if hi < 0:
        return f"**{name} is worse than {baseline}**: {text}."
    out = f"**{name}: no difference from {baseline} resolved** at this budget: {text}; the interval includes 0"
    if seeds is not None:
        need = seeds_to_resolve(ci, seeds)
        out += f"; it resolves ±{(hi - lo) / 2 * unit:.1f} points with {seeds} seed(s)"
        if need > seeds:
            out += f", ±{TARGET_RESOLUTION * unit:.0f} would take about {need} seeds per arm (projected from this spread)"
    return out + "."


def nested_mean_ci(
    groups: Sequence[Sequence[float]], resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float | list[float]]:
    """``{"mean", "ci95"}`` of per-seed groups of values: mean over seeds of each seed's mean, nested bootstrap.

    ``groups[s]`` holds the values of seed ``s`` (e.g. the accuracy on each of its prompts, ``(P_s,)``; seeds
    may hold different prompts and different counts). Each resample draws S seeds with replacement, then,
    within every drawn seed, its P_s values with replacement, and averages the per-seed means (every seed
    weighs the same). With one value per seed this is the percentile bootstrap over seeds; with one seed,
    over that seed's values. The draws: ``rng.integers(0, S, (R, S))`` then ``rng.random((R, S, max P_s))``,
    value index ``floor(u · P_s)`` (a test repeats them as loops).
    """
    arrays = [np.asarray(g, dtype=np.float64).ravel() for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("expected one or more seeds, each with one or more values")
    s, width = len(arrays), max(a.size for a in arrays)
    sizes = np.array([a.size for a in arrays])
    padded = np.zeros((s, width))
    for i, a in enumerate(arrays):
        padded[i, : a.size] = a
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, s, size=(resamples, s))  # (R, S) drawn seeds
    u = rng.random((resamples, s, width))  # (R, S, W)
    n = sizes[picks]  # (R, S) values of each drawn seed
    idx = np.minimum(np.floor(u * n[..., None]).astype(np.int64), width - 1)  # (R, S, W)
    vals = padded[picks[..., None], idx]  # (R, S, W)
    mask = np.arange(width)[None, None, :] < n[..., None]
    means = ((vals * mask).sum(axis=2) / n).mean(axis=1)  # (R,)
    lo, hi = _percentile_interval(means, confidence)
    return {"mean": float(np.mean([a.mean() for a in arrays])), "ci95": [float(lo), float(hi)]}
