"""Knowledge base: cutting models into modules, metadata, save/load round trip."""

import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax import zoo
from modulenet_jax.assemble import preprocess
from modulenet_jax.errors import UserError
from modulenet_jax.protocol import FittedNetwork
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture
from tests.conftest import random_models, uint8_images


def test_records_metadata(tiny_kb):
    recs = tiny_kb.modules_of("cifar_resnet14")
    assert [r.spec.name for r in recs] == ["stem"] + [f"stage{s}.block{i}" for s in (1, 2, 3) for i in (0, 1)] + ["head"]
    by = {r.spec.name: r for r in recs}
    assert (by["stage2.block0"].spec.in_channels, by["stage2.block0"].spec.out_channels, by["stage2.block0"].spec.stride) == (16, 32, 2)
    assert (by["stage2.block0"].input_resolution, by["stage2.block0"].output_resolution) == (32, 16)
    assert by["stage3.block1"].output_resolution == 8
    # conv 3x3 16->16 twice at 32x32: 2 * 2 * 32*32*9*16*16 FLOPs
    assert by["stage1.block0"].flops == 2 * 2 * 32 * 32 * 9 * 16 * 16
    assert by["stage1.block0"].params_count == 2 * (9 * 16 * 16) + 2 * (2 * 16)
    assert by["head"].params_count == 64 * 10 + 10
    assert tiny_kb.predecessor("cifar_resnet14/stage2.block0") == "cifar_resnet14/stage1.block1"
    assert tiny_kb.predecessor("cifar_resnet14/stem") is None


def test_total_params_and_flops_equal_the_whole_model(tiny_kb):
    model = zoo.get_model("cifar_resnet14")
    from modulenet_jax.cost import count_flops, count_params

    params = tiny_kb.params["cifar_resnet14"]
    recs = tiny_kb.modules_of("cifar_resnet14")
    assert sum(r.params_count for r in recs) == count_params(params)
    assert sum(r.flops for r in recs) == count_flops(lambda p, x: zoo.forward(model, p, x), params,
                                                    jnp.zeros((1, 32, 32, 3)))


def test_save_load_round_trip(tiny_kb, tmp_path):
    tiny_kb.save(tmp_path / "kb")
    kb = KnowledgeBase.load(tmp_path / "kb")
    assert kb.records == tiny_kb.records
    assert kb.sources == tiny_kb.sources
    for a, b in zip(jax.tree_util.tree_leaves(kb.params), jax.tree_util.tree_leaves(tiny_kb.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp_path / "kb" / "index.json").read_text().startswith("{")


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a knowledge base"):
        KnowledgeBase.load(tmp_path)


def test_cut_data_files_are_one_error_and_nothing_after(tiny_kb, tmp_path, monkeypatch):
    """Data files of the params cut short (the manifest whole): the error names a damaged array,
    and no read is left pending to raise in the background afterwards (orbax, reading alone,
    closed its event loop under pending reads, whose callbacks then printed tracebacks)."""
    tiny_kb.save(tmp_path / "kb")
    data = [f for f in (tmp_path / "kb" / "params").rglob("*") if f.is_file() and f.parent.name == "d"
            and f.parent.parent.name.startswith("ocdbt.process")]
    assert data
    for f in data:
        f.write_bytes(f.read_bytes()[:10])
    late = []
    monkeypatch.setattr(sys, "unraisablehook", late.append)
    with pytest.raises(UserError, match=r"params cannot be read \(array \S+ and \d+ more: .*cut short or changed; "
                                        r"build the knowledge base again"):
        KnowledgeBase.load(tmp_path / "kb")
    time.sleep(1)
    assert late == []


def test_build_refuses_bad_params():
    name, model, params, label = random_models((8,))[0]
    params = dict(params)
    params["stem"] = {**params["stem"], "conv": {"kernel": jnp.zeros((3, 3, 3, 8))}}
    with pytest.raises(ValueError, match="stem.*conv.*kernel.*shape"):
        KnowledgeBase.build([(name, model, params, label)])


def test_source_modules_in_order_reproduce_the_model(tiny_kb):
    """Assembling a source's own modules (no junction, so no stitch) gives the model's output."""
    source = "cifar_resnet14"
    model = zoo.get_model(source)
    arch = Architecture.of_source(tiny_kb, source)
    assert arch.num_junctions(tiny_kb) == 0
    recs = [tiny_kb.record(m) for m in arch.modules]
    head = tiny_kb.module_params(f"{source}/head")["fc"]
    mean, std = jnp.asarray(model.mean), jnp.asarray(model.std)
    net = FittedNetwork(tuple(r.spec for r in recs), tuple(tiny_kb.module_params(m) for m in arch.modules),
                        (None,) * len(recs), head, mean, std)
    images = uint8_images(0, 4)
    expected = zoo.forward(model, tiny_kb.params[source], preprocess(images, mean, std))
    np.testing.assert_allclose(np.asarray(net.logits(images)), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_sources_keep_the_classes_they_were_trained_on(tmp_path):
    names = tuple("abcdefghij")
    kb = KnowledgeBase.build(random_models(), classes={"cifar_resnet8": names})
    assert kb.source("cifar_resnet8").classes == names and kb.source("cifar_resnet14").classes is None
    loaded = KnowledgeBase.load(kb.save(tmp_path / "kb"))
    assert loaded.source("cifar_resnet8").classes == names and loaded.source("cifar_resnet14").classes is None


def test_load_refuses_params_that_are_not_the_models(tiny_kb, tmp_path):
    from modulenet_jax.checkpoints import save_tree
    from modulenet_jax.errors import UserError
    path = tiny_kb.save(tmp_path / "kb")
    params = jax.tree_util.tree_map(np.asarray, tiny_kb.params)
    params["cifar_resnet8"]["stem"]["extra"] = np.zeros(3, np.float32)
    save_tree(path / "params", params)
    with pytest.raises(UserError, match="unexpected param stem/extra"):
        KnowledgeBase.load(path)


def test_modules_of_an_unknown_source_is_an_error(tiny_kb):
    from modulenet_jax.errors import UserError
    with pytest.raises(UserError, match="no source 'cifar_resnet99'.*cifar_resnet8, cifar_resnet14"):
        tiny_kb.modules_of("cifar_resnet99")


def test_build_refuses_an_unexpected_param():
    from modulenet_jax.errors import UserError
    name, model, params, label = random_models((8,))[0]
    params = {**params, "stem": {**params["stem"], "extra": jnp.zeros(3)}}
    with pytest.raises(UserError, match="unexpected param stem/extra"):
        KnowledgeBase.build([(name, model, params, label)])
