"""Building a knowledge base straight from PyTorch checkpoints (converted on the way)."""

from __future__ import annotations

from pathlib import Path

from converters import cifar_resnet
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.pretrained import fetch, get_pretrained
from modulenet_jax.zoo import get_model

CONVERTERS = {"cifar_resnet": cifar_resnet.convert_file}


def convert_checkpoint(path, model_name: str | None = None):
    """`(model_name, params)` of a checkpoint, by the converter of the model's family."""
    family = "cifar_resnet" if model_name is None else get_model(model_name).family
    if family not in CONVERTERS:
        raise KeyError(f"no converter for {model_name!r}; families: {', '.join(CONVERTERS)}")
    return CONVERTERS[family](path, model_name)


def build_from_pretrained(sources, weights_dirs=()) -> KnowledgeBase:
    """A knowledge base of known pretrained models, found in `weights_dirs` or downloaded."""
    models = []
    for name in sources:
        path = fetch(name, weights_dirs)
        model_name, params = convert_checkpoint(path, get_pretrained(name).model)
        models.append((name, model_name, params, Path(path).name))
    return KnowledgeBase.build(models)


def build_from_checkpoints(paths, names=None) -> KnowledgeBase:
    """A knowledge base of checkpoint files; each source is named after its model unless `names`."""
    models = []
    for i, path in enumerate(paths):
        model_name, params = convert_checkpoint(path)
        models.append((names[i] if names else model_name, model_name, params, Path(path).name))
    return KnowledgeBase.build(models)
