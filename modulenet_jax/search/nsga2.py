"""NSGA-II (Deb et al. 2002) over the integer genotypes of a search space.

Non-dominated sorting and crowding distance come from pymoo; selection is a binary
tournament on (front, crowding), variation is crossover (per stage by default, or per gene) plus
random-reset mutation (optionally biased towards continuing runs, i.e. fewer junctions), survival keeps the best
fronts of parents + offspring and cuts the last front by crowding distance. The initial
population can be seeded with the source models themselves; the rest of it is sampled with the
same bias towards continuing runs as the mutation. Optionally, each generation's offspring
include `immigrants` fresh samples drawn as the initial population is (random immigrants,
Grefenstette 1992): they keep reaching parts of the space, such as the smallest networks, that
selection and small mutations get to slowly. With probability `shrink_prob` an offspring is
instead a tournament winner with one stage one block shorter (`operators.shrink`): the move from
a network on the front, a source at first, to its cheapest neighbour, which crossover and
per-gene mutation propose less often (docs/RESULTS.md, section 5).
"""

from __future__ import annotations

import numpy as np

from modulenet_jax.errors import UserError
from modulenet_jax.search.base import (MAX_DUPLICATE_TRIES, SearchAlgorithm, check_objectives, check_told,
                                       crowding_distance, first_unseen, non_dominated_fronts, rank_and_crowding,
                                       unseen, valid_genotypes)
from modulenet_jax.search.operators import (CROSSOVERS, binary_tournament, mutate, shrink, stage_crossover,
                                           uniform_crossover)
from modulenet_jax.space import SearchSpace

def survive(F: np.ndarray, n: int) -> np.ndarray:
    """Indices of the n survivors: whole fronts first, the last front cut by crowding
    distance (largest first; ties keep the earlier index)."""
    chosen: list[int] = []
    for front in non_dominated_fronts(F):
        if len(chosen) + len(front) <= n:
            chosen += front.tolist()
            continue
        cd = crowding_distance(F[front])
        order = np.lexsort((front, -cd))
        chosen += front[order[:n - len(chosen)]].tolist()
        break
    return np.array(chosen, np.int64)


class NSGA2(SearchAlgorithm):
    name = "nsga2"

    def __init__(self, space: SearchSpace, population_size: int, seed: int, *,
                 initial: tuple[np.ndarray, ...] = (), crossover_prob: float = 0.9,
                 mutation_prob: float | None = None, continue_run_prob: float = 0.0, crossover: str = "stage",
                 immigrants: int = 0, shrink_prob: float = 0.0):
        if crossover not in CROSSOVERS:
            raise UserError(f"search.crossover must be one of {CROSSOVERS}, got {crossover!r}")
        if population_size < 2:
            raise UserError(f"search.population must be at least 2, got {population_size}")
        if not 0 <= immigrants < population_size:
            raise UserError(f"search.immigrants must be at least 0 and below search.population ({population_size}), "
                            f"got {immigrants}")
        if not 0 <= shrink_prob <= 1:
            raise UserError(f"search.shrink_prob must be between 0 and 1, got {shrink_prob}")
        if len(initial) > population_size:
            raise UserError(f"{len(initial)} source models do not fit a population of {population_size}; raise "
                            f"search.population or set search.seed_sources=False")
        super().__init__(space, seed, initial)
        self.population_size = population_size
        self.crossover_prob = crossover_prob
        self.crossover = crossover
        self.mutation_prob = mutation_prob if mutation_prob is not None else 1.0 / space.num_genes
        self.continue_run_prob = continue_run_prob
        self.immigrants = immigrants
        self.shrink_prob = shrink_prob
        self.pop_X: np.ndarray | None = None
        self.pop_F: np.ndarray | None = None

    def _unique(self, make) -> np.ndarray:
        """A genotype from `make()` whose network was not asked before (best effort)."""
        return unseen(make, self.space.canonical, self.seen)

    def _initial_population(self) -> np.ndarray:
        pop = first_unseen(self.initial, self.space.canonical, self.seen)
        while len(pop) < self.population_size:
            pop.append(self._sample())
        return np.stack(pop)

    def _sample(self) -> np.ndarray:
        return self._unique(lambda: self.space.sample(self.rng, self.continue_run_prob))

    def _offspring(self) -> np.ndarray:
        rank, crowd = rank_and_crowding(self.pop_F)
        children = [self._sample() for _ in range(self.immigrants)]
        while len(children) < self.population_size:
            if self.shrink_prob > 0 and self.rng.random() < self.shrink_prob:  # no draw at 0: old runs replay
                child = self._shrunk(rank, crowd)
                if child is not None:
                    children.append(child)
                    continue
            a, b = binary_tournament(rank, crowd, 2, self.rng)

            def make(a=a, b=b):
                if self.crossover == "stage":
                    c1, _ = stage_crossover(self.pop_X[a], self.pop_X[b], self.crossover_prob, self.space, self.rng)
                else:
                    c1, _ = uniform_crossover(self.pop_X[a], self.pop_X[b], self.crossover_prob, self.rng)
                return mutate(c1, self.space, self.mutation_prob, self.continue_run_prob, self.rng)

            children.append(self._unique(make))
        return np.stack(children)

    def _shrunk(self, rank, crowd) -> np.ndarray | None:
        """A tournament winner one block shorter, not asked before (a few tries), else None."""
        for _ in range(MAX_DUPLICATE_TRIES):
            child = shrink(self.pop_X[binary_tournament(rank, crowd, 1, self.rng)[0]], self.space, self.rng)
            key = None if child is None else self.space.canonical(child)
            if key is not None and key not in self.seen:
                self.seen.add(key)
                return child
        return None

    def ask(self) -> np.ndarray:
        if self.pending is None:
            self.pending = self._initial_population() if self.pop_X is None else self._offspring()
        return self.pending.copy()

    def tell(self, genotypes, objectives) -> None:
        X = check_told(genotypes, self.pending)
        F = check_objectives(objectives, len(X), None if self.pop_F is None else self.pop_F.shape[1])
        if self.pop_X is not None:
            X, F = np.concatenate([self.pop_X, X]), np.concatenate([self.pop_F, F])
        keep = survive(F, self.population_size)
        self.pop_X, self.pop_F = X[keep], F[keep]
        self.pending = None
        self._generation += 1

    def state_dict(self) -> dict:
        as_list = (lambda a: None if a is None else a.tolist())
        return {**self.common_state(), "pop_X": as_list(self.pop_X), "pop_F": as_list(self.pop_F)}

    def load_state_dict(self, state: dict) -> None:
        self.load_common_state(state)
        self.pop_X = None if state["pop_X"] is None else valid_genotypes(self.space, state["pop_X"])
        self.pop_F = None if state["pop_F"] is None else check_objectives(state["pop_F"], len(self.pop_X))
