"""Pure layer functions with PyTorch semantics (NHWC activations, HWIO kernels).

Every function computes in the dtype of its input: float32 runs at full precision
(`Precision.HIGHEST`, so GPUs do not silently use TF32) unless JAX's `default_matmul_precision`
is set (`numerics("tensorfloat32")` sets it to TF32 for its scope),
bfloat16 multiplies in bf16 and accumulates in float32.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax


# The numerics a protocol or an exported network names, by the dtype of its activations.
ACTIVATION_DTYPES = {"float32": jnp.float32, "tensorfloat32": jnp.float32, "bfloat16": jnp.bfloat16}


def numerics(dtype: str):
    """The scope in which a computation named by `dtype` runs its convolutions and products:
    for `tensorfloat32` (fp32 activations), JAX's `default_matmul_precision` at TF32 (read while
    tracing, and part of every compiled program's cache key); nothing to set for `float32` and
    `bfloat16`, whose precision the activations' dtype gives (`_precision`)."""
    return jax.default_matmul_precision("tensorfloat32") if dtype == "tensorfloat32" else contextlib.nullcontext()


def _precision(dtype) -> lax.Precision | None:
    if dtype != jnp.float32:
        return lax.Precision.DEFAULT
    return None if jax.config.jax_default_matmul_precision is not None else lax.Precision.HIGHEST


def exact_identity(dtype) -> bool:
    """Whether a product with an identity matrix returns its input exactly under the current
    numerics: float32 at `Precision.HIGHEST` and bfloat16 (products by 1 and 0, accumulated in
    float32) do; TF32 rounds the input to a 10-bit mantissa first."""
    return dtype == jnp.bfloat16 or _precision(dtype) == lax.Precision.HIGHEST


def packing(groups: int, out_channels: int, width: int) -> int:
    """How many neighbouring groups of a grouped convolution (`out_channels` outputs each) run as
    one (`block_diagonal`) to make groups of `width` output channels at most: the most, a power
    of two dividing `groups` (1: none, as with a `width` under twice `out_channels`)."""
    pack = 1
    while groups % (2 * pack) == 0 and 2 * pack * out_channels <= width:
        pack *= 2
    return pack


