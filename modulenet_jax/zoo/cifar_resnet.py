"""CIFAR ResNets (He et al. 2016, the 6n+2 variant with option-A shortcuts).

Matches the public akamaster/pytorch_resnet_cifar10 models: a 3x3 conv(3->16)+BN+ReLU stem,
three stages of n BasicBlocks with 16, 32 and 64 channels (the first block of stages 2 and 3
has stride 2 and a parameter-free shortcut that takes every second pixel and zero-pads the
channels equally on both sides), global average pooling and a linear classifier.
Modules: `stem`, `stage{s}.block{i}`, `head`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.registry import ModelDef, ModuleSpec, register_model, register_op

BN_EPS = 1e-5
WIDTHS = (16, 32, 64)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Both ops also run `groups` networks at once, each in its own block of channels (`grouped.py`:
# the fused program's grouped layout), with params in that form (`grouped.grouped_params`).

@register_op("cifar_resnet.stem", folds=(("conv", "bn"),))
def stem(params, x, calibrate=False, *, eps=BN_EPS, groups=1):
    h, bn = layers.conv_bn(params, "conv", "bn", x, eps, calibrate, stride=1, padding=1, groups=groups)
    return layers.relu(h), {**params, **bn}


@register_op("cifar_resnet.basic_block", folds=(("conv1", "bn1"), ("conv2", "bn2")))
def basic_block(params, x, calibrate=False, *, stride=1, pad_channels=0, eps=BN_EPS, groups=1):
    """BasicBlock; `pad_channels` > 0 means the option-A shortcut (subsample, zero-pad each
    group's channels on both sides)."""
    h, bn1 = layers.conv_bn(params, "conv1", "bn1", x, eps, calibrate, stride=stride, padding=1, groups=groups)
    h = layers.relu(h)
    h, bn2 = layers.conv_bn(params, "conv2", "bn2", h, eps, calibrate, stride=1, padding=1, groups=groups)
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


def _conv_init(key, k, cin, cout):
    std = (2.0 / (k * k * cout)) ** 0.5
    return {"kernel": std * jax.random.normal(key, (k, k, cin, cout), jnp.float32)}


def _bn_init(key, c):
    """Random affine parameters and running statistics, so BN is really exercised."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "scale": 1.0 + 0.1 * jax.random.normal(k1, (c,)),
        "bias": 0.1 * jax.random.normal(k2, (c,)),
        "mean": 0.1 * jax.random.normal(k3, (c,)),
        "var": jax.random.uniform(k4, (c,), minval=0.5, maxval=1.5),
    }


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


def _init(specs, num_classes, key):
    params = {}
    keys = jax.random.split(key, len(specs))
    for spec, k in zip(specs, keys):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        if spec.kind == "stem":
            params[spec.name] = {"conv": _conv_init(k1, 3, 3, spec.out_channels),
                                 "bn": _bn_init(k2, spec.out_channels)}
        elif spec.kind == "block":
            params[spec.name] = {
                "conv1": _conv_init(k1, 3, spec.in_channels, spec.out_channels),
                "bn1": _bn_init(k2, spec.out_channels),
                "conv2": _conv_init(k3, 3, spec.out_channels, spec.out_channels),
                "bn2": _bn_init(k4, spec.out_channels),
            }
        else:
            bound = 1.0 / spec.in_channels ** 0.5
            params[spec.name] = {"fc": {
                "kernel": jax.random.uniform(k1, (spec.in_channels, num_classes), minval=-bound, maxval=bound),
                "bias": jax.random.uniform(k2, (num_classes,), minval=-bound, maxval=bound)}}
    return params


def cifar_resnet(depth: int, num_classes: int = 10) -> ModelDef:
    """The CIFAR ResNet of a given depth (6n+2)."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    specs = _specs(depth, num_classes)
    return ModelDef(
        name=f"cifar_resnet{depth}", family="cifar_resnet", modules=specs,
        init=functools.partial(_init, specs, num_classes),
        input_size=32, num_classes=num_classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register_model(cifar_resnet(_depth))
