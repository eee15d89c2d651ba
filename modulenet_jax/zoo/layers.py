"""Pure layer functions with PyTorch semantics (NHWC activations, HWIO kernels).

Every function computes in the dtype of its input: float32 runs at full precision
(`Precision.HIGHEST`, so GPUs do not silently use TF32), bfloat16 multiplies in bf16 and
accumulates in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _precision(dtype) -> lax.Precision:
    return lax.Precision.HIGHEST if dtype == jnp.float32 else lax.Precision.DEFAULT


def conv2d(x, kernel, stride: int = 1, padding: int = 0, groups: int = 1):
    """2-D convolution with PyTorch's symmetric zero padding (never XLA "SAME")."""
    y = lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=_precision(x.dtype),
        preferred_element_type=jnp.float32,
    )
    return y.astype(x.dtype)


def linear(x, params):
    """`x @ kernel + bias` with a (in, out) kernel."""
    y = jnp.dot(x, params["kernel"].astype(x.dtype), precision=_precision(x.dtype),
                preferred_element_type=jnp.float32)
    if "bias" in params:
        y = y + params["bias"]
    return y.astype(x.dtype)


def batch_stats(x):
    """Per-channel mean and unbiased variance over every axis but the last, in float32.

    These are the statistics BatchNorm recalibration stores: the exact mean and the
    unbiased variance of the whole calibration set (what PyTorch's cumulative running
    average converges to), not an exponential moving average.
    """
    x = x.astype(jnp.float32)
    axes = tuple(range(x.ndim - 1))
    n = 1
    for a in axes:
        n *= x.shape[a]
    mean = jnp.mean(x, axis=axes)
    var = jnp.sum(jnp.square(x - mean), axis=axes) / max(n - 1, 1)
    return mean, var


def batch_norm(params, x, eps: float, calibrate: bool = False):
    """Inference BatchNorm; with `calibrate`, first replace the running statistics by `x`'s.

    Returns `(y, params_used)` so a caller can collect recalibrated statistics purely.
    """
    if calibrate:
        mean, var = batch_stats(x)
        params = {**params, "mean": mean, "var": var}
    inv = params["scale"] * lax.rsqrt(params["var"] + eps)
    shift = params["bias"] - params["mean"] * inv
    y = x.astype(jnp.float32) * inv + shift
    return y.astype(x.dtype), params


def global_avg_pool(x):
    """Mean over the spatial axes of an NHWC tensor, accumulated in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def relu(x):
    return jax.nn.relu(x)
