"""Variation operators on integer genotypes: tournament selection, crossover, mutation.

Each takes the search's one `numpy.random.Generator`; none keeps state of its own.
"""

from __future__ import annotations

import numpy as np

from modulenet_jax.space import SearchSpace


def binary_tournament(rank: np.ndarray, crowding: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n winners of random pairwise contests: lower front wins, then larger crowding distance,
    then a coin flip."""
    a = rng.integers(0, len(rank), n)
    b = rng.integers(0, len(rank), n)
    coin = rng.random(n) < 0.5
    a_wins = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (crowding[a] > crowding[b])) | (
        (rank[a] == rank[b]) & (crowding[a] == crowding[b]) & coin)
    return np.where(a_wins, a, b)


def uniform_crossover(p1: np.ndarray, p2: np.ndarray, prob: float, rng: np.random.Generator):
    """With probability `prob`, each gene is swapped between the two children with chance 1/2."""
    c1, c2 = p1.copy(), p2.copy()
    if rng.random() < prob:
        swap = rng.random(len(p1)) < 0.5
        c1[swap], c2[swap] = p2[swap], p1[swap]
    return c1, c2


def stage_crossover(p1: np.ndarray, p2: np.ndarray, prob: float, space: SearchSpace, rng: np.random.Generator):
    """With probability `prob`, each stage's genes (its depth and all its positions), and the
    stem gene, come whole from one parent or the other: runs inside a stage survive, so the
    children's junctions are mostly where the parents had them or at stage boundaries."""
    c1, c2 = p1.copy(), p2.copy()
    if rng.random() < prob:
        groups = [g.stage for g in space.genes]
        for stage in sorted(set(groups)):
            if rng.random() < 0.5:
                mask = np.array([g == stage for g in groups])
                c1[mask], c2[mask] = p2[mask], p1[mask]
    return c1, c2


CROSSOVERS = ("stage", "uniform")


def mutate(genotype: np.ndarray, space: SearchSpace, prob: float, continue_run_prob: float,
           rng: np.random.Generator) -> np.ndarray:
    """Mutation, each gene with probability `prob`, then repair.

    A depth gene steps to a neighbouring depth (one block more or fewer: depth is ordinal, and a
    network one block shorter or longer is the near neighbour a random reset almost never picks);
    a block the step adds continues its predecessor's run with probability `continue_run_prob`.
    Other genes are reset at random; with probability `continue_run_prob`, a mutated block gene
    is instead set to the block that continues its predecessor's run (fewer junctions), where
    there is such a block.
    """
    g = genotype.copy()
    lower, upper = space.lower, space.upper
    for i in np.flatnonzero(rng.random(len(g)) < prob):
        if space.genes[i].kind == "depth":
            g[i] = depth_step(int(g[i]), int(lower[i]), int(upper[i]), rng)
            added = i + int(g[i])  # the gene of the last position, if the step added it
            if int(g[i]) > int(genotype[i]) and rng.random() < continue_run_prob:
                value = space.continue_run_value(g, added)
                if value is not None:
                    g[added] = value
            continue
        value = None
        if continue_run_prob > 0 and rng.random() < continue_run_prob:
            value = space.continue_run_value(g, i)
        g[i] = value if value is not None else rng.integers(lower[i], upper[i] + 1)
    return space.repair(g)


def depth_step(depth: int, low: int, high: int, rng: np.random.Generator) -> int:
    """One block more or fewer, at random, staying within [low, high] (at a bound: the one way
    left; a range of one depth: unchanged)."""
    steps = [d for d in (depth - 1, depth + 1) if low <= d <= high]
    return int(steps[rng.integers(len(steps))]) if steps else depth


def shrink(genotype: np.ndarray, space: SearchSpace, rng: np.random.Generator) -> np.ndarray | None:
    """The genotype with one stage one block shorter (a stage chosen at random among those above
    their minimum depth), or None where no stage can lose a block. Its network is the cheapest
    neighbour of the parent: a residual network loses little accuracy when one block is dropped
    (Veit et al. 2016), so the shortened relatives of front members are likely front members."""
    depths = [i for i, gene in enumerate(space.genes) if gene.kind == "depth" and genotype[i] > space.lower[i]]
    if not depths:
        return None
    g = genotype.copy()
    g[depths[rng.integers(len(depths))]] -= 1
    return space.repair(g)
