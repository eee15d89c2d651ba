"""modulenet-jax: ModuleNet (knowledge-inherited neural architecture search) in JAX.

Trained CNNs are cut into modules that keep their weights (`KnowledgeBase`), new networks
are assembled from them (`SearchSpace`, or `MixedSpace` across model families;
`Architecture`), scored without training their
convolutions (a `Protocol`, driven per module by `Evaluator` or fused over a population by
`PopulationEvaluator`), and searched with NSGA-II (`run_all` from a config: `load_config`;
the pieces in `modulenet_jax.search`). Run folders are read back with `load_run`.
On a CPU, call `modulenet_jax.cpu_runtime.configure()` before JAX runs anything.

The names below load their module when first used (PEP 562), so that importing one part (say
`modulenet_jax.protocol` in a benchmark on a machine without ml_collections or pymoo) does not
import every other part and its dependencies.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_WHERE = {
    "Architecture": "space", "Dataset": "data", "Evaluation": "evaluate", "EvaluationError": "protocol",
    "Evaluator": "evaluate", "FittedNetwork": "protocol", "GenotypeError": "space", "KnowledgeBase": "knowledge",
    "MixedSpace": "mixed_space", "ModuleRecord": "knowledge", "PopulationEvaluator": "population",
    "Progress": "progress", "Protocol": "protocol", "RichProgress": "progress", "Run": "search.runner",
    "SearchSpace": "space", "Split": "data", "UserError": "errors", "evaluate_published": "evaluate",
    "fit_split": "data", "hypervolume": "runs", "load_config": "config", "load_dataset": "data", "load_run": "runs",
    "protocol_split": "data", "run_all": "search.runner",
}
__all__ = ["Architecture", "Dataset", "Evaluation", "EvaluationError", "Evaluator", "FittedNetwork", "GenotypeError",
           "KnowledgeBase", "MixedSpace", "ModuleRecord", "PopulationEvaluator", "Progress", "Protocol", "RichProgress",
           "Run", "SearchSpace", "Split", "UserError", "evaluate_published", "fit_split", "hypervolume", "load_config",
           "load_dataset", "load_run", "protocol_split", "run_all", "zoo"]

if TYPE_CHECKING:
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


def __getattr__(name: str):
    if name == "zoo":
        return importlib.import_module("modulenet_jax.zoo")
    if name not in _WHERE:
        raise AttributeError(f"module 'modulenet_jax' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modulenet_jax.{_WHERE[name]}"), name)


def __dir__():
    return sorted([*globals(), *__all__])
