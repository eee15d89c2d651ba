"""The mixed-family search space: validity, decoding only where reduction and resolution fit,
sources encoding to themselves, its size against enumeration, and a search run over it."""

import itertools

import jax
import numpy as np
import pytest

from modulenet_jax import zoo
from modulenet_jax.config import load_config
from modulenet_jax.data import Dataset, Split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.protocol import Protocol
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.mixed_space import MixedSpace
from modulenet_jax.search.runner import Run, make_space, search
from modulenet_jax.space import Architecture, GenotypeError

pytestmark = pytest.mark.xdist_group("mixed_space")  # module fixtures built once (make test: --dist loadgroup)

SOURCES = ("tv_resnet18", "tv_mobilenet_v3_small", "cifar_resnet8")  # stems at reductions 4, 2 and 1


def _kb(names, size):
    return KnowledgeBase.build([(n, n, zoo.get_model(n).init(jax.random.PRNGKey(i)), "jax init")
                                for i, n in enumerate(names)], input_size=size)


@pytest.fixture(scope="module")
def kb():
    return _kb(SOURCES, 32)


def _check_chain(kb, arch: Architecture):
    recs = [kb.record(m) for m in arch.modules]
    assert recs[0].spec.kind == "stem" and all(r.spec.kind == "block" for r in recs[1:])
    for prev, rec in zip(recs, recs[1:]):
        assert rec.spec.reduction // rec.spec.stride == prev.spec.reduction, (prev.id, rec.id)
        assert rec.input_resolution == prev.output_resolution, (prev.id, rec.id)


def test_samples_are_valid_and_only_join_fitting_modules(kb):
    space = MixedSpace(kb, max_depth=3, min_reduction=16)
    rng = np.random.default_rng(0)
    families, junctions = set(), 0
    for _ in range(300):
        g = space.sample(rng)
        space.validate(g)
        assert np.array_equal(space.repair(g), g)
        arch = space.decode(g)
        _check_chain(kb, arch)
        assert kb.record(arch.modules[-1]).spec.reduction >= 16
        assert space.canonical(g) == space.canonical(space.repair(np.array(space.canonical(g))))
        families |= {kb.record(m).source for m in arch.modules}
        junctions += arch.num_junctions(kb)
    assert families == set(SOURCES) and junctions > 0


def test_repair_makes_any_vector_valid(kb):
    space = MixedSpace(kb, max_depth=2, min_reduction=8)
    rng = np.random.default_rng(1)
    for _ in range(200):
        raw = rng.integers(-3, space.upper + 4)
        g = space.repair(raw)
        assert space.is_valid(g)
        _check_chain(kb, space.decode(g))


def test_invalid_genotypes_are_named(kb):
    space = MixedSpace(kb, max_depth=2, min_reduction=16)
    g = space.encode_source("tv_resnet18")
    with pytest.raises(GenotypeError, match="vector of"):
        space.validate(g[:-1])
    bad = g.copy()
    bad[0] = space.upper[0] + 1
    with pytest.raises(GenotypeError, match="gene stem"):
        space.validate(bad)
    ends_early = g.copy()
    ends_early[space.genes.index(next(x for x in space.genes if x.name == "r8.depth"))] = 0
    with pytest.raises(GenotypeError, match="below min_reduction 16"):
        space.validate(ends_early)


def test_sources_encode_to_themselves(kb):
    space = MixedSpace(kb, min_reduction=16)
    for source in SOURCES:
        fits = space.fits_source(source)
        assert fits == (source != "cifar_resnet8")  # it ends at reduction 4
        if fits:
            g = space.encode_source(source)
            assert space.decode(g).modules == Architecture.of_source(kb, source).modules
            assert space.decode(g).num_junctions(kb) == 0
    assert MixedSpace(kb, min_reduction=4).fits_source("cifar_resnet8")
    with pytest.raises(ValueError, match="at most 1 there"):
        MixedSpace(kb, max_depth=1).encode_source("tv_resnet18")


def test_continue_run_value_follows_the_source(kb):
    """Setting a choice gene to `continue_run_value` picks the block that follows the previous
    block inside its own source: no junction there, and nothing else changes."""
    space = MixedSpace(kb, max_depth=3, min_reduction=16)
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(60):
        g = space.sample(rng)
        arch = space.decode(g)
        for i, gene in enumerate(space.genes):
            value = space.continue_run_value(g, i)
            if value is None:
                continue
            assert gene.kind == "choice"
            h = g.copy()
            h[i] = value
            new = space.decode(h)
            assert len(new.modules) == len(arch.modules)
            changed = [k for k, (a, b) in enumerate(zip(arch.modules, new.modules)) if a != b]
            assert len(changed) <= 1
            if changed:
                assert not new.junctions(kb)[changed[0]]
                checked += 1
    assert checked > 30


