"""Random search: the baseline every search is compared with, behind the same interface."""

from __future__ import annotations

import numpy as np

from modulenet_jax.search.base import (SearchAlgorithm, check_objectives, check_told, first_unseen, rng_from_state,
                                       rng_state, unseen, valid_genotypes)
from modulenet_jax.space import SearchSpace

class RandomSearch(SearchAlgorithm):
    """Each batch is `batch_size` distinct, never-asked random networks; the first batch
    starts with the seeds (the source models) when given, as NSGA-II's does. Sampled as
    NSGA-II samples its initial population: `continue_run_prob` 0 is uniform over the genes."""

    name = "random"

    def __init__(self, space: SearchSpace, batch_size: int, seed: int, *,
                 initial: tuple[np.ndarray, ...] = (), continue_run_prob: float = 0.0):
        self.space = space
        self.continue_run_prob = continue_run_prob
        self.batch_size = batch_size
        self.initial = [space.repair(g) for g in initial]
        self.rng = np.random.default_rng(seed)
        self.objectives: int | None = None  # how many objectives each network has been told with
        self.pending: np.ndarray | None = None
        self.seen: set[tuple[int, ...]] = set()
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    def ask(self) -> np.ndarray:
        if self.pending is not None:
            return self.pending.copy()
        batch = []
        if self._generation == 0:
            batch = first_unseen(self.initial[:self.batch_size], self.space.canonical, self.seen)
        while len(batch) < self.batch_size:
            batch.append(unseen(lambda: self.space.sample(self.rng, self.continue_run_prob), self.space.canonical,
                                self.seen))
        self.pending = np.stack(batch)
        return self.pending.copy()

    def tell(self, genotypes, objectives) -> None:
        X = check_told(genotypes, self.pending)
        self.objectives = check_objectives(objectives, len(X), self.objectives).shape[1]
        self.pending = None
        self._generation += 1

    def state_dict(self) -> dict:
        return {"algorithm": self.name, "generation": self._generation, "rng": rng_state(self.rng),
                "objectives": self.objectives,
                "pending": None if self.pending is None else self.pending.tolist(),
                "seen": sorted(list(k) for k in self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self._generation = state["generation"]
        self.rng = rng_from_state(state["rng"])
        if "F" in state:  # written before the state kept only the objectives' count
            state = {**state, "objectives": len(state["F"][0]) if state["F"] else None}
        self.objectives = state["objectives"]
        if not (self.objectives is None or isinstance(self.objectives, int) and self.objectives > 0):
            raise ValueError(f"objectives must be a positive count or None, got {self.objectives!r}")
        self.pending = None if state["pending"] is None else valid_genotypes(self.space, state["pending"])
        self.seen = {tuple(k) for k in state["seen"]}
