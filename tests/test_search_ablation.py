"""The search ablation's score: the hypervolume of the archive's front with a fixed reference
point, per generation, for NSGA-II and random search at equal genotypes asked."""

import numpy as np
import pytest

from modulenet_jax.benchmarks.search_ablation import REFERENCE, hypervolume, markdown, run_variant
from tests.test_runner import _run


def test_hypervolume_of_known_fronts():
    scale = 1000.0
    assert hypervolume(np.array([[0.5, 500.0]]), scale) == pytest.approx((1 - 0.5) * (1.1 - 0.5))
    two = np.array([[0.5, 500.0], [0.2, 900.0]])  # two rectangles minus their overlap
    assert hypervolume(two, scale) == pytest.approx(0.5 * 0.6 + 0.8 * 0.2 - 0.5 * 0.2)
    dominated = np.vstack([two, [[0.6, 950.0]]])
    assert hypervolume(dominated, scale) == hypervolume(two, scale)
    assert hypervolume(np.array([[1.0, 2000.0]]), scale) == 0.0  # beyond the reference point
    assert REFERENCE == (1.0, 1.1)


def test_nsga2_and_random_search_at_equal_asks(tiny_kb, tiny_dataset):
    run = _run(tiny_kb, tiny_dataset, ["search.population=4", "search.generations=2"])
    cache = {}
    rows = [run_variant(run, run.config, name, 0, cache, 1e6, log=lambda m: None) for name in ("nsga2", "random")]
    for r in rows:
        hv = [g["hypervolume"] for g in r["generations"]]
        assert len(hv) == 2 and hv == sorted(hv) and hv[-1] == r["hypervolume"] > 0  # an archive's front only grows
        assert [g["asked"] for g in r["generations"]] == [4, 8] and r["networks"] <= 8
    assert len(cache) <= sum(r["networks"] for r in rows)  # one evaluation per network, whoever asked first
    assert "| nsga2 | 1 |" in markdown(rows, ["nsga2", "random"])
