"""How well one scoring of networks ranks them like another: Kendall's tau-b, Spearman's rho, and
paired bootstrap confidence intervals for either (scipy's implementations throughout).

The fidelity measurement asks whether the cheap no-tuning score orders networks as a fine-tune
does; with a few dozen networks the statistic's interval matters as much as its value.
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def kendall(a, b) -> float:
    """Kendall's tau-b (ties handled), NaN if either side is constant."""
    return float(stats.kendalltau(a, b).statistic)


def spearman(a, b) -> float:
    """Spearman's rank correlation (average ranks for ties), NaN if either side is constant."""
    return float(stats.spearmanr(a, b).statistic)


STATISTICS = {"tau": kendall, "rho": spearman}


def bootstrap_interval(a, b, statistic: str, *, seed: int, confidence: float = 0.95,
                       resamples: int = 2000) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` ("tau" or "rho") over networks resampled in
    pairs (each network keeps its two scores); NaN bounds with fewer than three networks."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) != len(b):
        raise ValueError(f"{len(a)} scores against {len(b)}")
    if len(a) < 3:
        return float("nan"), float("nan")
    fn = STATISTICS[statistic]
    result = stats.bootstrap((a, b), lambda x, y: fn(x, y), paired=True, vectorized=False,
                             n_resamples=resamples, confidence_level=confidence, method="percentile",
                             random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def agreement(a, b, *, seed: int, confidence: float = 0.95, resamples: int = 2000) -> dict:
    """`{"n", "tau", "tau_ci", "rho", "rho_ci"}` of two scorings of the same networks."""
    out = {"n": len(a)}
    for name, fn in STATISTICS.items():
        out[name] = fn(a, b)
        out[f"{name}_ci"] = list(bootstrap_interval(a, b, name, seed=seed, confidence=confidence,
                                                          resamples=resamples))
    return out
