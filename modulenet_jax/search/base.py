"""The ask/tell interface every search algorithm implements, and Pareto utilities.

An algorithm proposes genotypes (`ask`), is told their objectives (`tell`, all minimised),
and can be checkpointed (`state_dict` / `load_state_dict`, plain JSON) so that a resumed
search continues exactly as an uninterrupted one. All randomness comes from one
`numpy.random.Generator` seeded by the config and saved with the state.
"""

from __future__ import annotations

import abc

import numpy as np

# pymoo is imported where it is used: `import modulenet_jax` (and the device benchmarks, run
# where pymoo is not installed) does not need it.


class FitnessError(ValueError):
    """Objectives that cannot be used (NaN, infinite, or of the wrong shape)."""


def check_objectives(F, n: int, m: int | None = None) -> np.ndarray:
    F = np.asarray(F, np.float64)
    if F.ndim != 2 or F.shape[0] != n or (m is not None and F.shape[1] != m):
        raise FitnessError(f"objectives must have shape ({n}, {m or 'm'}), got {F.shape}")
    bad = ~np.all(np.isfinite(F), axis=1)
    if bad.any():
        raise FitnessError(f"non-finite objectives for genotype(s) {np.flatnonzero(bad).tolist()}: "
                           f"{F[bad].tolist()}")
    return F


def non_dominated_fronts(F) -> list[np.ndarray]:
    """Indices of each non-domination front, best first (pymoo's fast non-dominated sort)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, np.float64)
    if len(F) == 0:
        return []
    return [np.sort(f) for f in NonDominatedSorting().do(F)]


def crowding_distance(F) -> np.ndarray:
    """NSGA-II crowding distance of the points of one front (boundary points get inf)."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance

    F = np.asarray(F, np.float64)
    if len(F) <= 2:
        return np.full(len(F), np.inf)
    return calc_crowding_distance(F)


def pareto_indices(F) -> np.ndarray:
    """Indices of the non-dominated points of F."""
    fronts = non_dominated_fronts(F)
    return fronts[0] if fronts else np.array([], np.int64)


def rank_and_crowding(F) -> tuple[np.ndarray, np.ndarray]:
    """Per point: its front number (0 = non-dominated) and its crowding distance in that front."""
    rank = np.zeros(len(F), np.int64)
    crowd = np.zeros(len(F))
    for r, front in enumerate(non_dominated_fronts(F)):
        rank[front] = r
        crowd[front] = crowding_distance(np.asarray(F)[front])
    return rank, crowd


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def rng_from_state(state: dict) -> np.random.Generator:
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


MAX_DUPLICATE_TRIES = 50


def unseen(make, canonical, seen: set):
    """A genotype from `make()` whose network (`canonical` key) is not in `seen` — tried
    `MAX_DUPLICATE_TRIES` times, then the last one is taken anyway — and records it as seen."""
    g = make()
    for _ in range(MAX_DUPLICATE_TRIES):
        if canonical(g) not in seen:
            break
        g = make()
    seen.add(canonical(g))
    return g


def first_unseen(genotypes, canonical, seen: set) -> list:
    """The genotypes whose networks (`canonical` keys) are not in `seen`, each network once, in
    order; records them as seen (the seeded sources of a first generation)."""
    out = []
    for g in genotypes:
        if canonical(g) not in seen:
            seen.add(canonical(g))
            out.append(g)
    return out


def valid_genotypes(space, rows) -> np.ndarray:
    """Saved genotypes as an int array, each checked against the space (`GenotypeError`, a
    ValueError, naming the gene of one outside it): a resumed state holds only networks of its space."""
    X = np.asarray(rows, np.int64).reshape(len(rows), space.num_genes)
    for g in X:
        space.validate(g)
    return X


def check_told(genotypes, pending) -> np.ndarray:
    """`genotypes` as the int array `tell` works on; anything but the last `ask`'s is a ValueError."""
    X = np.asarray(genotypes, np.int64)
    if pending is None or X.shape != pending.shape or not np.array_equal(X, pending):
        raise ValueError("tell() must get exactly the genotypes of the last ask()")
    return X


class SearchAlgorithm(abc.ABC):
    """ask() -> genotypes; tell(genotypes, objectives); resumable through a JSON state.

    What every algorithm here keeps: the space, the seeds repaired into it (`initial`), its
    seeded generator, the batch asked and not yet told (`pending`), every network asked
    (`seen`, canonical keys) and the generations told; `state_dict`/`load_state_dict` write and
    read them with `common_state`/`load_common_state`."""

    name = "base"

    def __init__(self, space, seed: int, initial=()):
        self.space = space
        self.initial = [space.repair(g) for g in initial]
        self.rng = np.random.default_rng(seed)
        self.pending: np.ndarray | None = None
        self.seen: set[tuple[int, ...]] = set()
        self._generation = 0

    @property
    def generation(self) -> int:
        """How many batches have been told."""
        return self._generation

    def common_state(self) -> dict:
        """The shared part of `state_dict` (JSON-serialisable)."""
        return {"algorithm": self.name, "generation": self._generation, "rng": rng_state(self.rng),
                "pending": None if self.pending is None else self.pending.tolist(),
                "seen": sorted(list(k) for k in self.seen)}

    def load_common_state(self, state: dict) -> None:
        """Restores `common_state`'s part (a ValueError for another algorithm's state)."""
        self.check_state(state)
        self._generation = state["generation"]
        self.rng = rng_from_state(state["rng"])
        self.pending = None if state["pending"] is None else valid_genotypes(self.space, state["pending"])
        self.seen = {tuple(k) for k in state["seen"]}

    @abc.abstractmethod
    def ask(self) -> np.ndarray:
        """A batch of genotypes (n x genes) to evaluate next."""

    @abc.abstractmethod
    def tell(self, genotypes, objectives) -> None:
        """Their objectives (n x m, minimised), in the order `ask` gave them."""

    @abc.abstractmethod
    def state_dict(self) -> dict:
        """Everything needed to continue exactly where it is (JSON-serialisable)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Continues from a `state_dict` (of this algorithm: another one's is a ValueError)."""

    def check_state(self, state: dict) -> None:
        """A ValueError unless `state` was written by this algorithm."""
        if state.get("algorithm") != self.name:
            raise ValueError(f"state is for {state.get('algorithm')!r}, not {self.name!r}")
