"""The search ablation's score: the hypervolume of the archive's front with a fixed reference
point, per generation, for NSGA-II and random search at equal genotypes asked; and each run's
final-split outcome, the one `modulenet search` writes in its final table."""

import pytest

from modulenet_jax.benchmarks.search_ablation import archive_hypervolume, final_outcome, markdown, run_variant
from modulenet_jax.runs import HV_REFERENCE, hypervolume
from modulenet_jax.search.run_folder import read_history
from modulenet_jax.search.runner import dominated_by, final_table, search
from tests.test_runner import small_run


def test_hypervolume_of_known_fronts():
    assert HV_REFERENCE == (1.0, 1_000_000)
    assert archive_hypervolume([(0.5, 500_000.0)]) == pytest.approx((1 - 0.5) * (1 - 0.5))
    two = [(0.5, 500_000.0), (0.2, 900_000.0)]  # two rectangles minus their overlap
    assert archive_hypervolume(two) == pytest.approx(0.5 * 0.5 + 0.8 * 0.1 - 0.5 * 0.1)
    assert archive_hypervolume(two + [(0.6, 950_000.0)]) == archive_hypervolume(two)  # dominated: nothing added
    assert archive_hypervolume([(1.0, 2_000_000.0)]) == 0.0  # beyond the reference point


def test_nsga2_and_random_search_at_equal_asks(tiny_kb, tiny_dataset):
    run = small_run(tiny_kb, tiny_dataset, ["search.population=4", "search.generations=2"])
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


def test_final_outcome_is_the_search_final_table(tiny_kb, tiny_dataset, tmp_path):
    """A variant run with the config's seed asks what `modulenet search` asks, and its final
    outcome (found networks no source dominates at or above the smallest source, final-split
    hypervolume) is the one the search's final table gives."""
    run = small_run(tiny_kb, tiny_dataset, ["search.population=4", "search.generations=2"])
    table = final_table(run, search(run, tmp_path, log=lambda m: None), tmp_path, log=lambda m: None)
    cache, final_cache, saved = {}, {}, []
    row = run_variant(run, run.config, "nsga2", run.config.seed, cache, log=lambda m: None)
    history = read_history(tmp_path / "history.jsonl")
    assert {tuple(k) for k in row["archive"]} == {tuple(h["canonical"]) for h in history}
    out = final_outcome(run, run.config, row, cache, final_cache, save=lambda k, v: saved.append(k))
    sources = [r for r in table if r["kind"] == "source"]
    found = [r for r in table if r["kind"] == "found"]
    floor = min(sources, key=lambda r: r["params"])["final_accuracy"]
    free = [[r["params"], r["final_accuracy"]] for r in found
            if r["final_accuracy"] >= floor and not dominated_by(r, sources)]
    assert out["final_free"] == free and out["final_front_size"] == len(found)
    assert out["final_hypervolume"] == hypervolume([{"error": 1 - r["final_accuracy"], "params": r["params"]}
                                                    for r in table])
    assert out["final_hypervolume_sources"] == hypervolume([{"error": 1 - r["final_accuracy"], "params": r["params"]}
                                                            for r in sources])
    assert sorted(saved) == sorted(final_cache) and len(final_cache) == len(table)  # each network once
    assert final_outcome(run, run.config, row, cache, final_cache, save=lambda k, v: saved.append(k)) == out
    assert len(saved) == len(table)  # the second time from the cache
