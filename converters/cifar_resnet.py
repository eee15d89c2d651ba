"""CIFAR ResNet checkpoints (akamaster/pytorch_resnet_cifar10) -> `cifar_resnet{depth}` params.

Renaming rules (after stripping `module.`):
  conv1.weight                      -> stem/conv/kernel            (OIHW -> HWIO)
  bn1.{weight,bias,running_*}       -> stem/bn/{scale,bias,mean,var}
  layer{s}.{i}.conv{j}.weight       -> stage{s}.block{i}/conv{j}/kernel
  layer{s}.{i}.bn{j}.*              -> stage{s}.block{i}/bn{j}/*
  linear.{weight,bias}              -> head/fc/{kernel (transposed), bias}
"""

from __future__ import annotations

import re

import numpy as np

from .common import (BN_FIELDS, ConversionError, conv_kernel, linear_kernel, load_state_dict, map_state_dict,
                     naming_the_held_model)

_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)$")


def _identity(x):
    return x


def rule(key: str):
    if key == "conv1.weight":
        return ("stem", "conv", "kernel"), conv_kernel
    if key.startswith("bn1.") and key[4:] in BN_FIELDS:
        return ("stem", "bn", BN_FIELDS[key[4:]]), _identity
    if key == "linear.weight":
        return ("head", "fc", "kernel"), linear_kernel
    if key == "linear.bias":
        return ("head", "fc", "bias"), _identity
    m = _BLOCK.match(key)
    if m:
        stage, index, layer, j, field = m.groups()
        module = f"stage{stage}.block{index}"
        if layer == "conv" and field == "weight":
            return (module, f"conv{j}", "kernel"), conv_kernel
        if layer == "bn" and field in BN_FIELDS:
            return (module, f"bn{j}", BN_FIELDS[field]), _identity
    return None


def infer_depth(state_dict: dict[str, np.ndarray]) -> int:
    """Depth 6n+2 from the number of blocks in `layer1`."""
    blocks = {int(m.group(2)) for k in state_dict if (m := _BLOCK.match(k)) and m.group(1) == "1"}
    if not blocks:
        raise ConversionError("not a CIFAR ResNet state_dict (no layer1.* keys); for another model give --model")
    return 6 * len(blocks) + 2


def convert(state_dict: dict[str, np.ndarray], model_name: str | None = None):
    """Returns `(model_name, params)`; the name is inferred from the block count if omitted.
    A checkpoint of another depth than the name given is refused naming the model it holds."""
    if model_name is None:
        model_name = f"cifar_resnet{infer_depth(state_dict)}"
    try:
        return model_name, map_state_dict(state_dict, model_name, rule)
    except ConversionError as e:
        raise naming_the_held_model(e, state_dict, model_name,
                                    lambda sd, name: map_state_dict(sd, name, rule)) from None


def convert_file(path, model_name: str | None = None):
    """`(model_name, params)` of a checkpoint file; what does not fit names the file."""
    try:
        return convert(load_state_dict(path), model_name)
    except ConversionError as e:
        raise ConversionError(e if str(e).startswith(str(path)) else f"{path}: {e}") from None
