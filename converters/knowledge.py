"""Building a knowledge base straight from PyTorch checkpoints (converted on the way)."""

from __future__ import annotations

from pathlib import Path

from . import cifar_resnet, torchvision_models
from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.pretrained import fetch, get_pretrained
from modulenet_jax.progress import NO_PROGRESS, Progress
from modulenet_jax.zoo import get_model

CONVERTERS = {"cifar_resnet": cifar_resnet.convert_file,
              **{family: torchvision_models.convert_file for family in torchvision_models.FAMILIES}}


def convert_checkpoint(path, model_name: str | None = None):
    """`(model_name, params)` of a checkpoint, by the converter of the model's family."""
    family = "cifar_resnet" if model_name is None else get_model(model_name).family
    if family not in CONVERTERS:
        raise UserError(f"no converter for {model_name!r} (family {family}); families with one: "
                        f"{', '.join(CONVERTERS)}")
    return CONVERTERS[family](path, model_name)


def build_from_pretrained(sources, weights_dirs=(), progress: Progress = NO_PROGRESS) -> KnowledgeBase:
    """A knowledge base of known pretrained models, found in `weights_dirs` or downloaded; each
    source records the classes its checkpoint was trained on."""
    models = []
    with progress.task("converting checkpoints", len(sources), "sources") as advance:
        for name in sources:
            path = fetch(name, weights_dirs)
            model_name, params = convert_checkpoint(path, get_pretrained(name).model)
            models.append((name, model_name, params, Path(path).name))
            advance()
    return KnowledgeBase.build(models, classes={name: get_pretrained(name).classes for name in sources},
                               progress=progress)


def build_from_checkpoints(paths, progress: Progress = NO_PROGRESS) -> KnowledgeBase:
    """A knowledge base of checkpoint files; each source is named after its model."""
    models = []
    with progress.task("converting checkpoints", len(paths), "files") as advance:
        for path in paths:
            model_name, params = convert_checkpoint(path)
            models.append((model_name, model_name, params, Path(path).name))
            advance()
    return KnowledgeBase.build(models, progress=progress)


def build_from_torchvision(sources, weights: str = "DEFAULT", input_size: int | None = None,
                           seed: int | None = None, weights_dirs=(), progress: Progress = NO_PROGRESS) -> KnowledgeBase:
    """A knowledge base of torchvision models (`tv_*` zoo names), each source named after its
    model. `weights`: a torchvision weights name (`DEFAULT`, `IMAGENET1K_V1`, ...) fetched by
    torchvision's own mechanism unless the file is in `weights_dirs`, or `random`
    (torchvision's initialisation under `torch.manual_seed(seed + i)` for the i-th source; `seed`
    is required then).
    `input_size` is the image size the records' resolutions and FLOPs are computed for."""
    models = []
    with progress.task("converting torchvision models", len(sources), "models") as advance:
        for i, name in enumerate(sources):
            params, label = torchvision_models.load_params(name, weights, None if seed is None else seed + i,
                                                           weights_dirs)
            models.append((name, name, params, label))
            advance()
    return KnowledgeBase.build(models, input_size, progress=progress)
