"""`zoo.layers`: `batch_stats`, the statistics BatchNorm recalibration stores, exact to float32
rounding against float64 whatever the slices and columns it is computed in; `conv2d`'s bf16
numerics; the ops' zeroed residuals (`zoo.zeroed_residual`), which pass the input through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax import zoo
from modulenet_jax.zoo import layers
from modulenet_jax.zoo.layers import batch_norm, batch_stats, conv2d
from tests.conftest import normal


@pytest.mark.parametrize("shape", [(64, 8, 8, 16), (37, 5, 5, 40), (9, 3, 3, 200), (1, 1, 1, 7), (13, 24)])
@pytest.mark.parametrize("chunk_bytes,one_pass", [(None, False), (4096, False), (1 << 30, False), (4096, True),
                                                  (1 << 30, True)])
def test_batch_stats_are_the_mean_and_unbiased_variance(shape, chunk_bytes, one_pass):
    """Slices of rows (prime counts, channels that do not divide the columns, more channels than
    columns, a single value) combine to float64's mean and unbiased variance; an offset of 100
    standard deviations costs no accuracy (each slice is two-pass, or one pass around the mean of
    its first rows)."""
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * rng.uniform(0.1, 3.0, shape[-1]) + rng.uniform(-100, 100, shape[-1]))
    x = x.astype(np.float32)
    mean, var = jax.jit(lambda a: batch_stats(a, chunk_bytes, one_pass))(jnp.asarray(x))
    rows = x.reshape(-1, shape[-1]).astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean), rows.mean(0), rtol=2e-6, atol=1e-6)
    expected = rows.var(0, ddof=1) if len(rows) > 1 else np.zeros(shape[-1])
    np.testing.assert_allclose(np.asarray(var), expected, rtol=2e-5, atol=1e-6)


def test_one_pass_statistics_hold_when_the_first_rows_are_outliers():
    """The one pass shifts by the mean of the first `STAT_SHIFT_ROWS` rows: rows 50 standard
    deviations away there (the shift far from the mean, the sums cancelling most) still give
    float64's mean and unbiased variance to the tolerances of two passes."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((512, 4, 4, 16))
    # the rows the shift is taken from: STAT_SHIFT_ROWS of STAT_LANES values, 16 channels each, 4x4 per image
    x[:layers.STAT_SHIFT_ROWS * (layers.STAT_LANES // 16) // (4 * 4)] += 50.0
    x = x.astype(np.float32)
    mean, var = jax.jit(lambda a: batch_stats(a, 4 * a.size, one_pass=True))(jnp.asarray(x))
    rows = x.reshape(-1, 16).astype(np.float64)
    np.testing.assert_allclose(np.asarray(mean), rows.mean(0), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(var), rows.var(0, ddof=1), rtol=2e-5, atol=1e-6)


def test_batch_stats_gradient_does_not_depend_on_the_slices():
    """Fine-tuning differentiates through recalibrated statistics: many slices or one, the same gradient."""
    x = normal(0, (16, 4, 4, 8)) * 2 + 1

    def loss(a, chunk_bytes, one_pass=False):
        mean, var = batch_stats(a, chunk_bytes, one_pass)
        return jnp.sum(mean * jnp.arange(8)) + jnp.sum(jnp.sqrt(var))

    many, one = (jax.grad(loss)(x, b) for b in (256, 1 << 30))
    np.testing.assert_allclose(np.asarray(many), np.asarray(one), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(x, 1 << 30, True)), np.asarray(one), rtol=1e-5, atol=1e-7)


def _chained_reductions(jaxpr, size: int) -> tuple[int, bool]:
    """How many sums over `size` elements `jaxpr` takes, and whether one of them sums a value
    computed from another (then they read the activations one after the other)."""
    derived, count, chained = set(), 0, False
    for eqn in jaxpr.eqns:
        reads = [v for v in eqn.invars if not hasattr(v, "val")]  # literals aside
        depends = any(v in derived for v in reads)
        if eqn.primitive.name == "reduce_sum" and reads[0].aval.size == size:
            count, chained, depends = count + 1, chained or depends, True
        if depends:
            derived.update(eqn.outvars)
    return count, chained


def test_one_pass_statistics_sum_the_values_and_their_squares_side_by_side():
    """`one_pass` sums the values and their squares around a shift taken from the first rows, each
    independent of the other: one fused reduction reads the activations once on a GPU. Two-pass
    sums the squares around the mean of a first sum. Programs for any platform but a CPU take the
    one pass (`batch_stats`' `platform_dependent` branch for the default platforms)."""
    x = jnp.zeros((256, 32, 32, 16))
    for one_pass, chained in ((True, False), (False, True)):
        jaxpr = jax.make_jaxpr(lambda a: batch_stats(a, 4 * a.size, one_pass))(x).jaxpr
        assert _chained_reductions(jaxpr, x.size) == (2, chained)
    choice, = [e for e in jax.make_jaxpr(batch_stats)(x).jaxpr.eqns if e.primitive.name == "cond"]
    branches = dict(zip(choice.params["branches_platforms"], choice.params["branches"]))
    assert _chained_reductions(branches[None].jaxpr, x.size) == (2, False)


def test_recalibrated_batch_norm_rounds_alike_whether_its_flag_is_known_or_traced():
    """The per-module driver recalibrates with `calibrate=True` known while tracing, the fused
    program with a traced flag: outputs and statistics equal to the last bit. (XLA:CPU contracted
    the new variance's last multiply and `+ eps` into one FMA in the first form only; `bn_scale`.)"""
    x = normal(3, (64, 8, 8, 32)) * 3 + 1
    bn = {"scale": normal(4, (32,)), "bias": normal(5, (32,)), "mean": normal(6, (32,)), "var": normal(7, (32,)) ** 2}
    known = jax.jit(lambda bn, x: batch_norm(bn, x, 1e-5, True))(bn, x)
    traced = jax.jit(lambda bn, x, flag: batch_norm(bn, x, 1e-5, flag))(bn, x, jnp.bool_(True))
    for a, b in zip(jax.tree_util.tree_leaves(known), jax.tree_util.tree_leaves(traced)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_stats_slices_rows_in_programs_compiled_for_a_cpu_only():
    """The slicing is decided by the platform a program is lowered for, not by the process's
    default backend: a CPU program loops over slices, a GPU one reduces the whole array (as a
    GPU runs it, also where it is compiled on a CPU-only machine: `benchmarks/gpu_census.py`)."""
    x = jnp.zeros((64, 32, 32, 16))
    lowered = {p: jax.jit(batch_stats).trace(x).lower(lowering_platforms=(p,)).as_text() for p in ("cpu", "cuda")}
    assert "stablehlo.while" in lowered["cpu"] and "stablehlo.while" not in lowered["cuda"]


def test_a_bf16_convolution_accumulates_in_float32_and_rounds_once():
    """`conv2d` on bf16 activations returns bf16 straight from the convolution: equal to the
    float32 convolution of the same bf16 values rounded once (a bf16 accumulator would differ
    in a large share of the outputs), grouped convolutions (the fused program's vmap) too."""
    for cin, groups in ((16, 1), (32, 2)):
        x = normal(0, (8, 16, 16, cin)).astype(jnp.bfloat16)
        w = normal(1, (3, 3, cin // groups, 32)).astype(jnp.bfloat16)
        y = conv2d(x, w, padding=1, groups=groups)
        ref = conv2d(x.astype(jnp.float32), w.astype(jnp.float32), padding=1, groups=groups).astype(jnp.bfloat16)
        assert y.dtype == jnp.bfloat16
        assert float(jnp.mean(y != ref)) < 1e-3, float(jnp.mean(y != ref))


def test_biases_are_added_in_the_activations_dtype():
    """`conv`, `pointwise` (a stitch) and `grouped_pointwise` add their bias in the activations'
    dtype: in bf16 no float32 value of the output's size between the product and the bias (a GPU
    then runs a convolution, its bias, residual and ReLU as one cuDNN call instead of leaving
    them a pass over the activations: `benchmarks/gpu_census.py`), in float32 exactly the
    product plus the bias."""
    x = normal(0, (2, 8, 8, 16))
    conv = lambda params, x: layers.conv(params, x, padding=1)  # noqa: E731
    pointwise = lambda params, x: layers.pointwise(x, params)  # noqa: E731
    grouped_pointwise = lambda params, x: layers.grouped_pointwise(x, params)  # noqa: E731
    cases = [(conv, {"kernel": normal(1, (3, 3, 16, 8)), "bias": normal(2, (8,))},
              lambda p, x: conv2d(x, p["kernel"], padding=1) + p["bias"]),
             (pointwise, {"kernel": normal(3, (16, 8)), "bias": normal(4, (8,))},
              lambda p, x: jnp.dot(x, p["kernel"], precision="highest") + p["bias"]),
             (grouped_pointwise, {"kernel": normal(5, (2, 8, 4)), "bias": normal(6, (2, 4))},
              lambda p, x: jnp.concatenate([jnp.dot(x[..., 8 * g:8 * g + 8], p["kernel"][g], precision="highest")
                                            + p["bias"][g] for g in range(2)], -1))]
    for f, params, reference in cases:
        y = f(params, x)
        np.testing.assert_allclose(np.asarray(y), np.asarray(reference(params, x)), rtol=1e-6, atol=1e-6)
        if f is conv:
            np.testing.assert_array_equal(np.asarray(y), np.asarray(reference(params, x)))
        jaxpr = jax.make_jaxpr(lambda x: f(params, x))(x.astype(jnp.bfloat16))
        wide = [v.aval.dtype for e in jaxpr.eqns for v in e.outvars if v.aval.size >= y.size]
        assert wide and all(d == jnp.bfloat16 for d in wide), wide


# A block of a stage past its first (what a slot past a network's depth holds) of each op that
# declares a residual; `signed`: the op passes any input through (no ReLU after the sum).
RESIDUAL_BLOCKS = [("cifar_resnet20", "stage2.block1", False), ("tv_resnet18", "stage1.block1", False),
                   ("tv_resnet50", "stage1.block1", False), ("tv_convnext_tiny", "stage1.block1", True)]


def _random_params(model: str, module: str):
    """Numpy-drawn params of one module (BatchNorm variances positive)."""
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(np.abs(rng.standard_normal(s.shape, np.float32)) + 0.5
                                    if path[-1].key == "var" else rng.standard_normal(s.shape, np.float32)),
        zoo.param_shapes(model)[module])


def test_every_op_that_declares_a_residual_is_checked():
    declared = {s.op for m in zoo.list_models() for s in zoo.get_model(m).modules
                if zoo.zeroed_residual(s.op, {}, True) is not None}
    assert declared == {zoo.get_model(m).module(n).op for m, n, _ in RESIDUAL_BLOCKS}


@pytest.mark.parametrize("model, module, signed", RESIDUAL_BLOCKS, ids=[m for m, _, _ in RESIDUAL_BLOCKS])
def test_a_zeroed_residual_passes_the_input_through_exactly(model, module, signed):
    """Where `keep` is False the block returns its input bit for bit (as published and with
    BatchNorm folded), in float32 and bfloat16; where True its params are untouched."""
    spec = zoo.get_model(model).module(module)
    params = _random_params(model, module)
    x = normal(1, (2, 8, 8, spec.in_channels))
    x = x if signed else jax.nn.relu(x)
    for p in (params, zoo.fold_batch_norms(spec.op, spec.static, params)):
        jax.tree_util.tree_map(np.testing.assert_array_equal, zoo.zeroed_residual(spec.op, p, True), p)
        zeroed = zoo.zeroed_residual(spec.op, p, False)
        for dtype in (jnp.float32, jnp.bfloat16):
            y, _ = zoo.run_op((spec.op, spec.static), zeroed, x.astype(dtype))
            np.testing.assert_array_equal(np.asarray(y), np.asarray(x.astype(dtype)))
        y, _ = zoo.run_op((spec.op, spec.static), p, x)
        assert not np.array_equal(np.asarray(y), np.asarray(x))
