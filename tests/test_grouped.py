"""`modulenet_jax.grouped`: a group of genotypes in the grouped layout `[batch, h, w, P·C]`
gives, genotype by genotype, exactly what each genotype alone gives."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax import grouped
from modulenet_jax.zoo import fold_batch_norms, get_model, layers, run_op

P = 3


def _per_genotype_equal(grouped_out, own):
    """`grouped_out` `[batch, h, w, P·C]` against `own` `[P, batch, h, w, C]`, exactly."""
    return np.array_equal(np.asarray(grouped_out).reshape(own.shape[1:4] + (P, -1)), np.moveaxis(np.asarray(own), 0, 3))


def test_a_cifar_op_runs_each_genotype_in_the_grouped_layout():
    """The registered op itself with `groups=P` on `grouped_params`: one grouped convolution per
    conv, each genotype's option-A shortcut padded in its own channels, BatchNorm per channel,
    folded or not; at stride 1, at a 16→32 stride-2 junction, and the stem."""
    key = jax.random.PRNGKey(0)
    model = get_model("cifar_resnet14")
    for name in ("stem", "stage1.block1", "stage2.block0"):
        spec = next(s for s in model.modules if s.name == name)
        op = (spec.op, spec.static)
        with_groups = (spec.op, tuple(sorted({**dict(spec.static), "groups": P}.items())))
        size = 16 if spec.kind == "stem" else 16 // spec.reduction * spec.stride
        x = jax.random.normal(key, (P, 4, size, size, spec.in_channels))
        raw = [model.init(k)[name] for k in jax.random.split(key, P)]
        for params in (raw, [fold_batch_norms(*op, p) for p in raw]):
            own = jnp.stack([run_op(op, p, xi)[0] for p, xi in zip(params, x)])
            stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *params)
            out, _ = run_op(with_groups, grouped.grouped_params(stacked), grouped.to_grouped(x))
            assert _per_genotype_equal(out, own), name


def test_stitches_and_masks_per_genotype():
    """A stitch is used only at the genotypes whose junction holds, and a slot a genotype does
    not reach passes its input through, each genotype in its own channels."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(k1, (P, 2, 4, 4, 8))
    stitch = {"kernel": jax.random.normal(k2, (P, 8, 8)), "bias": jax.random.normal(k3, (P, 8))}
    junction = jnp.array([True, False, True])
    own = jnp.stack([layers.linear(x[p], {k: v[p] for k, v in stitch.items()}) if junction[p] else x[p]
                     for p in range(P)])
    assert _per_genotype_equal(grouped.stitched(stitch, grouped.to_grouped(x), junction, P), own)
    active = jnp.array([False, True, True])
    y = jax.random.normal(k3, x.shape)
    assert _per_genotype_equal(grouped.where_genotype(active, grouped.to_grouped(y), grouped.to_grouped(x), P),
                               jnp.where(active[:, None, None, None, None], y, x))
    assert grouped.missing([("cifar_resnet.stem", ()), ("tv_resnet.bottleneck", ())]) == ["tv_resnet.bottleneck"]
    with pytest.raises(ValueError, match="no grouped form of a stacked param"):
        grouped.grouped_params({"w": jnp.zeros((P, 2, 2))})
