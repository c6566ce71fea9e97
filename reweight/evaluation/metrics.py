"""Sample-based accuracy metrics: unbiased pass@k, avg@k, pass@k curves, bootstrap intervals.

Shapes: ``n`` and ``c`` are per-problem sample counts and correct counts, scalars or 1-D arrays of
length P (problems). ``correct`` matrices are lists of per-problem boolean lists (problems may have
different sample counts).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np


def _check_counts(n: int, c: int, k: int) -> None:
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if n < 0 or c < 0 or c > n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@k needs k <= n samples per problem; got k={k} > n={n}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: 1 − C(n−c, k) / C(n, k) (Chen et al., 2021).

    The ratio is evaluated as the product ∏_{i=n−c+1}^{n} (1 − k/i), summed in log space with
    ``log1p`` and turned back with ``expm1``, so it is stable for n in the thousands (no factorials,
    no cancellation for small pass@k). k > n is refused: the estimator is undefined there.
    """
    n, c, k = int(n), int(c), int(k)
    _check_counts(n, c, k)
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    if c == 0:
        return 0.0
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    log_ratio = np.log1p(-k / i).sum()
    return float(-np.expm1(log_ratio))


def pass_at_k_array(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    """Vectorised :func:`pass_at_k`: shape (P,) from ``n`` (P,) and ``c`` (P,) (``n`` may be a scalar).

    All checks run before any value is computed; the error names the first offending problem.
    """
    c_arr = np.asarray(c, dtype=np.int64).reshape(-1)
    n_arr = np.broadcast_to(np.asarray(n, dtype=np.int64), c_arr.shape)
    for idx, (ni, ci) in enumerate(zip(n_arr.tolist(), c_arr.tolist())):
        try:
            _check_counts(ni, ci, k)
        except ValueError as err:
            raise ValueError(f"problem {idx}: {err}") from None
    return np.array([pass_at_k(ni, ci, k) for ni, ci in zip(n_arr.tolist(), c_arr.tolist())], dtype=np.float64)


def avg_at_k(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-problem avg@k: the mean accuracy c/n, shape (P,).

    avg@k with k = n is the mean accuracy over the n samples; for k < n, c/n is the unbiased
    estimate of the mean accuracy of k samples (the expectation over k-subsets), so no subset is
    drawn.
    """
    c_arr = np.asarray(c, dtype=np.float64).reshape(-1)
    n_arr = np.broadcast_to(np.asarray(n, dtype=np.float64), c_arr.shape)
    if np.any(n_arr <= 0):
        raise ValueError("avg@k needs at least one sample per problem; got a problem with n = 0")
    return c_arr / n_arr


def counts(correct: Sequence[Sequence[bool]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, c), each shape (P,), from per-problem lists of booleans."""
    n = np.array([len(row) for row in correct], dtype=np.int64)
    c = np.array([int(sum(bool(x) for x in row)) for row in correct], dtype=np.int64)
    return n, c


def pass_at_k_curve(n: Sequence[int] | np.ndarray, c: Sequence[int] | np.ndarray, ks: Sequence[int] | None = None) -> dict[int, float]:
    """Mean pass@k over problems for each k in ``ks`` (default 1..min(n)); {k: value}."""
    n_arr = np.asarray(n, dtype=np.int64).reshape(-1)
    if n_arr.size == 0:
        raise ValueError("pass@k curve of zero problems")
    ks = list(range(1, int(n_arr.min()) + 1)) if ks is None else list(ks)
    return {int(k): float(pass_at_k_array(n_arr, c, k).mean()) for k in ks}


def bootstrap_ci(
    values_by_group: Mapping[str, np.ndarray],
    statistic: Callable[[Mapping[str, np.ndarray]], float],
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over problems, resampled within each group.

    ``values_by_group``: group name (benchmark) -> per-problem values, shape (P_g,). Each resample
    draws P_g problems with replacement inside every group (a stratified bootstrap, so the
    benchmark mix is fixed), and evaluates ``statistic`` on the resampled groups. Seeded.
    Returns (low, high); (nan, nan) when num_resamples is 0.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    groups = {g: np.asarray(v, dtype=np.float64) for g, v in values_by_group.items()}
    for g, v in groups.items():
        if v.size == 0:
            raise ValueError(f"bootstrap: group {g!r} has no problems")
    stats = np.empty(num_resamples, dtype=np.float64)
    for r in range(num_resamples):
        resampled = {g: v[rng.integers(0, v.size, v.size)] for g, v in groups.items()}
        stats[r] = statistic(resampled)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def bootstrap_macro_mean_ci(
    values_by_group: Mapping[str, np.ndarray],
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """:func:`bootstrap_ci` of :func:`macro_mean`, vectorised: resample indices drawn as (R, P_g) matrices.

    Draws the same resamples as ``bootstrap_ci(values_by_group, macro_mean, ...)`` would for one
    group; for several groups the draw order differs, the distribution is the same.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    group_means = []
    for g, v in values_by_group.items():
        v = np.asarray(v, dtype=np.float64)
        if v.size == 0:
            raise ValueError(f"bootstrap: group {g!r} has no problems")
        idx = rng.integers(0, v.size, size=(num_resamples, v.size))
        group_means.append(v[idx].mean(axis=1))  # (R,)
    stats = np.mean(group_means, axis=0)
    alpha = (1.0 - confidence) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def macro_mean(values_by_group: Mapping[str, np.ndarray]) -> float:
    """Mean over groups of the per-group mean (each benchmark weighs the same)."""
    return float(np.mean([np.mean(v) for v in values_by_group.values()]))


def summarise(
    n_by_group: Mapping[str, np.ndarray],
    c_by_group: Mapping[str, np.ndarray],
    ks: Sequence[int],
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """avg@n and pass@k per benchmark and macro-averaged, each with a bootstrap interval.

    Returns ``{group or "average": {metric: {"value", "ci_low", "ci_high", "num_problems"}}}``
    with metrics ``avg@{n}`` (n = the smallest sample count in the group) and ``pass@{k}``.
    k larger than some problem's n is refused (naming the group) before anything is computed.
    """
    if not n_by_group:
        raise ValueError("no problems to summarise")
    for g in n_by_group:
        n_min = int(np.min(n_by_group[g]))
        bad = [k for k in ks if k > n_min]
        if bad:
            raise ValueError(f"benchmark {g!r}: pass@{bad[0]} asked but a problem has only n={n_min} samples (k > n)")
    per_metric: dict[str, dict[str, np.ndarray]] = {}
    n_min_all = int(min(np.min(v) for v in n_by_group.values()))
    for g in n_by_group:
        n, c = np.asarray(n_by_group[g]), np.asarray(c_by_group[g])
        per_metric.setdefault(f"avg@{n_min_all}", {})[g] = avg_at_k(n, c)
        for k in ks:
            per_metric.setdefault(f"pass@{k}", {})[g] = pass_at_k_array(n, c, k)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for metric, groups in per_metric.items():
        for g, vals in groups.items():
            lo, hi = bootstrap_macro_mean_ci({g: vals}, num_resamples, confidence, seed)
            out.setdefault(g, {})[metric] = {"value": float(vals.mean()), "ci_low": lo, "ci_high": hi, "num_problems": int(vals.size)}
        lo, hi = bootstrap_macro_mean_ci(groups, num_resamples, confidence, seed)
        total = int(sum(v.size for v in groups.values()))
        out.setdefault("average", {})[metric] = {"value": macro_mean(groups), "ci_low": lo, "ci_high": hi, "num_problems": total}
    return out
