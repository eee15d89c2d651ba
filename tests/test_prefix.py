"""The shared-prefix schedule: visiting order, resume depths, and which states are kept."""

import itertools

import numpy as np

from modulenet_jax.prefix import PrefixSchedule, common_prefix


def test_schedule_of_a_known_set():
    seqs = [("z",), ("a", "b", "x"), ("a", "b", "c", "e"), ("a", "b", "c", "d")]
    s = PrefixSchedule.of(seqs)
    assert s.order == (3, 2, 1, 0)  # abcd, abce, abx, z
    assert s.resume == (0, 3, 2, 0)
    assert s.keep == (frozenset({2, 3}), frozenset({2}), frozenset(), frozenset())
    assert s.modules_computed([len(q) for q in seqs]) == 4 + 1 + 1 + 1  # instead of 11


def _simulate(schedule, seqs):
    """Replays the schedule as `Evaluator.evaluate_iter` does; returns the most states held."""
    saved, most = {}, 0
    for i, resume, keep in zip(schedule.order, schedule.resume, schedule.keep):
        if resume:
            assert saved[resume] == seqs[i][:resume]  # the state resumed from is this network's prefix
        for depth in range(resume, len(seqs[i])):
            if depth + 1 in keep:
                saved[depth + 1] = seqs[i][:depth + 1]
        most = max(most, len(saved))
        saved = {d: s for d, s in saved.items() if d in keep}
    return most


def test_every_distinct_prefix_is_computed_exactly_once():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 12))
        seqs = [tuple(rng.integers(0, 3, int(rng.integers(1, 6)))) for _ in range(n)]
        schedule = PrefixSchedule.of(seqs)
        assert sorted(schedule.order) == list(range(n))
        prefixes = {q[:d] for q in seqs for d in range(1, len(q) + 1)}  # the nodes of the prefix tree
        assert schedule.modules_computed([len(q) for q in seqs]) == len(prefixes)
        assert _simulate(schedule, seqs) <= max(len(q) for q in seqs)


def test_order_does_not_depend_on_the_input_order():
    seqs = [("a", "b"), ("a", "c"), ("b",), ("a", "b", "d")]
    schedules = [PrefixSchedule.of(p) for p in itertools.permutations(seqs)]
    visits = {tuple(tuple(p[i]) for i in s.order) for p, s in zip(itertools.permutations(seqs), schedules)}
    assert len(visits) == 1


def test_common_prefix():
    assert common_prefix("abc", "abd") == 2 and common_prefix("", "a") == 0 and common_prefix("ab", "ab") == 2
