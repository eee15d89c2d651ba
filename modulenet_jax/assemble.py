"""Stitching layers and assembled networks: an architecture's modules applied in order.

A stitch is a 1x1 convolution with bias placed at a junction. It is initialised by least
squares: A = the assembled network's activations there, B = the input the next module
received inside its own source model for the same images, M = A^+ B with a ridge term
(the centred, bias-unpenalised form), as Stitchable Neural Networks initialise theirs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.registry import ModuleSpec, get_op


def fit_linear_map(a, b, ridge: float):
    """Ridge least squares `b ~ a @ kernel + bias` over all leading axes, in float32.

    `ridge` is relative: the penalty is `ridge * trace(cov(a)) / dim(a)`, so it does not
    depend on the activations' scale. Returns `{"kernel": (Ca, Cb), "bias": (Cb,)}`.
    """
    a = a.reshape(-1, a.shape[-1]).astype(jnp.float32)
    b = b.reshape(-1, b.shape[-1]).astype(jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    mean_a, mean_b = jnp.mean(a, axis=0), jnp.mean(b, axis=0)
    ac, bc = a - mean_a, b - mean_b
    gram = jnp.dot(ac.T, ac, precision=hi)
    cross = jnp.dot(ac.T, bc, precision=hi)
    lam = ridge * jnp.trace(gram) / a.shape[1] + 1e-12
    kernel = jnp.linalg.solve(gram + lam * jnp.eye(a.shape[1], dtype=gram.dtype), cross)
    bias = mean_b - jnp.dot(mean_a, kernel, precision=hi)
    return {"kernel": kernel, "bias": bias}


fit_stitch = jax.jit(fit_linear_map)


def apply_stitch(params, x):
    """The 1x1 convolution (with bias) of a stitch, on NHWC activations."""
    return layers.linear(x, params)


def stitch_cost(in_channels: int, out_channels: int, resolution: int) -> tuple[int, int]:
    """(parameters, FLOPs) of a 1x1 stitch at a given spatial resolution."""
    params = in_channels * out_channels + out_channels
    return params, 2 * resolution * resolution * in_channels * out_channels


@functools.partial(jax.jit, static_argnames=("op", "static", "calibrate"))
def _run(op: str, static: tuple, params, stitch, x, calibrate: bool):
    if stitch is not None:
        x = apply_stitch(stitch, x)
    return get_op(op)(params, x, calibrate=calibrate, **dict(static))


def run_module(spec: ModuleSpec, params, x, stitch=None, calibrate: bool = False):
    """(Stitch, then) one module, as one compiled call cached by op and static config only,
    so every block of the same shape shares a program whatever model it came from."""
    return _run(spec.op, spec.static, params, stitch, x, calibrate)


@dataclasses.dataclass(frozen=True)
class FittedNetwork:
    """An architecture with everything the protocol fitted: per-module params (BN statistics
    recalibrated or as published), stitches (None where there is no junction) and the head;
    `input_size` is the size images are resized to first (None: kept as they are)."""

    specs: tuple[ModuleSpec, ...]
    params: tuple[Any, ...]
    stitches: tuple[Any, ...]
    head: Any
    mean: Any
    std: Any
    input_size: int | None = None

    def features(self, images, dtype=jnp.float32):
        """Pooled features of uint8 images, module by module."""
        x = preprocess(images, self.mean, self.std, dtype, self.input_size)
        for spec, p, st in zip(self.specs, self.params, self.stitches):
            x, _ = run_module(spec, p, x, st)
        return _pool(x)

    def logits(self, images, dtype=jnp.float32):
        return _head(self.head, self.features(images, dtype))


@jax.jit
def _pool(x):
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@jax.jit
def _head(head, features):
    return jnp.dot(features, head["kernel"], precision=jax.lax.Precision.HIGHEST) + head["bias"]


@functools.partial(jax.jit, static_argnames=("dtype", "size"))
def preprocess(images, mean, std, dtype=jnp.float32, size=None):
    """uint8 NHWC -> normalised floats: (x / 255 - mean) / std, as torchvision does it; with
    `size`, then resized bilinearly to size x size (e.g. 32-px CIFAR images for models
    trained at 224 px). Without it the images keep their size."""
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="bilinear")
    return x.astype(dtype)
