"""Rank agreement statistics: exact values on hand-checked inputs, and bootstrap intervals that
agree with scipy's and behave as intervals should."""

import numpy as np
import pytest
from scipy import stats

from modulenet_jax.ranking import agreement, bootstrap_interval, kendall, spearman


def test_hand_computed_values():
    a, b = [1, 2, 3, 4, 5], [3, 1, 2, 5, 4]
    assert kendall(a, b) == pytest.approx(0.4)  # 7 concordant, 3 discordant pairs of 10
    assert spearman(a, b) == pytest.approx(0.6)  # 1 - 6 * (4 + 1 + 1 + 1 + 1) / (5 * 24)
    assert kendall(a, a) == pytest.approx(1) and kendall(a, a[::-1]) == pytest.approx(-1)
    assert spearman(a, a) == pytest.approx(1) and spearman(a, a[::-1]) == pytest.approx(-1)
    assert np.isnan(kendall(a, [2] * 5))


def test_ties_use_tau_b():
    a, b = [1, 1, 2, 3], [1, 2, 2, 3]
    assert kendall(a, b) == pytest.approx(stats.kendalltau(a, b, variant="b").statistic)


def _correlated(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, x + rng.normal(size=n)


def test_bootstrap_interval_is_scipys_paired_percentile_bootstrap():
    a, b = _correlated(30)
    low, high = bootstrap_interval(a, b, "tau", resamples=500, seed=3)
    ref = stats.bootstrap((a, b), lambda x, y: stats.kendalltau(x, y).statistic, paired=True, vectorized=False,
                          n_resamples=500, method="percentile", random_state=np.random.default_rng(3))
    assert (low, high) == (ref.confidence_interval.low, ref.confidence_interval.high)
    assert low < kendall(a, b) < high
    assert (low, high) == bootstrap_interval(a, b, "tau", resamples=500, seed=3)  # seeded: reproducible


def test_intervals_narrow_with_more_networks():
    small = bootstrap_interval(*_correlated(20), "rho", seed=0, resamples=400)
    large = bootstrap_interval(*_correlated(400), "rho", seed=0, resamples=400)
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_agreement_report():
    a, b = _correlated(25, seed=1)
    r = agreement(a, b, seed=0, resamples=300)
    assert r["n"] == 25 and r["tau"] == kendall(a, b) and r["rho"] == spearman(a, b)
    assert r["tau_ci"][0] < r["tau"] < r["tau_ci"][1] and r["rho_ci"][0] < r["rho"] < r["rho_ci"][1]
    assert all(np.isnan(bootstrap_interval([1, 2], [2, 1], "tau", seed=0)))
    with pytest.raises(ValueError):
        bootstrap_interval([1, 2, 3], [1, 2], "tau", seed=0)
