"""A group of genotypes' modules, fitted and scored in the grouped layout: activations
`[batch, h, w, P·C]`, genotype p's channels at `[p·C, (p+1)·C)`, from one convolution to the next.

vmap runs a convolution over P genotypes as one grouped convolution on exactly this layout, but
gives every other op (bias, ReLU, residual add, masks, the slots' scan and conditionals) the
genotype-major `[P, batch, h, w, C]`: each convolution of the vmapped program sits between two
transposes (on an H200, the fusions holding them took a fifth of W1's bf16 time). Here the
registered ops themselves run with `groups=P` (`GROUPED_OPS`: the CIFAR ResNets so far), on
params stacked over the group and reshaped for it (`grouped_params`), with per-genotype stitches
and masks around them: the same grouped convolutions, no transpose between them. Fitting needs
nothing more: BatchNorm statistics are per channel, so per genotype, and each stitch is solved on
its genotype's channels. Genotype by genotype they give what the op gives on one genotype, to
the last bit or the backend's summation order (`tests/test_grouped.py`), and the per-module
path's correct counts over the whole protocol (`tests/test_population.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from modulenet_jax import protocol as core
from modulenet_jax.assemble import identity_where_unused
from modulenet_jax.zoo import layers, run_op, zeroed_residual


def to_grouped(x):
    """`[P, batch, h, w, C]` -> `[batch, h, w, P·C]`."""
    return jnp.moveaxis(x, 0, 3).reshape(x.shape[1:4] + (-1,))


def per_genotype(x, groups: int):
    """`[batch, h, w, P·C]` viewed as `[batch, h, w, P, C]`."""
    return x.reshape(x.shape[:-1] + (groups, -1))


def where_genotype(mask, a, b, groups: int):
    """`a` for the genotypes where `mask` (`[P]`) holds, `b` elsewhere."""
    return jnp.where(mask[:, None], per_genotype(a, groups), per_genotype(b, groups)).reshape(a.shape)


def grouped_params(params):
    """Params stacked over P genotypes in the form an op run with `groups=P` takes: each
    convolution kernel `[P, k, k, C, O]` -> `[k, k, C, P·O]` (genotype p's output channels at
    `[p·O, (p+1)·O)`), each per-channel vector `[P, O]` -> `[P·O]`."""
    def one(a):
        if a.ndim == 5:
            return jnp.moveaxis(a, 0, 3).reshape(a.shape[1:4] + (-1,))
        if a.ndim == 2:
            return a.reshape(-1)
        raise ValueError(f"no grouped form of a stacked param of shape {a.shape}")

    return jax.tree_util.tree_map(one, params)


def stacked_params(params, groups: int):
    """The inverse of `grouped_params`: params of an op run with `groups` (what it returns as
    used: recalibrated statistics) stacked over the group again, `[P, ...]`."""
    def one(a):
        if a.ndim == 4:
            return jnp.moveaxis(a.reshape(a.shape[:3] + (groups, -1)), 3, 0)
        return a.reshape(groups, -1)

    return jax.tree_util.tree_map(one, params)


def stitched(stitch, x, junction, groups: int, width: int = 0):
    """`assemble.stitched` per genotype: `x` through its stitch where `junction` (`[P]`, or a
    Python bool) holds, the identity stitch elsewhere where that is exact (convolution groups
    packed up to `width` channels: `layers.packing`)."""
    if stitch is None or junction is False:
        return x
    if junction is True:
        return layers.grouped_pointwise(x, stitch, width)
    used = identity_where_unused(stitch, junction, x.dtype)
    if used is None:
        return where_genotype(junction, layers.grouped_pointwise(x, stitch, width), x, groups)
    return layers.grouped_pointwise(x, used, width)


# Registered ops whose code also runs `groups` networks at once in the grouped layout (each with
# a `groups` keyword, default 1: the one-network op is the same code).
GROUPED_OPS = frozenset({"cifar_resnet.stem", "cifar_resnet.basic_block"})


def missing(ops) -> list[str]:
    """The op names among `ops` (`(name, static)` pairs) without a grouped form."""
    return sorted({name for name, _ in ops} - set(GROUPED_OPS))


def run(op: tuple, params, x, groups: int, calibrate=False, width: int = 0):
    """The registered op itself run with `groups` (neighbouring genotypes' convolutions packed into
    groups of up to `width` channels: `layers.packing`) on params stacked over the group
    (`calibrate`: a bool, or one flag per genotype): `(y, params used, stacked)`."""
    name, static = op
    static = {**dict(static), "groups": groups, **({"width": width} if width > 1 else {})}
    y, used = run_op((name, tuple(sorted(static.items()))), grouped_params(params), x, calibrate)
    return y, stacked_params(used, groups)


def run_masked(op: tuple, params, x_in, x, groups: int, active=None, calibrate=False, width: int = 0):
    """`protocol.run_masked` for the group: `run` on `x_in`, `x` given back for the genotypes
    where `active` (`[P]`) is False, by the op's zeroed residual (each genotype's params) where
    it declares one, else by a select."""
    zeroed = None if active is None else jax.vmap(functools.partial(zeroed_residual, op[0]))(params, active)
    y, used = run(op, params if zeroed is None else zeroed, x_in, groups, calibrate, width)
    return (y if zeroed is not None or active is None else where_genotype(active, y, x, groups)), used


def fit_module(protocol: core.Protocol, op: tuple, params, x, target, junction, active=None, calibrate=False, *,
               groups: int, gate=None, width: int = 0):
    """`protocol.fit_module` for the group, in the layout: each genotype's stitch solved on its
    own channels towards its target (`target`: `[P, ...]`, under the fused program's `gate`),
    the op run with `groups` (its BatchNorm statistics are per channel, so each genotype's own;
    `width`: `run`), masks per genotype."""
    def make():
        solve = jax.vmap(functools.partial(core.solve_stitch, protocol), in_axes=(3, 0))
        stitch = solve(per_genotype(x, groups), target)
        if junction is not True:
            stitch = jax.vmap(core.unused_as_zeros)(stitch, junction, active)
        return stitched(stitch, x, junction, groups, width), stitch

    if protocol.stitch and junction is not False:
        x_in, stitch = core.gated(gate, make, lambda: (x, core.zeros_of(jax.eval_shape(make)[1])))
    else:
        x_in, stitch = x, None
    y, used = run_masked(op, params, x_in, x, groups, active, calibrate, width)
    return y, core.ModuleFit(used, stitch)


def apply_fitted(op: tuple, fit, x, groups: int, junction=True, active=None, *, gate=None, width: int = 0):
    """`protocol.apply_fitted` for the group (`x` a batch or a tuple of batches): stitch (at
    each genotype's junction, under the fused program's `gate`), the registered op itself run
    with `groups` (and `width`: `run`), and where `active` (`[P]`) is False the input passed through."""
    xs = x if isinstance(x, tuple) else (x,)
    xs_in = core.gated(gate, lambda: tuple(stitched(fit.stitch, b, junction, groups, width) for b in xs), lambda: xs)
    ys = tuple(run_masked(op, fit.params, b_in, b, groups, active, width=width)[0] for b_in, b in zip(xs_in, xs))
    return ys if isinstance(x, tuple) else ys[0]
