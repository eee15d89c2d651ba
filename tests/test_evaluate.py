"""The evaluation protocol: stitches, BN recalibration, heads, costs and bad values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax import zoo
from modulenet_jax.assemble import fit_linear_map, preprocess, stitch_cost
from modulenet_jax.cost import count_params
from modulenet_jax.evaluate import Evaluator, published_logits, state_bytes
from modulenet_jax.heads import fit_logistic_head, fit_ridge_head
from modulenet_jax.data import Split
from modulenet_jax.protocol import EvaluationError, Protocol, count_correct, pad_batches
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture, SearchSpace
from modulenet_jax.zoo import layers
from tests.conftest import normal, random_models, uint8_images


def test_stitch_recovers_a_known_linear_map():
    a, kernel, bias = normal(0, (64, 8, 8, 16)), normal(1, (16, 24)), normal(2, (24,))
    b = jnp.einsum("nhwc,cd->nhwd", a, kernel, precision="highest") + bias
    fit = fit_linear_map(a, b, ridge=0.0)
    np.testing.assert_allclose(np.asarray(fit["kernel"]), np.asarray(kernel), atol=1e-4)
    np.testing.assert_allclose(np.asarray(fit["bias"]), np.asarray(bias), atol=1e-4)


def test_the_stitch_ridge_is_relative_to_the_mean_variance():
    """`ridge` adds `ridge * trace(gram) / dim` to the gram matrix of the centred inputs: the
    solve against that formula, in float64, on inputs whose channels have different scales."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((200, 8)) * np.arange(1, 9)
    b = a @ rng.standard_normal((8, 5)) + rng.standard_normal((200, 5))
    fit = fit_linear_map(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), ridge=0.5)
    ac, bc = a - a.mean(0), b - b.mean(0)
    gram = ac.T @ ac
    kernel = np.linalg.solve(gram + 0.5 * np.trace(gram) / 8 * np.eye(8), ac.T @ bc)
    np.testing.assert_allclose(np.asarray(fit["kernel"]), kernel, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(fit["bias"]), b.mean(0) - a.mean(0) @ kernel, rtol=1e-4, atol=1e-5)


def test_padding_is_never_counted():
    """10 images in batches of 4: 12 rows, 10 of them real; a network that always answers class
    0, on images of classes 1-3, is right on none of them (the 2 padded rows have label 0)."""
    labels = np.arange(10) % 3 + 1
    images, padded_labels, valid = pad_batches(4, np.zeros((10, 2, 2, 3), np.uint8), labels)
    assert images.shape[:2] == (3, 4) and valid.sum() == 10 and not valid[-1, -2:].any()
    assert (padded_labels[-1, -2:] == 0).all()
    split = Split(np.zeros((10, 2, 2, 3), np.uint8), labels.astype(np.int32), 4, "ten")
    always_zero = (lambda x, dtype: jnp.zeros((len(x), 4)).at[:, 0].set(1.0))
    assert count_correct(always_zero, split, 4) == (0, 10)
    assert count_correct(lambda x, dtype: jnp.zeros((len(x), 4)).at[:, 1].set(1.0), split, 4) == (4, 10)


def test_head_features_do_not_depend_on_the_batching(tiny_kb, tiny_dataset):
    """With published statistics the head's features come from padded batches of the fit images:
    batches of 50 (the last padded) give the same evaluation as batches of 64 (none padded)."""
    from modulenet_jax.data import protocol_split

    fit, val = protocol_split(tiny_dataset, "train", 128, seed=0), protocol_split(tiny_dataset, "val")
    arch = Architecture.of_source(tiny_kb, "cifar_resnet14")
    results = [Evaluator(tiny_kb, Protocol(fit_images=128, stitch_images=64, batch_size=size, bn="source",
                                           head="ridge"), fit).evaluate(arch, val) for size in (50, 64)]
    assert results[0].correct == results[1].correct and results[0].total == results[1].total == len(val)