def block_diagonal(kernel, groups: int, pack: int):
    """A grouped convolution's kernel (`[k, k, C, groups·O]`) for `groups // pack` groups of
    `pack·C` input channels: each run of `pack` neighbouring groups as one, its kernels on the
    diagonal and zeros between them (selected, not multiplied: exact), so that a group's outputs
    still read only its own inputs."""
    if groups % pack:
        raise ValueError(f"cannot pack {groups} groups {pack} at a time: {pack} must divide {groups}")
    k1, k2, c, out = kernel.shape
    w = kernel.reshape(k1, k2, 1, c, groups // pack, pack, out // groups)
    own = jnp.eye(pack, dtype=bool).reshape(1, 1, pack, 1, 1, pack, 1)  # input group h feeds output g iff h == g
    return jnp.where(own, w, jnp.zeros((), kernel.dtype)).reshape(k1, k2, pack * c, out)


def conv2d(x, kernel, stride: int = 1, padding: int = 0, groups: int = 1, width: int = 0):
    """2-D convolution with PyTorch's symmetric zero padding (never XLA "SAME"). The output is in
    `x`'s dtype straight from the convolution: a bf16 one accumulates in float32 and rounds once
    (XLA:CPU, cuDNN and the TPU all do), which is what an fp32 output rounded to bf16 gave,
    without writing that fp32 tensor and re-reading it (on an H200 the fusions that read W1's
    bf16 convolutions' fp32 outputs took a fifth of its device time). With `width`, neighbouring
    groups run as one up to `width` output channels (`packing`, `block_diagonal`): as many times
    the multiplications, in wider groups where narrow ones (16 channels per genotype in a CIFAR
    ResNet's first stage) may leave the tensor cores idle; the same sums, to the summation order."""
    pack = packing(groups, kernel.shape[-1] // groups, width)
    if pack > 1:
        kernel, groups = block_diagonal(kernel, groups, pack), groups // pack
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=_precision(x.dtype),
    )


def add_bias(y, bias):
    """`y + bias` in `y`'s dtype (the bias rounded to it first: nothing changes in float32). In
    bf16 a GPU then runs a convolution, its bias, a residual added to it and the ReLU after as one
    cuDNN call; a bias added in float32 leaves them a pass of their own over the activations,
    each reading the convolution's output and writing it back (XLA's H200 programs:
    `benchmarks/gpu_census.py`)."""
    return y + bias.astype(y.dtype)


def _flat_dot(x, kernel, **kwargs):
    """`x @ kernel` over the last axis of any-rank `x`, the leading axes flattened first: one 2-D
    matrix product is what XLA:CPU runs fastest (a 1x1 stitch on 500x32x32x16 activations in
    18 ms instead of 30 ms on 2 cores)."""
    return jnp.dot(x.reshape(-1, x.shape[-1]), kernel.astype(x.dtype), precision=_precision(x.dtype),
                   **kwargs).reshape(*x.shape[:-1], -1)


def pointwise(x, params):
    """A 1x1 convolution `{"kernel": (in, out), "bias"?}` (a stitch) on NHWC `x`, its output and
    bias in `x`'s dtype as `conv`'s (a bf16 product accumulates in float32 and rounds once)."""
    y = _flat_dot(x, params["kernel"])
    return add_bias(y, params["bias"]) if "bias" in params else y


def grouped_pointwise(x, params, width: int = 0):
    """`pointwise` of G groups at once on NHWC `x` holding the groups side by side in its
    channels (`[n, h, w, G·C]`): kernel `[G, C, D]`, bias `[G, D]`, each group through its own
    kernel, as a 1x1 convolution with G groups (packed to `width`: `conv2d`), so that `x` and the
    output keep that layout (a batched product would transpose one of them)."""
    groups, c, d = params["kernel"].shape
    kernel = jnp.moveaxis(params["kernel"], 0, 1).reshape(1, 1, c, groups * d)
    y = conv2d(x, kernel, groups=groups, width=width)
    return add_bias(y, params["bias"].reshape(-1)) if "bias" in params else y


def linear(x, params):
    """`x @ kernel + bias` with a (in, out) kernel, over the last axis of any-rank `x` (a
    classifier's logits: accumulated and biased in float32, rounded once to `x`'s dtype)."""
    y = _flat_dot(x, params["kernel"], preferred_element_type=jnp.float32)
    if "bias" in params:
        y = y + params["bias"]
    return y.astype(x.dtype)


CPU_CHUNK_BYTES = 1 << 20  # rows per step of `batch_stats` on a CPU: a slice that stays in cache
STAT_LANES = 128  # channels times rows side by side in `batch_stats`' reductions
STAT_SHIFT_ROWS = 64  # rows whose mean shifts the values of `batch_stats`' one pass


def divisor_at_most(n: int, cap: int) -> int:
    """The largest divisor of `n` not above `cap` (at least 1), searched from the top: run while
    tracing, where a whole array is one slice (`cap >= n`) it answers at once. (Also how many
    scored batches the fused program carries together.)"""
    return next(d for d in range(max(1, min(n, cap)), 0, -1) if n % d == 0)


def batch_stats(x, chunk_bytes: int | None = None, one_pass: bool = False):
    """Per-channel mean and unbiased variance over every axis but the last, in float32.

    These are the statistics BatchNorm recalibration stores: the exact mean and the
    unbiased variance of the whole calibration set (what PyTorch's cumulative running
    average converges to), not an exponential moving average.

    Computed in slices of rows (`chunk_bytes`), each over `STAT_LANES` columns (several rows'
    channels side by side), the slices' and columns' statistics then combined exactly (Chan et
    al.'s pairwise formula). A slice is two-pass (the mean, then the squares around it), or with
    `one_pass` read once: the sums of the values and of their squares around a shift, the mean
    of the slice's first `STAT_SHIFT_ROWS` rows (so that they hardly cancel, as accurate as two
    passes), the two sums independent of each other. By default `lax.platform_dependent` chooses
    by the platform the program is lowered for (which need not be the process's): for a CPU,
    two-pass slices of `CPU_CHUNK_BYTES`, 3x faster than one reduction over the whole array
    (which XLA:CPU runs out of cache with the square materialised) and more accurate; for any
    other, the whole array in one pass, which a GPU reads from its memory once instead of twice
    (one fused reduction: on an H200 5 % of W2's bytes, `benchmarks/gpu_census.py`).
    """
    if chunk_bytes is None:
        return lax.platform_dependent(x, cpu=functools.partial(batch_stats, chunk_bytes=CPU_CHUNK_BYTES),
                                      default=functools.partial(batch_stats, chunk_bytes=4 * x.size, one_pass=True))
    x = x.astype(jnp.float32)
    c = x.shape[-1]
    rows = x.reshape(-1, c)
    n = rows.shape[0]
    r = divisor_at_most(n, chunk_bytes // (4 * c))  # rows per slice
    k = divisor_at_most(r, STAT_LANES // c)  # rows side by side
    m = r // k  # values per column of a slice

    def one(block):
        block = block.reshape(m, k * c)
        if one_pass:
            shift = jnp.mean(block[:STAT_SHIFT_ROWS], axis=0)
            d = block - shift
            s1, s2 = jnp.sum(d, axis=0), jnp.sum(jnp.square(d), axis=0)
            return shift + s1 / m, jnp.maximum(s2 - s1 * (s1 / m), 0.0)
        mean = jnp.mean(block, axis=0)
        return mean, jnp.sum(jnp.square(block - mean), axis=0)

    blocks = rows.reshape(n // r, r, c)
    means, m2 = jax.lax.map(one, blocks) if n // r > 1 else jax.tree_util.tree_map(lambda v: v[None], one(blocks[0]))
    means, m2 = means.reshape(-1, c), m2.reshape(-1, c)  # (slices x k) groups of m values each
    mean = jnp.mean(means, axis=0)
    var = (jnp.sum(m2, axis=0) + m * jnp.sum(jnp.square(means - mean), axis=0)) / max(n - 1, 1)
    return mean, var


def bn_scale(scale, var, eps: float):
    """`scale / sqrt(var + eps)`, rounded alike wherever `var` comes from. XLA:CPU lets LLVM
    contract a multiply and the add consuming it into one FMA, so `var + eps` right after the
    multiply that ends a recalibrated variance (computed in the same program) rounds otherwise
    than on a variance read from memory: the per-module and fused drivers then differed. The
    max (a no-op on a variance) stands between them."""
    return scale * lax.rsqrt(jnp.maximum(var, 0.0) + eps)


def batch_norm(params, x, eps: float, calibrate=False):
    """Inference BatchNorm; with `calibrate`, first replace the running statistics by `x`'s
    (`calibrate` may be a boolean array, as in a vmapped population: then where it holds; a
    vector holds one flag per group of channels, as in the fused program's grouped layout).

    Returns `(y, params_used)` so a caller can collect recalibrated statistics purely.
    """
    if calibrate is not False:
        mean, var = batch_stats(x)
        if calibrate is not True:
            if jnp.ndim(calibrate):
                calibrate = jnp.repeat(calibrate, mean.shape[-1] // calibrate.shape[-1])
            mean, var = jnp.where(calibrate, mean, params["mean"]), jnp.where(calibrate, var, params["var"])
        params = {**params, "mean": mean, "var": var}
    inv = bn_scale(params["scale"], params["var"], eps)
    shift = params["bias"] - params["mean"] * inv
    y = x.astype(jnp.float32) * inv + shift
    return y.astype(x.dtype), params


def fold_batch_norm(conv, bn, eps: float):
    """A conv `{"kernel": HWIO, "bias"?}` followed by inference BatchNorm `bn`, as one conv with a
    bias (in float32): kernel * inv, bias = (conv bias - mean) * inv + BN bias, inv = scale /
    sqrt(var + eps). Scoring runs this form: the BatchNorm pass disappears into the conv."""
    inv = bn_scale(bn["scale"], bn["var"], eps)
    bias = bn["bias"] + (conv.get("bias", 0.0) - bn["mean"]) * inv
    return {"kernel": conv["kernel"] * inv, "bias": bias}


def conv_bn(params, conv_name: str, bn_name: str, x, eps: float, calibrate=False, **conv_kwargs):
    """`params[conv_name]` then BatchNorm `params[bn_name]`: `(y, {bn_name: params used})`. A
    module whose BatchNorm was folded (`fold_batch_norm`: no `params[bn_name]`) runs its conv
    with the bias alone and returns `{}`; it is never recalibrated."""
    if bn_name not in params:
        return conv(params[conv_name], x, **conv_kwargs), {}
    h = conv2d(x, params[conv_name]["kernel"], **conv_kwargs)
    h, used = batch_norm(params[bn_name], h, eps, calibrate)
    return h, {bn_name: used}


def global_avg_pool(x):
    """Mean over the spatial axes of an NHWC tensor, accumulated in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)


def relu(x):
    return jax.nn.relu(x)


def conv(params, x, stride: int = 1, padding: int = 0, groups: int = 1, width: int = 0):
    """`conv2d` with a params dict `{"kernel": HWIO, "bias": (O,)?}` (bias added if present)."""
    y = conv2d(x, params["kernel"], stride=stride, padding=padding, groups=groups, width=width)
    return add_bias(y, params["bias"]) if "bias" in params else y


def layer_norm(params, x, eps: float):
    """LayerNorm over the last axis (biased variance, as PyTorch), computed in float32."""
    h = x.astype(jnp.float32)
    mean = jnp.mean(h, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=-1, keepdims=True)
    y = (h - mean) * lax.rsqrt(var + eps) * params["scale"] + params["bias"]
    return y.astype(x.dtype)


def _pool_padding(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool):
    """(low, high) padding and output size of one spatial axis, with PyTorch's pooling rule.

    With `ceil_mode` the output size rounds up, but the last window must start inside the
    input or its left padding; the extra right padding it needs is added here.
    """
    span = size + 2 * padding - kernel
    if span < 0:
        raise ValueError(f"pooling window {kernel} is larger than the padded input {size + 2 * padding}")
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    high = max((out - 1) * stride + kernel - size - padding, 0)
    return (padding, high), out


def max_pool(x, kernel: int, stride: int, padding: int = 0, ceil_mode: bool = False):
    """PyTorch's `MaxPool2d` on NHWC: padding (and `ceil_mode`'s extra border) is -inf."""
    pads = [_pool_padding(x.shape[a], kernel, stride, padding, ceil_mode)[0] for a in (1, 2)]
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, kernel, kernel, 1), (1, stride, stride, 1),
                             ((0, 0), pads[0], pads[1], (0, 0)))


def avg_pool(x, kernel: int, stride: int):
    """PyTorch's `AvgPool2d(kernel, stride)` without padding, accumulated in float32."""
    s = lax.reduce_window(x.astype(jnp.float32), 0.0, lax.add, (1, kernel, kernel, 1),
                          (1, stride, stride, 1), "VALID")
    return (s / (kernel * kernel)).astype(x.dtype)


def adaptive_avg_pool(x, out: int):
    """PyTorch's `AdaptiveAvgPool2d(out)` on NHWC: bin i spans [floor(i*n/out), ceil((i+1)*n/out))."""
    def bins(n):
        return [((i * n) // out, -(-((i + 1) * n) // out)) for i in range(out)]

    h = x.astype(jnp.float32)
    rows = [jnp.mean(h[:, a:b], axis=1, keepdims=True) for a, b in bins(x.shape[1])]
    h = jnp.concatenate(rows, axis=1)
    cols = [jnp.mean(h[:, :, a:b], axis=2, keepdims=True) for a, b in bins(x.shape[2])]
    return jnp.concatenate(cols, axis=2).astype(x.dtype)


def relu6(x):
    return jnp.clip(x, 0, 6)


def hardsigmoid(x):
    """PyTorch's `Hardsigmoid`: relu6(x + 3) / 6."""
    return relu6(x + 3) / 6


def hardswish(x):
    """PyTorch's `Hardswish`: x * relu6(x + 3) / 6."""
    return x * relu6(x + 3) / 6


def silu(x):
    return x * jax.nn.sigmoid(x)


def gelu(x):
    """PyTorch's default (exact, erf-based) GELU."""
    return jax.nn.gelu(x, approximate=False)


ACTIVATIONS = {"relu": relu, "relu6": relu6, "hardswish": hardswish, "hardsigmoid": hardsigmoid,
               "silu": silu, "sigmoid": jax.nn.sigmoid, "gelu": gelu, "identity": lambda x: x}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}") from None
