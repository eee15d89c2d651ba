"""modulenet-jax: ModuleNet (knowledge-inherited neural architecture search) in JAX.

Trained CNNs are cut into modules that keep their weights (`KnowledgeBase`), new networks
are assembled from them (`SearchSpace`, or `MixedSpace` across model families;
`Architecture`), scored without training their
convolutions (a `Protocol`, driven per module by `Evaluator` or fused over a population by
`PopulationEvaluator`), and searched with NSGA-II (`search`).
"""

from modulenet_jax import zoo
from modulenet_jax.data import Dataset, Split, load_dataset, protocol_split
from modulenet_jax.evaluate import Evaluation, Evaluator, evaluate_published
from modulenet_jax.knowledge import KnowledgeBase, ModuleRecord
from modulenet_jax.mixed_space import MixedSpace
from modulenet_jax.population import PopulationEvaluator
from modulenet_jax.protocol import EvaluationError, FittedNetwork, Protocol
from modulenet_jax.space import Architecture, GenotypeError, SearchSpace

__version__ = "0.1.0"

__all__ = ["Architecture", "Dataset", "Evaluation", "EvaluationError", "Evaluator", "FittedNetwork", "GenotypeError",
           "KnowledgeBase", "MixedSpace", "ModuleRecord", "PopulationEvaluator", "Protocol", "SearchSpace", "Split",
           "evaluate_published", "load_dataset", "protocol_split", "zoo"]
