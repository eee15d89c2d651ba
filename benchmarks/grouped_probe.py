"""A speed probe of the grouped layout: the W1 networks of a chunk with their genotypes inside
the channel axis, `[batch, h, w, P·C]`, from the stem to the pooled features.

vmap turns a convolution over P genotypes into one grouped convolution on exactly that layout,
but gives every other op (bias, ReLU, residual add, the slots' scan and conditionals) the
genotype-major `[P, batch, h, w, C]`: each convolution of the fused program sits between two
transposes (the H200 profile of W1 bf16: a fifth of the device time in the fusions that hold
them). Here the ops are `modulenet_jax.grouped`'s, written for the grouped layout, so no transpose
is left between the convolutions. Like `throughput`'s naive probe it is a speed reference, not
the protocol: every slot in its inference form (BatchNorm folded), no stitch, no mask, no
conditional; it counts the naive probe's predictions (`tests/test_bench.py`). With `width`
(`jax-probe-grouped-wW`), neighbouring genotypes' convolutions are packed into groups of up to W
channels, their kernels block-diagonal (`layers.packing`: as many times the multiplications, in
wider groups; 16 channels per genotype in the first stage may be too narrow a group for the
tensor cores). The fused
program's own grouped-layout scoring (`population.score_group`) adds what the protocol needs
(stitches, masks, the chunk's conditionals): the two side by side say what those cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from modulenet_jax import grouped, protocol as core
from modulenet_jax.population import group_fits, group_head_logits, group_inputs, walk


def grouped_probe_chunk(layout, protocol, banks, idx, fits, heads, images, labels, valid, width=0):
    """(correct predictions, all logits finite) per genotype of a chunk of W1 networks
    (`PopulationEvaluator.stacked_slots` indices `idx`, `published_fits`-shaped `fits` and
    stacked `heads`), scored batch by batch in the grouped layout (`modulenet_jax.grouped`),
    convolution groups packed up to `width` channels (`layers.packing`)."""
    if grouped.missing(layout.ops):
        raise ValueError(f"the grouped probe has no grouped form of {grouped.missing(layout.ops)}")
    P = idx.shape[0]
    mean, std = banks["mean"][idx[:, 0]], banks["std"][idx[:, 0]]
    folded = group_fits(layout, fits)

    def visit(op, slot, fit, x):
        return grouped.apply_fitted(op, fit, x, P, junction=False, width=width), None

    def batch(b):
        x, y, v = b
        x, _ = walk(layout, folded, group_inputs(protocol, x, mean, std), visit)
        return jax.vmap(core.score_logits, in_axes=(0, None, None))(group_head_logits(heads, x), y, v)

    with core.numerics(protocol):
        hits, finite = jax.lax.map(batch, (images, labels, valid))
    return jnp.sum(hits, axis=0), jnp.all(finite, axis=0)
