"""A speed probe for the fused program's next layout: the W1 networks of a chunk with their
genotypes inside the channel axis, `[batch, h, w, P·C]`, from the stem to the pooled features.

vmap turns a convolution over P genotypes into one grouped convolution on exactly that layout,
but gives every other op (bias, ReLU, residual add, the slots' scan and conditionals) the
genotype-major `[P, batch, h, w, C]`: each convolution of the fused program sits between two
transposes (the H200 profile of W1 bf16: a fifth of the device time in the fusions that hold
them). Here each convolution is the same grouped call (`zoo.layers.conv`, `groups=P`), and the
ops between convolutions are written for the grouped layout, so no transpose is left between
them. Like `throughput`'s naive probe it is a speed reference, not the protocol: every slot in
its inference form (BatchNorm folded), no stitch, no mask, no conditional; it counts the naive
probe's predictions (`tests/test_bench.py`). CIFAR ResNet ops only (what W1 is made of).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modulenet_jax import protocol as core
from modulenet_jax.population import inference_fits, walk
from modulenet_jax.zoo import layers

OPS = ("cifar_resnet.stem", "cifar_resnet.basic_block")


def grouped_conv(params, x, groups: int, stride: int = 1):
    """A folded 3×3 convolution of every genotype at once: `params` stacked over the genotypes
    (kernel `[P, 3, 3, C, O]`, bias `[P, O]`) on `x` `[batch, h, w, P·C]`, one grouped call."""
    kernel = params["kernel"]
    kernel = jnp.moveaxis(kernel, 0, 3).reshape(kernel.shape[1:4] + (groups * kernel.shape[4],))
    return layers.conv({"kernel": kernel, "bias": params["bias"].reshape(-1)}, x, stride=stride, padding=1,
                       groups=groups)


def grouped_block(params, x, groups: int, stride: int, pad_channels: int):
    """`cifar_resnet.basic_block` (folded) of every genotype at once, in the grouped layout: the
    option-A shortcut pads each genotype's channels, not the ends of the whole axis."""
    h = layers.relu(grouped_conv(params["conv1"], x, groups, stride))
    h = grouped_conv(params["conv2"], h, groups)
    shortcut = x[:, ::stride, ::stride, :] if stride > 1 else x
    if pad_channels:
        b, hh, ww, c = shortcut.shape
        shortcut = jnp.pad(shortcut.reshape(b, hh, ww, groups, c // groups),
                           ((0, 0), (0, 0), (0, 0), (0, 0), (pad_channels, pad_channels))).reshape(b, hh, ww, -1)
    return layers.relu(h + shortcut)


def grouped_probe_chunk(layout, protocol, banks, idx, fits, heads, images, labels, valid):
    """(correct predictions, all logits finite) per genotype of a chunk of W1 networks
    (`PopulationEvaluator.stacked_slots` indices `idx`, `published_fits`-shaped `fits` and
    stacked `heads`), scored batch by batch in the grouped layout."""
    ops = {layout.stem_op[0], *(op[0] for op in layout.first_ops), *(op[0] for op in layout.other_ops if op)}
    if not ops <= set(OPS):
        raise ValueError(f"the grouped probe runs CIFAR ResNet blocks only, not {sorted(ops - set(OPS))}")
    P = idx.shape[0]
    mean, std = banks["mean"][idx[:, 0]], banks["std"][idx[:, 0]]
    folded = jax.vmap(lambda f: inference_fits(layout, f))(fits)
    # walk scans a stage's other slots over the leading axis: slots first, then genotypes
    folded["stages"] = [{k: (jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), v) if k == "other" else v)
                         for k, v in stage.items()} for stage in folded["stages"]]

    def visit(op, slot, fit, x):
        static = dict(op[1])
        if op[0] == "cifar_resnet.stem":
            return layers.relu(grouped_conv(fit.params["conv"], x, P)), None
        return grouped_block(fit.params, x, P, static["stride"], static["pad_channels"]), None

    def batch(b):
        x, y, v = b
        x = jax.vmap(lambda m, s: core.prepare(protocol, x, m, s))(mean, std)  # [P, batch, h, w, 3]
        x = jnp.moveaxis(x, 0, 3).reshape(x.shape[1:4] + (-1,))
        x, _ = walk(layout, folded, x, visit)
        features = core.pool(x).reshape(x.shape[0], P, -1).swapaxes(0, 1)  # [P, batch, C]
        return jax.vmap(lambda h, f: core.score_logits(core.head_logits(h, f), y, v))(heads, features)

    with core.numerics(protocol):
        hits, finite = jax.lax.map(batch, (images, labels, valid))
    return jnp.sum(hits, axis=0), jnp.all(finite, axis=0)