def test_heads_separate_separable_data():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centers = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    feats = jnp.asarray(centers[labels] + rng.normal(size=(300, 3)) * 0.3, jnp.float32)
    for head in (fit_ridge_head(feats, jnp.asarray(labels), 3, 1e-3),
                 fit_logistic_head(feats, jnp.asarray(labels), 3, 1e-3, 50)):
        pred = np.argmax(np.asarray(feats @ head["kernel"] + head["bias"]), -1)
        assert np.mean(pred == labels) > 0.99


def _blobs():
    """Three Gaussian classes around 4 e_k (sd 1), 300 points: overlapping a little."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centers = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]])
    return jnp.asarray(centers[labels] + rng.normal(size=(300, 3)), jnp.float32), jnp.asarray(labels)


def test_the_logistic_heads_l2_shrinks_its_kernel():
    feats, labels = _blobs()
    weak, strong = (fit_logistic_head(feats, labels, 3, l2, 100)["kernel"] for l2 in (1e-4, 1.0))
    assert float(np.linalg.norm(strong)) < 0.5 * float(np.linalg.norm(weak))


def test_the_logistic_heads_logits_do_not_depend_on_a_feature_offset():
    """The head standardises its features and folds that back into kernel and bias: features
    shifted by a constant give the same logits."""
    feats, labels = _blobs()
    shifted = feats + np.array([10.0, -5.0, 3.0], np.float32)
    a, b = (fit_logistic_head(f, labels, 3, 1e-3, 50) for f in (feats, shifted))
    np.testing.assert_allclose(np.asarray(shifted @ b["kernel"] + b["bias"]),
                               np.asarray(feats @ a["kernel"] + a["bias"]), rtol=1e-3, atol=1e-3)


def test_a_stitch_between_different_widths_costs_what_its_fitted_params_count():
    a, b = normal(0, (64, 16)), normal(1, (64, 32))
    stitch = fit_linear_map(a, b, 1e-3)  # 16 channels out of one module, 32 into the next
    assert stitch_cost(16, 32, 8) == (count_params(stitch), 2 * 8 * 8 * 16 * 32) == (16 * 32 + 32, 2 * 8 * 8 * 16 * 32)


def test_batch_norm_recalibration_uses_the_fit_statistics():
    x = normal(0, (8, 4, 4, 3)) * 3 + 1
    p = {"scale": jnp.ones(3), "bias": jnp.zeros(3), "mean": jnp.zeros(3), "var": jnp.ones(3)}
    y, used = layers.batch_norm(p, x, 1e-5, calibrate=True)
    flat = np.asarray(x).reshape(-1, 3)
    np.testing.assert_allclose(np.asarray(used["mean"]), flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(used["var"]), flat.var(0, ddof=1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 3).mean(0), 0, atol=1e-5)


def _evaluator(kb, dataset, **kw):
    from modulenet_jax.data import protocol_split

    protocol = Protocol(fit_images=128, stitch_images=64, batch_size=50, head_steps=20, **kw)
    return Evaluator(kb, protocol, protocol_split(dataset, "train", 128, seed=0)), protocol_split(dataset, "val")


def test_source_under_protocol_has_no_stitch(tiny_kb, tiny_dataset):
    ev, val = _evaluator(tiny_kb, tiny_dataset)
    arch = Architecture.of_source(tiny_kb, "cifar_resnet14")
    fitted = ev.fit(arch)
    assert all(s is None for s in fitted.stitches)
    result = ev.evaluate(arch, val)
    assert result.total == 64 and 0 <= result.correct <= 64 and result.junctions == 0
    params = sum(r.params_count for r in tiny_kb.modules_of("cifar_resnet14"))
    assert result.params == params  # the fitted head has the shape of the source's head


@pytest.mark.parametrize("bn", ["source", "recalibrate"])
def test_stitches_at_junctions_and_costs(tiny_kb, tiny_dataset, bn):
    ev, val = _evaluator(tiny_kb, tiny_dataset, bn=bn)
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    g[0] = 0  # the stem of cifar_resnet8 before cifar_resnet14's blocks: one junction
    arch = space.decode(g)
    fitted = ev.fit(arch)
    assert [s is not None for s in fitted.stitches] == list(arch.junctions(tiny_kb))
    assert fitted.stitches[1]["kernel"].shape == (16, 16)
    result = ev.evaluate(arch, val)
    base = sum(r.params_count for r in tiny_kb.modules_of("cifar_resnet14"))
    assert result.params == base + 16 * 16 + 16
    src = ev.evaluate(Architecture.of_source(tiny_kb, "cifar_resnet14"), val)
    assert result.flops == src.flops + 2 * 32 * 32 * 16 * 16
    if bn == "recalibrate":
        stem_bn = fitted.params[0]["bn"]
        assert not np.allclose(np.asarray(stem_bn["mean"]), np.asarray(tiny_kb.module_params(arch.modules[0])["bn"]["mean"]))


def test_a_stitch_at_a_downsampling_junction_is_costed_at_its_input_resolution(tiny_kb, tiny_dataset):
    """cifar_resnet8's stage-2 block after cifar_resnet14's stage 1: the stitch (16 -> 16
    channels) runs on the 32 px input of the stride-2 block, not at its 16 px output; the next
    block (cifar_resnet14's second stage-2 block) is a junction too, at 16 px and 32 channels."""
    ev, _ = _evaluator(tiny_kb, tiny_dataset)
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    g[next(i for i, gene in enumerate(space.genes) if gene.name == "stage2.pos0")] = 0
    arch = space.decode(g)
    assert list(arch.junctions(tiny_kb)) == [False, False, False, True, True, False, False]
    params, flops = ev.cost(arch)
    _, source_flops = ev.cost(Architecture.of_source(tiny_kb, "cifar_resnet14"))
    assert flops == source_flops + 2 * 32 * 32 * 16 * 16 + 2 * 16 * 16 * 32 * 32


def _same(a, b) -> bool:
    return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


def test_from_junction_keeps_the_published_statistics_up_to_the_first_junction(tiny_kb, tiny_dataset):
    """`bn=from_junction`: modules before the first junction run exactly as in their source (their
    published BN statistics), every module from the junction on is recalibrated, and a source
    network keeps all of its own statistics."""
    ev, _ = _evaluator(tiny_kb, tiny_dataset, bn="from_junction")
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    stage2 = next(i for i, gene in enumerate(space.genes) if gene.name == "stage2.pos0")
    g[stage2] = 0  # stage 2 starts with cifar_resnet8's block: the first junction is there
    arch = space.decode(g)
    junctions = arch.junctions(tiny_kb)
    first = junctions.index(True)
    assert 1 < first < len(arch.modules) - 1
    fitted = ev.fit(arch)
    for i, (module_id, used) in enumerate(zip(arch.modules, fitted.params)):
        assert _same(used, tiny_kb.module_params(module_id)) == (i < first), (i, module_id)
    source = Architecture.of_source(tiny_kb, "cifar_resnet14")
    assert all(_same(u, tiny_kb.module_params(m)) for m, u in zip(source.modules, ev.fit(source).params))


def test_evaluation_is_deterministic(tiny_kb, tiny_dataset):
    ev, val = _evaluator(tiny_kb, tiny_dataset)
    space = SearchSpace(tiny_kb, "block")
    arch = space.decode(space.sample(np.random.default_rng(1)))
    assert ev.evaluate(arch, val) == ev.evaluate(arch, val)


def test_nan_weights_give_a_clear_error(tiny_kb, tiny_dataset):
    params = jax.tree_util.tree_map(lambda x: x, tiny_kb.params)
    params["cifar_resnet8"]["stem"]["conv"]["kernel"] = params["cifar_resnet8"]["stem"]["conv"]["kernel"] * jnp.nan
    kb = KnowledgeBase(tiny_kb.sources.values(), tiny_kb.records, params, 32)
    ev, val = _evaluator(kb, tiny_dataset)
    with pytest.raises(EvaluationError, match="non-finite"):
        ev.evaluate(Architecture.of_source(kb, "cifar_resnet8"), val)


def test_protocol_rejects_bad_settings():
    with pytest.raises(ValueError, match="protocol.bn"):
        Protocol(bn="train")
    with pytest.raises(ValueError, match=r"stitch_images \(200\) must be at most protocol.fit_images \(100\)"):
        Protocol(fit_images=100, stitch_images=200)
    for field in ("stitch_ridge", "head_l2", "head_ridge"):  # would give NaNs in the solves, not an error
        with pytest.raises(ValueError, match="protocol.stitch_ridge, protocol.head_l2 and protocol.head_ridge must be"):
            Protocol(**{field: -1e-3})


def _sharing_population(tiny_kb):
    """Random networks, one network with a block changed later and later, a source, a duplicate."""
    space = SearchSpace(tiny_kb, "block")
    rng = np.random.default_rng(3)
    archs = [space.decode(space.sample(rng)) for _ in range(5)]
    base = space.encode_source("cifar_resnet14")
    depth = {gene.stage: base[i] for i, gene in enumerate(space.genes) if gene.kind == "depth"}
    active = [i for i, gene in enumerate(space.genes) if gene.kind == "choice" and gene.position < depth[gene.stage]]
    for position in active[1:]:  # the same network with one block changed, later and later
        g = base.copy()
        g[position] = (g[position] + 1) % (space.upper[position] + 1)
        archs.append(space.decode(g))
    return archs + [Architecture.of_source(tiny_kb, "cifar_resnet14"), archs[0]]


def _counting_steps(monkeypatch) -> list:
    steps = []
    step = Evaluator.step
    monkeypatch.setattr(Evaluator, "step", lambda self, *a: steps.append(a[1]) or step(self, *a))
    return steps


@pytest.mark.parametrize("kw", [{"bn": "recalibrate"}, {"bn": "source"}, {"bn": "from_junction"}, {"stitch_steps": 3}],
                         ids=["recalibrate", "source", "from_junction", "tuned"])
def test_shared_prefixes_give_what_one_by_one_gives(tiny_kb, tiny_dataset, monkeypatch, kw):
    """A population evaluated together (each shared module prefix fitted and run once) scores
    exactly what each network scores alone, in fp32; and the prefixes really are shared."""
    from modulenet_jax.prefix import PrefixSchedule

    archs = _sharing_population(tiny_kb)
    if kw.get("stitch_steps"):  # tuning compiles per network: a sharing subset (a random one, its later-changed kin)
        archs = archs[4:10] + archs[-2:]
    alone = []
    for a in archs:
        ev, val = _evaluator(tiny_kb, tiny_dataset, **kw)
        alone.append(ev.evaluate(a, val))
    ev, val = _evaluator(tiny_kb, tiny_dataset, **kw)
    steps = _counting_steps(monkeypatch)
    together = ev.evaluate_many(archs, val)
    assert together == alone
    schedule = PrefixSchedule.of([a.modules for a in archs])
    assert len(steps) == schedule.modules_computed([len(a.modules) for a in archs])
    assert len(steps) <= sum(len(a.modules) for a in archs) // 2 + 2  # 38 of 74 here (25 of 53 tuned)


def test_a_prefix_memory_budget_costs_only_recomputation(tiny_kb, tiny_dataset, monkeypatch):
    """States that do not fit the budget are recomputed: the same evaluations, more module steps."""
    from modulenet_jax.prefix import PrefixSchedule

    archs = _sharing_population(tiny_kb)
    ev, val = _evaluator(tiny_kb, tiny_dataset)
    unlimited = ev.evaluate_many(archs, val)
    steps = _counting_steps(monkeypatch)
    ev.prefix_memory = 0
    assert ev.evaluate_many(archs, val) == unlimited
    assert len(steps) == sum(len(a.modules) for a in archs)  # nothing kept, nothing shared
    # the largest state a network keeps: after its stem or a stage-1 block (fit pass and val batches, 32x32x16)
    first = archs[0]
    state, _ = ev.step(ev.start(first, pad_batches(ev.protocol.batch_size, val.images, val.labels)[0]),
                       first.modules[0], first.junctions(tiny_kb)[0])
    stage1_state = state_bytes(state)
    steps.clear()
    ev.prefix_memory = stage1_state * 3 // 2  # room for one such state, not two
    assert ev.evaluate_many(archs, val) == unlimited
    shared = PrefixSchedule.of([a.modules for a in archs]).modules_computed([len(a.modules) for a in archs])
    assert shared < len(steps) < sum(len(a.modules) for a in archs)  # the budget bounds all kept states together


def test_a_source_costs_its_records_head_included(tiny_kb, tiny_dataset):
    ev, _ = _evaluator(tiny_kb, tiny_dataset)
    recs = tiny_kb.modules_of("cifar_resnet14")
    assert recs[-1].flops == 2 * 64 * 10
    assert ev.cost(Architecture.of_source(tiny_kb, "cifar_resnet14")) == (
        sum(r.params_count for r in recs), sum(r.flops for r in recs))


def test_published_logits_resize_to_the_input_size():
    name, model_name, params, _ = random_models((8,))[0]
    kb = KnowledgeBase.build([(name, model_name, params, "random")], input_size=40)
    model = zoo.get_model(model_name)
    images = uint8_images(0, 4)
    mean, std = jnp.asarray(model.mean), jnp.asarray(model.std)
    expected = zoo.forward(model, kb.params[name], preprocess(images, mean, std, jnp.float32, 40))
    got = published_logits(kb, name, 40)(images)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    unresized = published_logits(kb, name)(images)
    assert not np.allclose(np.asarray(got), np.asarray(unresized), atol=1e-4)


def test_stitch_targets_are_the_sources_inputs_on_the_first_stitch_images(tiny_kb, tiny_dataset):
    ev, _ = _evaluator(tiny_kb, tiny_dataset)  # 128 fit images, the first 64 stitch images
    model = tiny_kb.source_model("cifar_resnet8")
    targets = ev.source_inputs("cifar_resnet8")
    x = preprocess(ev.fit_images[:64], jnp.asarray(model.mean, jnp.float32), jnp.asarray(model.std, jnp.float32))
    np.testing.assert_array_equal(np.asarray(targets["stem"]), np.asarray(x))


def test_a_non_finite_stitch_is_not_a_finite_fit():
    from modulenet_jax.protocol import ModuleFit, fit_is_finite
    head = {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}
    good = {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}
    bad = {"kernel": jnp.eye(2) * jnp.nan, "bias": jnp.zeros(2)}
    assert bool(fit_is_finite((ModuleFit({}, None), ModuleFit({}, good)), head))
    assert not bool(fit_is_finite((ModuleFit({}, None), ModuleFit({}, bad)), head))


def test_tune_takes_the_protocols_number_of_adam_steps():
    from modulenet_jax import protocol as core
    from modulenet_jax.tune import tune_stitches
    p = Protocol(fit_images=8, stitch_images=8, stitch_steps=4, stitch_lr=0.1)
    x = normal(0, (8, 3))
    labels = jnp.arange(8) % 2
    stitch = {"kernel": jnp.eye(3), "bias": jnp.zeros(3)}
    head = {"kernel": jnp.full((3, 2), 0.1), "bias": jnp.zeros(2)}

    def logits(fits, head, x):
        s = fits[0].stitch
        return (x @ s["kernel"] + s["bias"]) @ head["kernel"] + head["bias"]

    tuned, tuned_head = core.tune(p, logits, (core.ModuleFit({"w": jnp.ones(1)}, stitch),), head, x, labels)
    s, h, _ = tune_stitches(lambda m, s, h, x: logits((core.ModuleFit(m[0], s[0]),), h, x),
                            ({"w": jnp.ones(1)},), (stitch,), head, x, labels, 4, 0.1)
    np.testing.assert_allclose(np.asarray(tuned[0].stitch["kernel"]), np.asarray(s[0]["kernel"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(tuned_head["kernel"]), np.asarray(h["kernel"]), rtol=1e-6)


def test_bn_source_keeps_every_published_statistic_past_a_junction(tiny_kb, tiny_dataset):
    ev, _ = _evaluator(tiny_kb, tiny_dataset, bn="source")
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    g[next(i for i, gene in enumerate(space.genes) if gene.name == "stage2.pos0")] = 0
    arch = space.decode(g)
    assert any(arch.junctions(tiny_kb))
    fitted = ev.fit(arch)
    assert all(_same(u, tiny_kb.module_params(m)) for m, u in zip(arch.modules, fitted.params))


def test_preprocess_maps_255_to_one_before_normalising():
    images = jnp.asarray([[[[0, 128, 255]]]], jnp.uint8)
    x = preprocess(images, jnp.zeros(3), jnp.full(3, 0.5))
    np.testing.assert_allclose(np.asarray(x).ravel(), [0.0, 2 * 128 / 255, 2.0], rtol=1e-6)


def test_preprocess_resizes_bilinearly():
    images = jnp.zeros((1, 2, 2, 3), jnp.uint8).at[:, :, 1].set(255)
    x = preprocess(images, jnp.zeros(3), jnp.ones(3), jnp.float32, 4)
    np.testing.assert_allclose(np.asarray(x)[0, 0, :, 0], [0, 0.25, 0.75, 1], atol=1e-6)


def test_the_compiled_module_fit_is_keyed_by_what_it_reads(tiny_kb):
    """`compiled_fit_module` compiles once per `fit_settings(protocol)`: for every protocol field
    moved off its default, `fit_module` traces to the same program under the protocol as under
    its fit settings (so no field it reads is dropped from the key), and the fields kept change
    the program (so the key is no wider than it needs)."""
    import dataclasses

    from modulenet_jax.protocol import fit_module, fit_settings, numerics
    from modulenet_jax.zoo import op_of

    rec = next(r for r in tiny_kb.records if r.spec.kind == "block" and r.spec.in_channels == r.spec.out_channels)

    def program(protocol):
        x, target = (jnp.zeros((n, rec.input_resolution, rec.input_resolution, rec.spec.in_channels),
                               protocol.jnp_dtype) for n in (32, protocol.stitch_images))
        with numerics(protocol):
            return str(jax.make_jaxpr(lambda p, x, t: fit_module(protocol, op_of(rec.spec), p, x, t, True, None, True))(
                tiny_kb.module_params(rec.id), x, target))

    moved = {"stitch": False, "stitch_images": 16, "stitch_ridge": 0.5, "bn": "source", "head": "ridge",
             "head_l2": 0.5, "head_ridge": 0.5, "head_steps": 3, "fit_images": 32, "batch_size": 7,
             "dtype": "bfloat16", "stitch_steps": 2, "stitch_lr": 0.5, "input_size": 64}
    assert set(moved) == {f.name for f in dataclasses.fields(Protocol)}
    base = Protocol(fit_images=32, stitch_images=24)
    for name, value in moved.items():
        protocol = dataclasses.replace(base, **{name: value})
        assert program(protocol) == program(fit_settings(protocol)), name
        assert (fit_settings(protocol) == fit_settings(base)) == (program(protocol) == program(base)), name
