"""pass@k / avg@k / bootstrap against independent references (subset enumeration, exact fractions)."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import numpy as np
import pytest

from reweight.evaluation.metrics import (
    avg_at_k,
    bootstrap_ci,
    bootstrap_macro_mean_ci,
    macro_mean,
    pass_at_k,
    pass_at_k_array,
    pass_at_k_curve,
    summarise,
)


def enumerated_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(any(i < c for i in s) for s in subsets)
    return hits / len(subsets)


def test_pass_at_k_equals_subset_enumeration_for_all_small_n():
    checked = 0
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(enumerated_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 11))


@pytest.mark.parametrize("n", [1, 5, 10])
def test_pass_at_k_edge_cases(n):
    for k in range(1, n + 1):
        assert pass_at_k(n, 0, k) == 0.0
        assert pass_at_k(n, n, k) == 1.0
    for c in range(n + 1):  # k = n: any correct sample makes the single n-subset pass
        assert pass_at_k(n, c, n) == (1.0 if c > 0 else 0.0)
    assert pass_at_k(n, 1, 1) == pytest.approx(1 / n)


def test_pass_at_k_refuses_k_above_n_and_bad_counts():
    with pytest.raises(ValueError, match=r"k=5 > n=4"):
        pass_at_k(4, 2, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="positive"):
        pass_at_k(4, 1, 0)
    with pytest.raises(ValueError, match=r"problem 1: .*k=3 > n=2"):
        pass_at_k_array([4, 2], [1, 1], 3)


@pytest.mark.parametrize("n,c,k", [(2000, 1, 1), (2000, 3, 100), (5000, 17, 1000), (4096, 4000, 64), (3000, 1, 2999)])
def test_pass_at_k_large_n_matches_exact_rational(n, c, k):
    exact = 1 - Fraction(comb(n - c, k), comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10, abs=1e-300)


def test_pass_at_k_array_and_curve_match_scalar():
    rng = np.random.default_rng(0)
    n = rng.integers(8, 20, size=30)
    c = np.array([rng.integers(0, ni + 1) for ni in n])
    for k in (1, 3, 8):
        expected = [pass_at_k(int(a), int(b), k) for a, b in zip(n, c)]
        np.testing.assert_allclose(pass_at_k_array(n, c, k), expected, rtol=0, atol=1e-15)
    curve = pass_at_k_curve(n, c)
    assert sorted(curve) == list(range(1, int(n.min()) + 1))
    assert curve[1] == pytest.approx(np.mean(c / n))  # pass@1 is the mean accuracy
    assert all(curve[k] <= curve[k + 1] + 1e-15 for k in range(1, int(n.min())))


def test_avg_at_k_is_mean_accuracy_of_k_subsets():
    n, c = 6, 2
    for k in range(1, n + 1):  # expectation over k-subsets of the subset accuracy
        subsets = list(itertools.combinations(range(n), k))
        expected = np.mean([sum(i < c for i in s) / k for s in subsets])
        assert avg_at_k([n], [c])[0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="n = 0"):
        avg_at_k([0], [0])


def test_bootstrap_is_seeded_and_brackets_the_statistic():
    values = {"a": np.random.default_rng(1).random(50), "b": np.random.default_rng(2).random(20)}
    lo, hi = bootstrap_ci(values, macro_mean, num_resamples=300, seed=3)
    assert (lo, hi) == bootstrap_ci(values, macro_mean, num_resamples=300, seed=3)
    assert (lo, hi) != bootstrap_ci(values, macro_mean, num_resamples=300, seed=4)
    assert lo < macro_mean(values) < hi
    constant = {"a": np.full(10, 0.25)}
    assert bootstrap_ci(constant, macro_mean, num_resamples=50) == (0.25, 0.25)


def test_vectorised_bootstrap_draws_the_same_resamples_as_the_generic_loop():
    values = {"a": np.random.default_rng(5).random(40)}
    assert bootstrap_macro_mean_ci(values, 400, seed=9) == bootstrap_ci(values, macro_mean, 400, seed=9)
    two = {"a": values["a"], "b": np.random.default_rng(6).random(25)}
    lo, hi = bootstrap_macro_mean_ci(two, 400, seed=9)
    glo, ghi = bootstrap_ci(two, macro_mean, 400, seed=9)
    assert abs(lo - glo) < 0.05 and abs(hi - ghi) < 0.05  # same distribution, different draw order


def naive_macro_bootstrap(values_by_group, num_resamples, confidence, seed):
    """The stratified percentile bootstrap of the mean of per-group means, written as plain loops.

    Indices are drawn as the documented contract says: one (R, P_g) matrix per group, groups in order."""
    rng = np.random.default_rng(seed)
    draws = {g: rng.integers(0, len(v), size=(num_resamples, len(v))) for g, v in values_by_group.items()}
    stats = []
    for r in range(num_resamples):
        group_means = []
        for g, v in values_by_group.items():
            picked = [v[i] for i in draws[g][r]]
            group_means.append(sum(picked) / len(picked))
        stats.append(sum(group_means) / len(group_means))
    tail = (1 - confidence) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1 - tail))


def test_macro_bootstrap_equals_a_naive_loop_on_groups_of_very_different_means_and_sizes():
    """Benchmarks of 200 easy problems and 7 hard ones: the macro mean (each benchmark weighs the same) is far
    from the pooled mean over problems, and the interval is the naive loop's, exactly."""
    rng = np.random.default_rng(11)
    groups = {"easy": (rng.random(200) < 0.9).astype(float), "hard": np.array([0, 0, 1, 0, 0, 0, 0.5])}
    macro = (groups["easy"].mean() + groups["hard"].mean()) / 2
    pooled = np.concatenate(list(groups.values())).mean()
    assert pooled - macro > 0.3
    for confidence in (0.95, 0.8):
        lo, hi = bootstrap_macro_mean_ci(groups, 500, confidence, seed=4)
        assert (lo, hi) == pytest.approx(naive_macro_bootstrap(groups, 500, confidence, seed=4), rel=1e-12, abs=1e-15)
        assert lo < macro < hi and hi < pooled
    n = {"easy": np.full(200, 4), "hard": np.full(7, 4)}
    c = {"easy": (groups["easy"] * 4).astype(int), "hard": (groups["hard"] * 4).astype(int)}
    row = summarise(n, c, ks=[1], num_resamples=500, seed=4)["average"]["avg@4"]
    assert row["value"] == pytest.approx(macro)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(naive_macro_bootstrap(groups, 500, 0.95, seed=4), rel=1e-12)


def test_summarise_per_benchmark_and_macro_average():
    n = {"aime24": np.array([4, 4]), "amc": np.array([4, 4, 4])}
    c = {"aime24": np.array([0, 2]), "amc": np.array([4, 1, 0])}
    s = summarise(n, c, ks=[1, 4], num_resamples=100, seed=0)
    assert s["aime24"]["pass@1"]["value"] == pytest.approx(0.25)
    assert s["amc"]["pass@1"]["value"] == pytest.approx(5 / 12)
    assert s["average"]["pass@1"]["value"] == pytest.approx((0.25 + 5 / 12) / 2)
    assert s["amc"]["pass@4"]["value"] == pytest.approx(2 / 3)
    assert s["average"]["avg@4"]["num_problems"] == 5
    with pytest.raises(ValueError, match="'amc'.*k > n"):
        summarise({"amc": np.array([4, 2])}, {"amc": np.array([1, 1])}, ks=[4], num_resamples=0)
