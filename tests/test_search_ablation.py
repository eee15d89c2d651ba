"""The search ablation's score: the hypervolume of the archive's front with a fixed reference
point, per generation, for NSGA-II and random search at equal genotypes asked."""

import numpy as np
import pytest

from modulenet_jax.benchmarks.search_ablation import archive_hypervolume, markdown, run_variant
from modulenet_jax.runs import HV_REFERENCE
from tests.test_runner import _run


def test_hypervolume_of_known_fronts():
    assert HV_REFERENCE == (1.0, 1_000_000)
    assert archive_hypervolume([(0.5, 500_000.0)]) == pytest.approx((1 - 0.5) * (1 - 0.5))
    two = [(0.5, 500_000.0), (0.2, 900_000.0)]  # two rectangles minus their overlap
    assert archive_hypervolume(two) == pytest.approx(0.5 * 0.5 + 0.8 * 0.1 - 0.5 * 0.1)
    assert archive_hypervolume(two + [(0.6, 950_000.0)]) == archive_hypervolume(two)  # dominated: nothing added
    assert archive_hypervolume([(1.0, 2_000_000.0)]) == 0.0  # beyond the reference point


def test_nsga2_and_random_search_at_equal_asks(tiny_kb, tiny_dataset):
    run = _run(tiny_kb, tiny_dataset, ["search.population=4", "search.generations=2"])
    cache = {}
    saved = []
    rows = [run_variant(run, run.config, name, 0, cache, log=lambda m: None, save=lambda k, v: saved.append(k))
            for name in ("nsga2", "random")]
    assert sorted(saved) == sorted(cache)  # every evaluation saved once, for a resumed comparison
    assert all(set(map(tuple, r["archive"])) <= set(cache) and len(r["archive"]) == r["networks"] for r in rows)
    for r in rows:
        hv = [g["hypervolume"] for g in r["generations"]]
        assert len(hv) == 2 and hv == sorted(hv) and hv[-1] == r["hypervolume"] > 0  # an archive's front only grows
        assert [g["asked"] for g in r["generations"]] == [4, 8] and r["networks"] <= 8
    assert len(cache) <= sum(r["networks"] for r in rows)  # one evaluation per network, whoever asked first
    assert "| nsga2 | 1 |" in markdown(rows, ["nsga2", "random"])
