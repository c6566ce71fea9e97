"""What pairing buys: the seed-level correlation of two arms, against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reweight.study.stats import seed_correlation


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_seed_correlation_is_pearson_of_the_per_seed_means():
    rng = np.random.default_rng(0)
    luck = rng.normal(size=(6, 1))  # a seed's shift, shared by both arms
    arm = 0.5 + 0.1 * luck + 0.02 * rng.normal(size=(6, 40))
    base = 0.4 + 0.1 * luck + 0.02 * rng.normal(size=(6, 40))
    expected = _pearson(arm.mean(axis=1).tolist(), base.mean(axis=1).tolist())
    assert math.isclose(seed_correlation(arm, base), expected, rel_tol=1e-12)
    assert seed_correlation(arm, base) > 0.9  # the shared luck dominates
    assert abs(seed_correlation(arm, rng.normal(size=(6, 40)))) < 0.9


def test_seed_correlation_needs_three_varying_seeds():
    assert seed_correlation(np.ones((2, 5)), np.zeros((2, 5))) is None
    assert seed_correlation(np.ones((4, 5)), np.arange(20.0).reshape(4, 5)) is None  # an arm that does not vary


def test_the_unpaired_interval_resamples_each_arms_seeds_on_its_own():
    from reweight.study.stats import paired_difference, unseeded_difference

    rng = np.random.default_rng(1)
    luck = rng.normal(size=(5, 1))
    arm = 0.5 + 0.05 * luck + 0.01 * rng.normal(size=(5, 30))
    base = 0.45 + 0.05 * luck + 0.01 * rng.normal(size=(5, 30))
    out = unseeded_difference(arm, base, resamples=200, seed=3)
    # naive: the same draws, in the same order, one resample at a time
    draw = np.random.default_rng(3)
    s_arm = draw.integers(0, 5, size=(200, 5))
    problems = draw.integers(0, 30, size=(200, 30))
    s_base = draw.integers(0, 5, size=(200, 5))
    means = [arm[s_arm[r]][:, problems[r]].mean() - base[s_base[r]][:, problems[r]].mean() for r in range(200)]
    assert out["delta"] == (arm - base).mean()
    assert out["ci95"] == pytest.approx(list(np.quantile(means, [0.025, 0.975])), rel=1e-12)
    # the arms share each seed's luck: pairing them by seed gives a far narrower interval
    paired = paired_difference(arm, base, resamples=200, seed=3)["ci95"]
    assert paired[1] - paired[0] < (out["ci95"][1] - out["ci95"][0]) / 3
