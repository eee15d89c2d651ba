"""Torchvision models cut into a knowledge base: records, parameter counts against torch, and a
model re-assembled from its own modules reproducing torchvision's output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from modulenet_jax.converters.knowledge import build_from_torchvision
from modulenet_jax.converters.torchvision_models import convert, torch_state_dict
from modulenet_jax.converters.verify import TOLERANCE, randomized_model, single_torch_thread
from modulenet_jax import zoo
from modulenet_jax.assemble import run_module
from modulenet_jax.cost import count_params
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture

pytestmark = pytest.mark.xdist_group("torchvision_knowledge")  # module fixtures built once (make test: --dist loadgroup)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def kb():
    """torchvision's own random initialisation, converted, cut at 64 px."""
    return build_from_torchvision(("tv_resnet50", "tv_mobilenet_v3_small", "tv_densenet121", "tv_convnext_tiny"),
                                  "random", input_size=64, seed=0)


def test_records_carry_the_metadata(kb):
    for source in kb.sources:
        model = zoo.get_model(source)
        recs = kb.modules_of(source)
        assert [r.spec for r in recs] == list(model.modules)
        for r in recs[:-1]:
            assert r.output_resolution == 64 // r.spec.reduction
            assert r.input_resolution == 64 // (r.spec.reduction // r.spec.stride)
            assert r.params_count == count_params(kb.module_params(r.id)) > 0
            assert r.flops > 0
        assert recs[-1].spec.kind == "head" and recs[-1].output_resolution == 1
    assert kb.sources["tv_mobilenet_v3_small"].weights == "random (seed 1)"


@pytest.mark.parametrize("source", ["tv_resnet50", "tv_mobilenet_v3_small", "tv_densenet121", "tv_convnext_tiny"])
def test_parameter_counts_match_torch(kb, source):
    model = torchvision.models.get_model(source[3:])
    assert sum(r.params_count for r in kb.modules_of(source)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_mobilenet_v3_small", "tv_densenet121"])
def test_reassembled_from_its_own_modules_reproduces_the_model(name):
    """The source's stem and blocks taken back out of the knowledge base (no junction, so no
    stitch) followed by its own head give torchvision's logits."""
    model = randomized_model(name, seed=1)
    kb = KnowledgeBase.build([(name, name, convert(torch_state_dict(model), name), "random")], input_size=32)
    arch = Architecture.of_source(kb, name)
    assert arch.num_junctions(kb) == 0
    assert len(arch.modules) == len(zoo.get_model(name).modules) - 1
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    h = jnp.asarray(x)
    for mid in arch.modules + (f"{name}/head",):
        h, _ = run_module(kb.record(mid).spec, kb.module_params(mid), h)
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.max(np.abs(np.asarray(h) - ref)) <= TOLERANCE * np.max(np.abs(ref))


def test_save_and_load_round_trip(kb, tmp_path):
    kb.save(tmp_path / "kb")
    back = KnowledgeBase.load(tmp_path / "kb")
    assert back.records == kb.records and back.input_size == 64
    a, b = kb.params["tv_convnext_tiny"], back.params["tv_convnext_tiny"]
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
