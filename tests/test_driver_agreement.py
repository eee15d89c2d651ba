"""`benchmarks/driver_agreement.py`: both drivers on the same random networks and split (on the
tests' networks they count exactly the same)."""

from modulenet_jax.benchmarks.driver_agreement import counts
from tests.test_runner import small_run


def test_both_drivers_count_the_same_random_networks(tiny_kb, tiny_dataset):
    run = small_run(tiny_kb, tiny_dataset, ["protocol.head=ridge"])
    pairs = counts(run, 3, seed=0)
    assert len(pairs) == 3 and all(a == b for a, b in pairs) and sum(a for a, _ in pairs) > 0
    assert len({a for a, _ in pairs}) > 1  # three different networks, not one evaluated thrice
