"""modulenet-jax: ModuleNet (knowledge-inherited neural architecture search) in JAX.

Trained CNNs are cut into modules that keep their weights (`KnowledgeBase`), new networks
are assembled from them (`SearchSpace`, or `MixedSpace` across model families;
`Architecture`), scored without training their
convolutions (a `Protocol`, driven per module by `Evaluator` or fused over a population by
`PopulationEvaluator`), and searched with NSGA-II (`run_all` from a config: `load_config`;
the pieces in `modulenet_jax.search`). Run folders are read back with `load_run`.
On a CPU, call `modulenet_jax.cpu_runtime.configure()` before JAX runs anything.
"""

from modulenet_jax import zoo
from modulenet_jax.config import load_config
from modulenet_jax.data import Dataset, Split, fit_split, load_dataset, protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import Evaluation, Evaluator, evaluate_published
from modulenet_jax.knowledge import KnowledgeBase, ModuleRecord
from modulenet_jax.mixed_space import MixedSpace
from modulenet_jax.population import PopulationEvaluator
from modulenet_jax.progress import Progress, RichProgress
from modulenet_jax.protocol import EvaluationError, FittedNetwork, Protocol
from modulenet_jax.runs import hypervolume, load_run
from modulenet_jax.search.runner import Run, run_all
from modulenet_jax.space import Architecture, GenotypeError, SearchSpace

__version__ = "0.1.0"

__all__ = ["Architecture", "Dataset", "Evaluation", "EvaluationError", "Evaluator", "FittedNetwork", "GenotypeError",
           "KnowledgeBase", "MixedSpace", "ModuleRecord", "PopulationEvaluator", "Progress", "Protocol", "RichProgress",
           "Run", "SearchSpace", "Split", "UserError", "evaluate_published", "fit_split", "hypervolume", "load_config",
           "load_dataset", "load_run", "protocol_split", "run_all", "zoo"]
