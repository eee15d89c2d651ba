"""Fitted modules of a group of genotypes in the grouped layout: activations `[batch, h, w, P·C]`,
genotype p's channels at `[p·C, (p+1)·C)`, from one convolution to the next.

vmap runs a convolution over P genotypes as one grouped convolution on exactly this layout, but
gives every other op (bias, ReLU, residual add, masks, the slots' scan and conditionals) the
genotype-major `[P, batch, h, w, C]`: each convolution of the vmapped program sits between two
transposes (on an H200, the fusions holding them took a fifth of W1's bf16 time). Here every
op is written for the grouped layout: the same grouped convolutions, no transpose between
them. Each op gives, genotype by genotype, exactly what its registered op gives on one genotype
(`tests/test_population.py`); params come stacked over the group, in their inference form
(BatchNorm folded). Ops with a grouped form: `GROUPED_OPS` (the CIFAR ResNets so far).
"""

from __future__ import annotations

import jax.numpy as jnp

from modulenet_jax.zoo import layers


def to_grouped(x):
    """`[P, batch, h, w, C]` -> `[batch, h, w, P·C]`."""
    return jnp.moveaxis(x, 0, 3).reshape(x.shape[1:4] + (-1,))


def per_genotype(x, groups: int):
    """`[batch, h, w, P·C]` viewed as `[batch, h, w, P, C]`."""
    return x.reshape(x.shape[:-1] + (groups, -1))


def where_genotype(mask, a, b, groups: int):
    """`a` for the genotypes where `mask` (`[P]`) holds, `b` elsewhere."""
    return jnp.where(mask[:, None], per_genotype(a, groups), per_genotype(b, groups)).reshape(a.shape)


def conv(params, x, groups: int, stride: int = 1, padding: int = 1):
    """Every genotype's folded convolution (kernel `[P, k, k, C, O]`, bias `[P, O]`) as one
    grouped call (`zoo.layers.conv`)."""
    kernel = params["kernel"]
    kernel = jnp.moveaxis(kernel, 0, 3).reshape(kernel.shape[1:4] + (groups * kernel.shape[4],))
    return layers.conv({"kernel": kernel, "bias": params["bias"].reshape(-1)}, x, stride=stride, padding=padding,
                       groups=groups)


def linear(params, x, groups: int):
    """Every genotype's `layers.linear` (a stitch: kernel `[P, C, D]`, bias `[P, D]`) over the
    channels, as one batched product in the layout (`layers.grouped_linear`)."""
    y = layers.grouped_linear(per_genotype(x, groups), params)
    return y.reshape(y.shape[:3] + (-1,))


def stitched(stitch, x, junction, groups: int):
    """`assemble.stitched` per genotype: `x` through its stitch where `junction` (`[P]`, or a
    Python bool) holds."""
    if stitch is None or junction is False:
        return x
    y = linear(stitch, x, groups)
    return y if junction is True else where_genotype(junction, y, x, groups)


def cifar_stem(params, x, groups: int):
    """`cifar_resnet.stem`, folded."""
    return layers.relu(conv(params["conv"], x, groups))


def cifar_block(params, x, groups: int, stride: int = 1, pad_channels: int = 0):
    """`cifar_resnet.basic_block`, folded: the option-A shortcut pads each genotype's channels,
    not the ends of the whole axis."""
    h = layers.relu(conv(params["conv1"], x, groups, stride))
    h = conv(params["conv2"], h, groups)
    shortcut = x[:, ::stride, ::stride, :] if stride > 1 else x
    if pad_channels:
        shortcut = jnp.pad(per_genotype(shortcut, groups),
                           ((0, 0), (0, 0), (0, 0), (0, 0), (pad_channels, pad_channels)))
        shortcut = shortcut.reshape(shortcut.shape[:3] + (-1,))
    return layers.relu(h + shortcut)


GROUPED_OPS = {"cifar_resnet.stem": cifar_stem, "cifar_resnet.basic_block": cifar_block}


def missing(ops) -> list[str]:
    """The op names among `ops` (`(name, static)` pairs) without a grouped form."""
    return sorted({name for name, _ in ops} - set(GROUPED_OPS))


def apply_fitted(op: tuple, fit, x, groups: int, junction=True, active=None):
    """`protocol.apply_fitted` for the group: stitch (at each genotype's junction), module,
    and where `active` (`[P]`) is False the input passed through."""
    y = GROUPED_OPS[op[0]](fit.params, stitched(fit.stitch, x, junction, groups), groups, **dict(op[1]))
    return y if active is None else where_genotype(active, y, x, groups)
