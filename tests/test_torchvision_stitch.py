"""Junction stitches across channel counts: the least-squares fit recovers a known linear map,
and tuning moves only the stitches and the head, never a module param."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modulenet_jax import zoo
from modulenet_jax.assemble import apply_stitch, fit_linear_map, preprocess
from modulenet_jax.zoo import op_of
from modulenet_jax.data import Split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.protocol import ModuleFit, Protocol, chain_logits
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture
from modulenet_jax.tune import optimizer, tune_stitches
from tests.conftest import normal


@pytest.mark.parametrize("c_out,c_in", [(24, 40), (40, 24), (16, 16)])
def test_stitch_recovers_a_known_linear_map(c_out, c_in):
    """B = A M + b on NHWC activations with C_out != C_in: the fit returns M and b."""
    a = normal(c_out * c_in, (16, 6, 6, c_out)) * 3.0 + 1.0
    m, b = normal(1, (c_out, c_in)), normal(2, (c_in,))
    target = jnp.einsum("nhwc,cd->nhwd", a, m, precision="highest") + b
    stitch = fit_linear_map(a, target, 0.0)
    assert stitch["kernel"].shape == (c_out, c_in) and stitch["bias"].shape == (c_in,)
    np.testing.assert_allclose(np.asarray(stitch["kernel"]), np.asarray(m), atol=2e-4)
    np.testing.assert_allclose(np.asarray(stitch["bias"]), np.asarray(b), atol=2e-4)
    np.testing.assert_allclose(np.asarray(apply_stitch(stitch, a)), np.asarray(target), atol=2e-3)


def test_ridge_shrinks_towards_zero():
    a, m = normal(0, (200, 8)), normal(1, (8, 3))
    exact = fit_linear_map(a, a @ m, 0.0)["kernel"]
    shrunk = fit_linear_map(a, a @ m, 10.0)["kernel"]
    assert float(jnp.linalg.norm(shrunk)) < 0.5 * float(jnp.linalg.norm(exact))


def test_frozen_subtree_gets_zero_updates():
    tree = {"modules": ({"conv": {"kernel": jnp.ones((3, 3, 2, 2))}},), "stitches": ({"kernel": jnp.ones((2, 2)),
            "bias": jnp.zeros(2)},), "head": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}}
    tx = optimizer(0.1)
    grads = jax.tree_util.tree_map(jnp.ones_like, tree)
    updates, _ = tx.update(grads, tx.init(tree), tree)
    assert not jnp.any(updates["modules"][0]["conv"]["kernel"])
    assert jnp.all(updates["stitches"][0]["kernel"] != 0) and jnp.all(updates["head"]["kernel"] != 0)
    assert isinstance(tx, optax.GradientTransformation)


@pytest.fixture(scope="module")
def two_sources():
    names = ("cifar_resnet8", "cifar_resnet20")
    return KnowledgeBase.build([(n, n, zoo.get_model(n).init(jax.random.PRNGKey(i)), "jax init")
                                for i, n in enumerate(names)])


def _split(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.int32)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[..., 1] = np.clip(images[..., 1] // 2 + 12 * labels[:, None, None], 0, 255)
    return Split(images, labels, 10, "synthetic")


ARCH = Architecture(("cifar_resnet20/stem", "cifar_resnet8/stage1.block0", "cifar_resnet20/stage2.block0",
                     "cifar_resnet8/stage3.block0"))


def test_tuning_lowers_the_loss_and_leaves_modules_alone(two_sources):
    kb, arch = two_sources, ARCH
    assert sum(arch.junctions(kb)) == 3
    fit = _split(64)
    fitted = Evaluator(kb, Protocol(fit_images=64, stitch_images=64, head="ridge", bn="source"), fit).fit(arch)
    x = preprocess(jnp.asarray(fit.images), fitted.mean, fitted.std)
    ops, junctions = tuple(op_of(s) for s in fitted.specs), tuple(s is not None for s in fitted.stitches)

    def forward(params, stitches, head, x):
        return chain_logits(ops, junctions, [ModuleFit(p, s) for p, s in zip(params, stitches)], head, x)

    stitches, head, losses = jax.jit(tune_stitches, static_argnames=("forward", "steps"))(
        forward, fitted.params, fitted.stitches, fitted.head, x, jnp.asarray(fit.labels), steps=20,
        learning_rate=1e-3)
    assert losses.shape == (21,) and float(losses[-1]) < float(losses[0])
    assert stitches[0] is None and all(s is not None for s in stitches[1:])
    assert not np.allclose(np.asarray(stitches[1]["kernel"]), np.asarray(fitted.stitches[1]["kernel"]))
    for rec_id, used in zip(arch.modules, fitted.params):
        same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), used, kb.module_params(rec_id))
        assert all(jax.tree_util.tree_leaves(same))


def test_evaluator_tunes_when_asked(two_sources):
    """The protocol's tuning (same program as above: same network, steps and rate) changes the
    stitches; where a module follows its own predecessor there is no stitch to tune."""
    kb = two_sources
    fit = _split(64, seed=1)
    plain = Evaluator(kb, Protocol(fit_images=64, stitch_images=64, head="ridge", bn="source"), fit).fit(ARCH)
    tuned = Evaluator(kb, Protocol(fit_images=64, stitch_images=64, head="ridge", bn="source", stitch_steps=20,
                                   stitch_lr=1e-3), fit).fit(ARCH)
    assert not np.allclose(np.asarray(plain.stitches[1]["kernel"]), np.asarray(tuned.stitches[1]["kernel"]))
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.array_equal(a, b)), plain.params, tuned.params)
    assert all(jax.tree_util.tree_leaves(same))
    assert plain.stitches[0] is None and tuned.stitches[0] is None
    own = Architecture(("cifar_resnet8/stem", "cifar_resnet8/stage1.block0"))
    assert Evaluator(kb, Protocol(fit_images=64, stitch_images=64, head="ridge", bn="source", stitch_steps=20),
                     fit).fit(own).stitches == (None, None)
    with pytest.raises(ValueError, match="stitch_steps must be >= 0"):
        Protocol(stitch_steps=-1)


def test_input_size_resizes_and_must_match_the_knowledge_base(two_sources):
    images = jnp.asarray(_split(4).images)
    mean, std = jnp.zeros(3), jnp.ones(3)
    assert preprocess(images, mean, std).shape == (4, 32, 32, 3)
    assert preprocess(images, mean, std, jnp.float32, 64).shape == (4, 64, 64, 3)
    with pytest.raises(ValueError, match="input_size is 64 but the knowledge base was cut at 32"):
        Evaluator(two_sources, Protocol(fit_images=4, stitch_images=4, input_size=64), _split(4))
