"""`modulenet_jax.grouped`: a group of genotypes in the grouped layout `[batch, h, w, P·C]`
gives, genotype by genotype, exactly what each genotype alone gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax import grouped
from modulenet_jax.zoo import fold_batch_norms, get_model, layers, run_op
from tests.conftest import normal

P = 3


def _per_genotype_equal(grouped_out, own, rtol=0.0):
    """`grouped_out` `[batch, h, w, P·C]` against `own` `[P, batch, h, w, C]`, exactly (or
    within `rtol`)."""
    a, b = np.asarray(grouped_out).reshape(own.shape[1:4] + (P, -1)), np.moveaxis(np.asarray(own), 0, 3)
    return np.array_equal(a, b) if rtol == 0 else np.allclose(a, b, rtol=rtol, atol=rtol)


def test_a_cifar_op_runs_each_genotype_in_the_grouped_layout():
    """The registered op itself with `groups=P` on `grouped_params`: one grouped convolution per
    conv, each genotype's option-A shortcut padded in its own channels, BatchNorm per channel,
    folded or not; at stride 1, at a 16→32 stride-2 junction, and the stem. To fp32 rounding:
    XLA:CPU up to jax 0.10 gave each group exactly its own convolution's sums, jax 0.11's sums a
    grouped stride-1 convolution in another order (a few ulps); a genotype read from another's
    channels would be off by the values themselves."""
    key = jax.random.PRNGKey(0)
    model = get_model("cifar_resnet14")
    for name in ("stem", "stage1.block1", "stage2.block0"):
        spec = next(s for s in model.modules if s.name == name)
        op = (spec.op, spec.static)
        with_groups = (spec.op, tuple(sorted({**dict(spec.static), "groups": P}.items())))
        size = 16 if spec.kind == "stem" else 16 // spec.reduction * spec.stride
        x = normal(0, (P, 4, size, size, spec.in_channels))
        raw = [model.init(k)[name] for k in jax.random.split(key, P)]
        for params in (raw, [fold_batch_norms(*op, p) for p in raw]):
            own = jnp.stack([run_op(op, p, xi)[0] for p, xi in zip(params, x)])
            stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
            out, _ = run_op(with_groups, grouped.grouped_params(stacked), grouped.to_grouped(x))
            assert _per_genotype_equal(out, own, rtol=1e-5), name


def test_stitches_and_masks_per_genotype():
    """A stitch is used only at the genotypes whose junction holds (the products to fp32
    rounding: XLA:CPU tiles a batched product by the machine's vector width), and a slot a
    genotype does not reach passes its input through (exactly), each genotype in its own
    channels."""
    x = normal(1, (P, 2, 4, 4, 8))
    stitch = {"kernel": normal(2, (P, 8, 8)), "bias": normal(3, (P, 8))}
    junction = jnp.array([True, False, True])
    own = jnp.stack([layers.pointwise(x[p], {k: v[p] for k, v in stitch.items()}) if junction[p] else x[p]
                     for p in range(P)])
    assert _per_genotype_equal(grouped.stitched(stitch, grouped.to_grouped(x), junction, P), own, rtol=1e-6)
    active = jnp.array([False, True, True])
    y = normal(4, x.shape)
    assert _per_genotype_equal(grouped.where_genotype(active, grouped.to_grouped(y), grouped.to_grouped(x), P),
                               jnp.where(active[:, None, None, None, None], y, x))
    assert grouped.missing([("cifar_resnet.stem", ()), ("tv_resnet.bottleneck", ())]) == ["tv_resnet.bottleneck"]
    with pytest.raises(ValueError, match="no grouped form of a stacked param"):
        grouped.grouped_params({"w": jnp.zeros((P, 2, 2))})


def test_each_genotype_recalibrates_where_its_flag_says():
    """`grouped.run` with one calibration flag per genotype: BatchNorm statistics recomputed from
    each recalibrated genotype's own channels (to fp32 rounding: the sums run over wider rows),
    the others' kept, and the params used come back stacked over the group as each genotype's
    own op returns them (the kernels bit for bit: `stacked_params` inverts `grouped_params`)."""
    key = jax.random.PRNGKey(2)
    model = get_model("cifar_resnet14")
    spec = next(s for s in model.modules if s.name == "stage2.block0")
    op = (spec.op, spec.static)
    x = normal(2, (P, 6, 16, 16, spec.in_channels))
    params = [model.init(k)[spec.name] for k in jax.random.split(key, P)]
    flags = jnp.array([True, False, True])
    own = [run_op(op, p, xi, bool(f)) for p, xi, f in zip(params, x, flags)]
    out, used = grouped.run(op, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params), grouped.to_grouped(x), P,
                            flags)
    np.testing.assert_allclose(np.asarray(out).reshape(6, 8, 8, P, -1),
                               np.moveaxis(np.stack([y for y, _ in own]), 0, 3), rtol=1e-5, atol=1e-5)
    own_used = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *[u for _, u in own])
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(used), jax.tree_util.tree_leaves(own_used)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=0 if a.ndim == 5 else 1e-6,
                                   err_msg=jax.tree_util.keystr(path))
    assert np.array_equal(used["bn1"]["mean"][1], params[1]["bn1"]["mean"])
    assert not np.allclose(used["bn1"]["mean"][0], params[0]["bn1"]["mean"])


def test_packed_genotypes_share_a_convolution_group_each_reading_its_own_channels():
    """Packing (`layers.packing`): neighbouring genotypes in one convolution group up to a width,
    their kernels on its diagonal (`layers.block_diagonal`, zeros selected in: the kernels'
    values exactly), so each genotype's outputs read only its own inputs: the op gives, genotype
    by genotype, what each genotype gives alone, recalibrated statistics too, to fp32 rounding
    (the sums run over the zeros too); a pack that does not divide the groups is refused."""
    assert [layers.packing(64, 16, w) for w in (0, 1, 16, 31, 32, 64, 128)] == [1, 1, 1, 1, 2, 4, 8]
    assert layers.packing(12, 16, 256) == 4 and layers.packing(3, 16, 64) == 1  # powers of two dividing the groups
    kernel = normal(5, (3, 3, 2, 4 * 5))  # 4 groups: 2 channels in, 5 out each
    packed = np.asarray(layers.block_diagonal(kernel, 4, 2))
    assert packed.shape == (3, 3, 4, 20)
    for g in range(4):  # genotype g: input rows (g % 2)·2 of its pair's group, outputs g·5
        rows, cols = slice(g % 2 * 2, g % 2 * 2 + 2), slice(5 * g, 5 * g + 5)
        assert np.array_equal(packed[:, :, rows, cols], np.asarray(kernel)[..., cols])
        assert not np.delete(packed[:, :, :, cols], np.arange(4)[rows], axis=2).any()
    with pytest.raises(ValueError, match="2 must divide 3"):
        layers.block_diagonal(normal(7, (3, 3, 2, 6)), 3, 2)

    groups, key = 4, jax.random.PRNGKey(3)
    model = get_model("cifar_resnet14")
    for name in ("stem", "stage2.block0"):  # 16 outputs per genotype; 32, strided, padded shortcut
        spec = next(s for s in model.modules if s.name == name)
        x = normal(8, (groups, 3, 16, 16, spec.in_channels))
        params = [model.init(k)[name] for k in jax.random.split(key, groups)]
        own = [run_op((spec.op, spec.static), p, xi, True) for p, xi in zip(params, x)]
        bn = "bn" if spec.kind == "stem" else "bn2"
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
        for width in (64, 128):  # 2 or 4 genotypes per group at 32 channels, 4 at 16
            out, used = grouped.run((spec.op, spec.static), stacked, grouped.to_grouped(x), groups, True, width=width)
            np.testing.assert_allclose(np.asarray(out).reshape(out.shape[:3] + (groups, -1)),
                                       np.moveaxis(np.stack([y for y, _ in own]), 0, 3), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(np.asarray(used[bn]["var"]), np.stack([u[bn]["var"] for _, u in own]),
                                       rtol=1e-5)
