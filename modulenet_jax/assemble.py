"""Stitching layers and assembled networks: an architecture's modules applied in order.

A stitch is a 1x1 convolution with bias placed at a junction. It is initialised by least
squares: A = the assembled network's activations there, B = the input the next module
received inside its own source model for the same images, M = A^+ B with a ridge term
(the centred, bias-unpenalised form), as Stitchable Neural Networks initialise theirs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.registry import ModuleSpec, op_of, run_op


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


def apply_stitch(params, x):
    """The 1x1 convolution (with bias) of a stitch, on NHWC activations."""
    return layers.pointwise(x, params)


def stitch_cost(in_channels: int, out_channels: int, resolution: int) -> tuple[int, int]:
    """(parameters, FLOPs) of a 1x1 stitch at a given spatial resolution."""
    params = in_channels * out_channels + out_channels
    return params, 2 * resolution * resolution * in_channels * out_channels


def stitched(stitch, x, junction=True):
    """`x` through a stitch where there is one: `junction` is True/False when known while
    tracing, or a boolean array (one per genotype inside the fused population program): there a
    genotype without a junction goes through the identity stitch where that gives `x` exactly
    (`identity_where_unused`), else a select picks `x`."""
    if stitch is None or junction is False:
        return x
    if junction is True:
        return apply_stitch(stitch, x)
    used = identity_where_unused(stitch, junction, x.dtype)
    return jnp.where(junction, apply_stitch(stitch, x), x) if used is None else apply_stitch(used, x)


def identity_where_unused(stitch, junction, dtype):
    """`stitch` where `junction` holds and the identity stitch (kernel I, bias 0) elsewhere,
    `junction` holding one flag per leading index of the stitch's params (none inside a vmap,
    a group's genotypes in the grouped layout): the stitch a slot applies to every genotype
    instead of a select over the activations after it (on a GPU a memory pass as long as the
    stitch's own). None where the identity would not return the input exactly: a non-square
    stitch, or numerics that round the input (TF32: `layers.exact_identity`)."""
    c_in, c_out = stitch["kernel"].shape[-2:]
    if c_in != c_out or not layers.exact_identity(dtype):
        return None
    identity = {"kernel": jnp.eye(c_in, dtype=stitch["kernel"].dtype),
                "bias": jnp.zeros((c_out,), stitch["bias"].dtype)}

    def one(a, i):
        return jnp.where(jnp.reshape(junction, jnp.shape(junction) + (1,) * (a.ndim - jnp.ndim(junction))), a, i)

    return jax.tree_util.tree_map(one, stitch, identity)


_run = jax.jit(run_op, static_argnames=("op", "calibrate"))


def run_module(spec: ModuleSpec, params, x):
    """One module, as one compiled call cached by op and static config only, so every block of
    the same shape shares a program whatever model it came from: `(y, params_used)`."""
    return _run(op_of(spec), params, x)


@jax.jit
def pool(x):
    """Global average pooling to the head's features, accumulated in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


@jax.jit
def head_logits(head, features):
    """A linear head `{"kernel", "bias"}` on pooled features, at full precision."""
    return jnp.dot(features, head["kernel"], precision=jax.lax.Precision.HIGHEST) + head["bias"]


@functools.partial(jax.jit, static_argnames=("dtype", "size"))
def preprocess(images, mean, std, dtype=jnp.float32, size=None):
    """uint8 NHWC -> normalised floats: (x / 255 - mean) / std, as torchvision does it; with
    `size`, then resized bilinearly to size x size (e.g. 32-px CIFAR images for models
    trained at 224 px). Without it the images keep their size.

    Computed as `x * (1 / (255 std)) - mean / std`: every per-pixel operation depends on the
    network's normalisation, so none is hoisted out of the fused program's loop over genotypes
    (`x / 255` was: the images are the same for all), and the one multiply-subtract pair is
    contracted into an FMA alike in every program (XLA:CPU contracts only within one loop;
    hoisting `x / 255` made the two drivers normalise the same image 1 ulp apart)."""
    x = images.astype(jnp.float32) * (1.0 / (255.0 * std)) - mean / std
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), method="bilinear")
    return x.astype(dtype)
