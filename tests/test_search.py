"""NSGA-II and random search: sorting and crowding on fronts known by construction,
survival, determinism, resume-equals-uninterrupted, bad fitness."""

import json

import numpy as np
import pytest

from modulenet_jax.search import NSGA2, FitnessError, RandomSearch, crowding_distance, non_dominated_fronts, survive
from modulenet_jax.search.base import unseen
from modulenet_jax.search.operators import binary_tournament, depth_step, mutate, shrink
from modulenet_jax.space import SearchSpace


def test_fronts_known_by_construction():
    # front 0: x + y = 1 line; front 1: shifted by 1; front 2: one point dominated by all
    f0 = [[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [1.0, 0.0]]
    f1 = [[1.0, 2.0], [2.0, 1.0], [1.5, 1.5]]
    f2 = [[3.0, 3.0]]
    F = np.array(f1 + f2 + f0)
    fronts = non_dominated_fronts(F)
    assert [f.tolist() for f in fronts] == [[4, 5, 6, 7], [0, 1, 2], [3]]
    # every member of front k is dominated by some member of front k-1, none within a front
    for k in range(1, len(fronts)):
        for i in fronts[k]:
            assert any(np.all(F[j] <= F[i]) and np.any(F[j] < F[i]) for j in fronts[k - 1])
    for front in fronts:
        for i in front:
            assert not any(np.all(F[j] <= F[i]) and np.any(F[j] < F[i]) for j in front)


def test_crowding_distance_known_values():
    F = np.array([[0.0, 4.0], [1.0, 3.0], [2.0, 2.0], [4.0, 0.0]])
    cd = crowding_distance(F)
    assert np.isinf(cd[0]) and np.isinf(cd[3])
    # interior: (neighbour gap / range) summed over objectives, divided by 2 objectives (pymoo)
    assert cd[1] == pytest.approx(((2 - 0) / 4 + (4 - 2) / 4) / 2)
    assert cd[2] == pytest.approx(((4 - 1) / 4 + (3 - 0) / 4) / 2)


def test_survival_keeps_best_fronts_then_most_crowded():
    F = np.array([[0.0, 4.0], [1.0, 3.0], [1.1, 2.9], [2.0, 2.0], [4.0, 0.0], [5.0, 5.0]])
    keep = survive(F, 4)
    # front 0 is points 0..4; the cut drops the most crowded interior point (1 or 2)
    assert set(keep) >= {0, 4, 3} and 5 not in keep and len(keep) == 4
    assert len(set(keep) & {1, 2}) == 1


def test_tournament_prefers_lower_rank():
    rng = np.random.default_rng(0)
    rank = np.array([0, 1])
    wins = binary_tournament(rank, np.zeros(2), 1000, rng)
    # index 1 wins only when drawn against itself
    assert 0.2 < np.mean(wins == 1) < 0.3


def test_tournament_prefers_larger_crowding_within_a_front():
    rng = np.random.default_rng(0)
    wins = binary_tournament(np.zeros(2, int), np.array([1.0, 0.0]), 1000, rng)
    # the less crowded index 0 wins every mixed pair: index 1 only against itself
    assert 0.2 < np.mean(wins == 1) < 0.3


def test_survival_is_elitist(tiny_kb):
    """Offspring that every parent dominates do not enter the population."""
    space = SearchSpace(tiny_kb, "block")
    algo = NSGA2(space, 4, 0)
    parents = algo.ask()
    algo.tell(parents, np.zeros((4, 2)))
    offspring = algo.ask()
    algo.tell(offspring, np.ones((4, 2)))
    assert sorted(algo.pop_X.tolist()) == sorted(parents.tolist())


def test_a_network_is_new_by_its_canonical_key(tiny_kb):
    """A genotype that differs from a seen one only in an inactive gene is the same network."""
    space = SearchSpace(tiny_kb, "block")
    g = space.encode_source("cifar_resnet8")  # one block per stage: each stage's second position is inactive
    inactive = next(i for i, gene in enumerate(space.genes) if gene.name == "stage1.pos1")
    same = g.copy()
    gene = space.genes[inactive]
    same[inactive] = gene.high if g[inactive] != gene.high else gene.low
    assert space.canonical(same) == space.canonical(g) and not np.array_equal(same, g)
    new = space.encode_source("cifar_resnet14")
    assert unseen(iter([same, new]).__next__, space.canonical, {space.canonical(g)}) is new


def _objectives(space, X):
    """A cheap synthetic bi-objective problem on genotypes (no network evaluation)."""
    F = []
    for g in X:
        arch = space.decode(g)
        F.append([len(arch.modules) + 0.01 * int(np.sum(g)), -len(arch.modules) + 0.1 * (g[0] % 3)])
    return np.array(F, float)


def _run(space, seed, generations, cls=NSGA2, state=None, stop_after=None):
    algo = cls(space, 8, seed, initial=tuple(space.encode_source(s) for s in space.sources)) if cls is NSGA2 \
        else cls(space, 8, seed)
    if state is not None:
        algo.load_state_dict(json.loads(state))
    asked = []
    while algo.generation < generations:
        X = algo.ask()
        asked.append(X.tolist())
        algo.tell(X, _objectives(space, X))
        if stop_after is not None and algo.generation == stop_after:
            return asked, json.dumps(algo.state_dict())
    return asked, algo


@pytest.mark.parametrize("cls", [NSGA2, RandomSearch])
def test_same_seed_same_run_and_different_seed_differs(tiny_kb, cls):
    space = SearchSpace(tiny_kb, "block")
    a, algo_a = _run(space, 3, 5, cls)
    b, algo_b = _run(space, 3, 5, cls)
    c, _ = _run(space, 4, 5, cls)
    assert a == b and a != c


@pytest.mark.parametrize("cls", [NSGA2, RandomSearch])
def test_resume_equals_uninterrupted(tiny_kb, cls):
    space = SearchSpace(tiny_kb, "block")
    full, algo = _run(space, 7, 6, cls)
    first, state = _run(space, 7, 6, cls, stop_after=3)
    rest, resumed = _run(space, 7, 6, cls, state=state)
    assert first + rest == full
    assert resumed.state_dict() == algo.state_dict()
    loaded = cls(space, 8, 0)
    loaded.load_state_dict(json.loads(state))
    assert loaded.state_dict() == json.loads(state)  # the generator's state too, not only what it leads to


def test_random_search_state_stays_small_and_reads_the_older_form(tiny_kb):
    """Random search keeps only what it continues from (not every genotype it was told), and a
    state written when it kept them all (X and F) resumes the same run."""
    space = SearchSpace(tiny_kb, "block")
    full, algo = _run(space, 7, 6, RandomSearch)
    first, state = _run(space, 7, 6, RandomSearch, stop_after=3)
    assert set(json.loads(state)) == {"algorithm", "generation", "rng", "objectives", "pending", "seen"}
    older = {**json.loads(state), "X": [g for batch in first for g in batch],
             "F": [f for batch in first for f in _objectives(space, np.array(batch)).tolist()]}
    del older["objectives"]
    rest, resumed = _run(space, 7, 6, RandomSearch, state=json.dumps(older))
    assert first + rest == full and resumed.state_dict() == algo.state_dict()


def test_nsga2_population_is_seeded_and_offspring_are_new(tiny_kb):
    space = SearchSpace(tiny_kb, "block")
    algo = NSGA2(space, 6, 0, initial=tuple(space.encode_source(s) for s in space.sources))
    X = algo.ask()
    assert np.array_equal(X[0], space.encode_source("cifar_resnet8"))
    assert np.array_equal(X[1], space.encode_source("cifar_resnet14"))
    algo.tell(X, _objectives(space, X))
    Y = algo.ask()
    keys = {space.canonical(g) for g in X}
    assert all(space.is_valid(g) for g in Y)
    assert len({space.canonical(g) for g in Y} - keys) == len(Y)


def test_tell_rejects_nan_and_foreign_genotypes(tiny_kb):
    space = SearchSpace(tiny_kb, "run")
    algo = NSGA2(space, 4, 0)
    X = algo.ask()
    F = _objectives(space, X)
    F[2, 0] = np.nan
    with pytest.raises(FitnessError, match=r"genotype\(s\) \[2\]"):
        algo.tell(X, F)
    with pytest.raises(ValueError, match="exactly the genotypes"):
        algo.tell(X[::-1], _objectives(space, X[::-1]))


def test_mutation_towards_fewer_junctions(tiny_kb):
    space = SearchSpace(tiny_kb, "block")
    rng = np.random.default_rng(0)
    biased = [space.decode(mutate(space.sample(rng), space, 0.5, 1.0, rng)).num_junctions(tiny_kb) for _ in range(200)]
    plain = [space.decode(mutate(space.sample(rng), space, 0.5, 0.0, rng)).num_junctions(tiny_kb) for _ in range(200)]
    assert np.mean(biased) < np.mean(plain)


def test_nsga2_immigrants_are_fresh_samples(tiny_kb, monkeypatch):
    """With `immigrants` k, the first k offspring of a generation are drawn by the sampler (as
    the initial population is), the rest by crossover and mutation; k must leave room for them."""
    from modulenet_jax.errors import UserError

    space = SearchSpace(tiny_kb, "run")
    with pytest.raises(UserError, match=r"search.immigrants must be at least 0 and below search.population \(6\)"):
        NSGA2(space, 6, 0, immigrants=6)
    algo = NSGA2(space, 6, 0, initial=tuple(space.encode_source(s) for s in space.sources), immigrants=2,
                 continue_run_prob=0.5)
    X = algo.ask()
    algo.tell(X, _objectives(space, X))
    sampled = []
    sample = space.sample
    monkeypatch.setattr(space, "sample", lambda rng, q=0.0: sampled.append(sample(rng, q)) or sampled[-1])
    Y = algo.ask()
    assert len(Y) == 6 and len(sampled) >= 2
    assert all(any(np.array_equal(y, s) for s in sampled) for y in Y[:2])


@pytest.mark.parametrize("granularity", ["run", "block"])
def test_shrink_drops_the_last_block_of_one_stage(tiny_kb, granularity):
    """`shrink`: one depth gene one lower, nothing else changed, so the network is its parent
    without the last block of one stage; None when every stage is at its minimum depth."""
    space = SearchSpace(tiny_kb, granularity)
    rng = np.random.default_rng(0)
    depth_genes = [i for i, g in enumerate(space.genes) if g.kind == "depth"]
    shrunk = 0
    for source in space.sources:
        parent = space.encode_source(source)
        if all(parent[i] == space.lower[i] for i in depth_genes):
            assert shrink(parent, space, rng) is None
            continue
        shrunk += 1
        for _ in range(10):
            child = shrink(parent, space, rng)
            changed = np.flatnonzero(child != parent)
            assert len(changed) == 1 and changed[0] in depth_genes and child[changed[0]] == parent[changed[0]] - 1
            big, small = space.decode(parent).modules, space.decode(child).modules
            assert len(small) == len(big) - 1 and set(small) < set(big)
    assert shrunk == 1  # resnet14; resnet8 has one block per stage
    shallowest = space.repair(np.where([g.kind == "depth" for g in space.genes], space.lower, space.upper))
    assert shrink(shallowest, space, rng) is None


def test_nsga2_shrink_offspring_are_parents_one_block_shorter(tiny_kb):
    """With shrink_prob 1 every offspring is a population member with one stage one block
    shorter, never asked before; the probability is checked."""
    from modulenet_jax.errors import UserError

    space = SearchSpace(tiny_kb, "run")
    with pytest.raises(UserError, match="search.shrink_prob must be between 0 and 1, got 1.5"):
        NSGA2(space, 6, 0, shrink_prob=1.5)
    algo = NSGA2(space, 6, 0, initial=tuple(space.encode_source(s) for s in space.sources), shrink_prob=1.0)
    X = algo.ask()
    algo.tell(X, _objectives(space, X))
    parents = [space.decode(g).modules for g in algo.pop_X]
    Y = algo.ask()
    asked = {space.canonical(g) for g in X}
    for y in Y:
        child = space.decode(y).modules
        assert space.canonical(y) not in asked
        assert any(len(child) == len(p) - 1 and set(child) < set(p) for p in parents)


@pytest.mark.parametrize("granularity", ["run", "block"])
def test_sampling_towards_fewer_junctions(tiny_kb, granularity):
    """`sample` with continue_run_prob: fewer junctions, always valid; at 0 it is the uniform draw
    it always was (the same random numbers, so earlier seeds give the same networks)."""
    space = SearchSpace(tiny_kb, granularity)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(20):
        assert np.array_equal(space.sample(rng_a), space.repair(rng_b.integers(space.lower, space.upper + 1)))
    rng = np.random.default_rng(0)
    junctions = {}
    for q in (0.0, 1.0):
        samples = [space.sample(rng, q) for _ in range(200)]
        assert all(space.is_valid(g) for g in samples)
        junctions[q] = np.mean([space.decode(g).num_junctions(tiny_kb) for g in samples])
    assert junctions[1.0] < junctions[0.0]


def test_depth_mutation_steps_to_a_neighbour(tiny_kb):
    """A mutated depth moves by one block (within its bounds), whatever the other genes do."""
    rng = np.random.default_rng(0)
    assert [depth_step(1, 1, 1, rng), depth_step(1, 1, 4, rng), depth_step(4, 1, 4, rng)] == [1, 2, 3]
    assert {depth_step(2, 1, 4, rng) for _ in range(50)} == {1, 3}
    space = SearchSpace(tiny_kb, "run")
    depth_genes = [i for i, g in enumerate(space.genes) if g.kind == "depth"]
    for source in space.sources:
        g0 = space.encode_source(source)
        for _ in range(20):
            g = mutate(g0, space, 1.0, 1.0, rng)
            assert all(abs(int(g[i]) - int(g0[i])) == 1 or space.genes[i].low == space.genes[i].high
                       for i in depth_genes)


def test_stage_crossover_keeps_stages_whole(tiny_kb):
    from modulenet_jax.search.operators import stage_crossover

    space = SearchSpace(tiny_kb, "run")
    a, b = space.encode_source("cifar_resnet8"), space.encode_source("cifar_resnet14")
    rng = np.random.default_rng(0)
    stages = np.array([g.stage for g in space.genes])
    for _ in range(20):
        c1, c2 = stage_crossover(a, b, 1.0, space, rng)
        for s in set(stages):
            m = stages == s
            assert np.array_equal(c1[m], a[m]) or np.array_equal(c1[m], b[m])
            assert np.array_equal(c2[m], b[m]) if np.array_equal(c1[m], a[m]) else np.array_equal(c2[m], a[m])