def test_size_matches_enumeration():
    kb = _kb(("cifar_resnet8", "tv_mobilenet_v3_small"), 32)
    for min_reduction in (None, 8):
        space = MixedSpace(kb, max_depth=1, min_reduction=min_reduction)
        ranges = [range(g.low, g.high + 1) for g in space.genes]
        assert np.prod([len(r) for r in ranges]) < 300_000
        seen = {space.canonical(g) for g in itertools.product(*ranges) if space.is_valid(np.array(g))}
        assert len(seen) == space.size() > 10


def test_disagreeing_resolutions_are_refused():
    kb = _kb(("tv_resnet18", "tv_convnext_tiny"), 56)
    with pytest.raises(ValueError, match=r"disagree on the resolution at reduction 16.*divisible by 32"):
        MixedSpace(kb)


def _dataset(n_train=96, n_test=64, size=32, seed=0):
    rng = np.random.default_rng(seed)

    def split(n, name):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        images[..., 0] = np.clip(images[..., 0] // 2 + 12 * labels[:, None, None], 0, 255)  # learnable
        return Split(images, labels.astype(np.int32), 10, f"synthetic:{name}")

    return Dataset("synthetic", split(n_train, "train"), split(n_test, "test"))


def test_evaluator_stitches_across_families(kb):
    space = MixedSpace(kb, max_depth=2, min_reduction=16)
    protocol = Protocol(fit_images=64, stitch_images=32, head="ridge", batch_size=32)  # one batch shape
    ds = _dataset()
    ev = Evaluator(kb, protocol, ds.train.take(np.arange(64), "fit"))
    rng = np.random.default_rng(3)
    arch = space.decode(space.sample(rng))
    while not any(j and kb.record(a).spec.in_channels != kb.record(b).spec.out_channels
                  for j, a, b in zip(arch.junctions(kb)[1:], arch.modules[1:], arch.modules)):
        arch = space.decode(space.sample(rng))
    fitted = ev.fit(arch)
    for prev, mid, st in zip((None,) + arch.modules, arch.modules, fitted.stitches):
        if st is not None:
            assert st["kernel"].shape == (kb.record(prev).spec.out_channels, kb.record(mid).spec.in_channels)
    result = ev.evaluate(arch, ds.test)
    assert result.total == 64 and result.junctions == arch.num_junctions(kb) > 0
    assert result.params > sum(kb.record(m).params_count for m in arch.modules)


def test_search_runs_on_the_mixed_space(kb, tmp_path):
    config = load_config("cifar10_torchvision", [
        "knowledge.input_size=32", "protocol.fit_images=64", "protocol.stitch_images=32", "protocol.head=ridge",
        "protocol.batch_size=32", "data.val_size=32", "search.population=4", "search.generations=2",
        "space.max_depth=1", "space.min_reduction=8"])
    run = Run.from_config(config, kb=kb, dataset=_dataset())
    assert isinstance(run.space, MixedSpace)
    assert make_space(kb, config.space).describe() == run.space.describe()
    result = search(run, tmp_path / "run", log=lambda m: None)
    assert result["evaluated"] >= 4 and result["front"]
    for rec in result["front"]:
        assert set(rec) >= {"error", "params", "flops", "modules"}


def test_levels_are_crossover_groups_and_the_loop_evaluates_them(kb, monkeypatch):
    """A mixed space cannot be fused: where `auto` would pick the fused program (an
    accelerator), it falls back to the per-module path and says why; `fused` is refused."""
    import ml_collections

    from modulenet_jax.search import runner

    space = MixedSpace(kb, max_depth=2)
    assert [g.stage for g in space.genes if g.kind == "stem"] == [0]
    assert {g.stage for g in space.genes if g.kind != "stem"} == set(range(1, len(space.levels) + 1))
    monkeypatch.setattr(runner, "choose_strategy", lambda strategy: "fused")  # as on a GPU
    config = ml_collections.ConfigDict({"evaluator": {"strategy": "auto", "chunk_size": None}})
    logged = []
    assert runner.make_population(config, space, None, None, None, logged.append) is None
    assert logged == ["evaluating module by module: the fused program cannot run this space "
                      "(a mixed-family space has slots whose candidates differ in shape)"]
    config.evaluator.strategy = "fused"
    with pytest.raises(ValueError, match="evaluator.strategy=fused cannot run this space"):
        runner.make_population(config, space, None, None, None, logged.append)
