"""CIFAR ResNets (He et al. 2016, the 6n+2 variant with option-A shortcuts).

Matches the public akamaster/pytorch_resnet_cifar10 models: a 3x3 conv(3->16)+BN+ReLU stem,
three stages of n BasicBlocks with 16, 32 and 64 channels (the first block of stages 2 and 3
has stride 2 and a parameter-free shortcut that takes every second pixel and zero-pads the
channels equally on both sides), global average pooling and a linear classifier.
Modules: `stem`, `stage{s}.block{i}`, `head`.
"""

from __future__ import annotations

import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import BN, Conv, Linear, make_model
from modulenet_jax.zoo.registry import ModelDef, ModuleSpec, register_model, register_op

BN_EPS = 1e-5
WIDTHS = (16, 32, 64)


# Both ops also run `groups` networks at once, each in its own block of channels (`grouped.py`:
# the fused program's grouped layout), with params in that form (`grouped.grouped_params`), their
# convolution groups packed up to `width` channels (`layers.packing`).

@register_op("cifar_resnet.stem", folds=(("conv", "bn"),))
def stem(params, x, calibrate=False, *, eps=BN_EPS, groups=1, width=0):
    h, bn = layers.conv_bn(params, "conv", "bn", x, eps, calibrate, stride=1, padding=1, groups=groups, width=width)
    return layers.relu(h), {**params, **bn}


@register_op("cifar_resnet.basic_block", folds=(("conv1", "bn1"), ("conv2", "bn2")), residual=("conv2", "bn2"))
def basic_block(params, x, calibrate=False, *, stride=1, pad_channels=0, eps=BN_EPS, groups=1, width=0):
    """BasicBlock; `pad_channels` > 0 means the option-A shortcut (subsample, zero-pad each
    group's channels on both sides)."""
    h, bn1 = layers.conv_bn(params, "conv1", "bn1", x, eps, calibrate, stride=stride, padding=1, groups=groups,
                            width=width)
    h = layers.relu(h)
    h, bn2 = layers.conv_bn(params, "conv2", "bn2", h, eps, calibrate, stride=1, padding=1, groups=groups,
                            width=width)
    shortcut = x
    if stride > 1:
        shortcut = shortcut[:, ::stride, ::stride, :]
    if pad_channels:
        lead = shortcut.shape[:-1]
        shortcut = jnp.pad(shortcut.reshape(lead + (groups, -1)),
                           ((0, 0),) * (len(lead) + 1) + ((pad_channels, pad_channels),)).reshape(lead + (-1,))
    return layers.relu(h + shortcut), {**params, **bn1, **bn2}


@register_op("cifar_resnet.head")
def head(params, x, calibrate=False):
    return layers.linear(layers.global_avg_pool(x), params["fc"]), params


def _specs(depth: int, num_classes: int) -> tuple[ModuleSpec, ...]:
    n = (depth - 2) // 6
    specs = [ModuleSpec("stem", "stem", "cifar_resnet.stem", 0, 0, 3, WIDTHS[0], 1, 1)]
    cin, reduction = WIDTHS[0], 1
    for s, width in enumerate(WIDTHS, start=1):
        for i in range(n):
            stride = 2 if (s > 1 and i == 0) else 1
            reduction *= stride
            pad = (width - cin) // 2
            static = (("pad_channels", pad), ("stride", stride))
            specs.append(ModuleSpec(f"stage{s}.block{i}", "block", "cifar_resnet.basic_block",
                                    s, i, cin, width, stride, reduction, static))
            cin = width
    specs.append(ModuleSpec("head", "head", "cifar_resnet.head", len(WIDTHS) + 1, 0,
                            cin, num_classes, 1, reduction))
    return tuple(specs)


def _layouts(specs) -> dict:
    """Each module's params as layer descriptors (`common.make_model`: one random draw for the
    whole model, He-normal kernels, randomised BatchNorm statistics so BN is really exercised)."""
    out = {}
    for spec in specs:
        c = spec.out_channels
        if spec.kind == "stem":
            out[spec.name] = {"conv": Conv(3, 3, c), "bn": BN(c)}
        elif spec.kind == "block":
            out[spec.name] = {"conv1": Conv(3, spec.in_channels, c), "bn1": BN(c), "conv2": Conv(3, c, c), "bn2": BN(c)}
        else:
            out[spec.name] = {"fc": Linear(spec.in_channels, c)}
    return out


def cifar_resnet(depth: int, num_classes: int = 10) -> ModelDef:
    """The CIFAR ResNet of a given depth (6n+2)."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    specs = _specs(depth, num_classes)
    return make_model(f"cifar_resnet{depth}", "cifar_resnet", specs, _layouts(specs), num_classes, input_size=32)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(cifar_resnet(_depth))
