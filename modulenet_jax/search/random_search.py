"""Random search: the baseline every search is compared with, behind the same interface."""

from __future__ import annotations

import numpy as np

from modulenet_jax.search.base import SearchAlgorithm, check_objectives, check_told, first_unseen, unseen
from modulenet_jax.space import SearchSpace

class RandomSearch(SearchAlgorithm):
    """Each batch is `batch_size` distinct, never-asked random networks; the first batch
    starts with the seeds (the source models) when given, as NSGA-II's does. Sampled as
    NSGA-II samples its initial population: `continue_run_prob` 0 is uniform over the genes."""

    name = "random"

    def __init__(self, space: SearchSpace, batch_size: int, seed: int, *,
                 initial: tuple[np.ndarray, ...] = (), continue_run_prob: float = 0.0):
        super().__init__(space, seed, initial)
        self.continue_run_prob = continue_run_prob
        self.batch_size = batch_size
        self.objectives: int | None = None  # how many objectives each network has been told with

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
        return {**self.common_state(), "objectives": self.objectives}

    def load_state_dict(self, state: dict) -> None:
        self.load_common_state(state)
        if "F" in state:  # written before the state kept only the objectives' count
            state = {**state, "objectives": len(state["F"][0]) if state["F"] else None}
        self.objectives = state["objectives"]
        if not (self.objectives is None or isinstance(self.objectives, int) and self.objectives > 0):
            raise ValueError(f"objectives must be a positive count or None, got {self.objectives!r}")
