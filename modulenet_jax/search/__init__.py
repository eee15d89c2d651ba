"""Multi-objective search over a space: NSGA-II and random search behind one ask/tell interface."""

from modulenet_jax.search.base import (FitnessError, SearchAlgorithm, crowding_distance, non_dominated_fronts,
                                       pareto_indices)
from modulenet_jax.search.nsga2 import NSGA2, survive
from modulenet_jax.search.random_search import RandomSearch

__all__ = ["FitnessError", "NSGA2", "RandomSearch", "SearchAlgorithm", "crowding_distance",
           "non_dominated_fronts", "pareto_indices", "survive"]
