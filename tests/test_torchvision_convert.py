"""Converters and metadata of the torchvision zoo: published parameter and FLOP counts,
module metadata against traced shapes, refused state_dicts, weights sources, and the pooling
and activation layers against torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision

from modulenet_jax.converters.common import ConversionError
from modulenet_jax.converters.torchvision_models import (convert, load_params, load_state_dict_for,
                                                         torch_state_dict, torchvision_name, weights_enum)
from modulenet_jax import zoo
from modulenet_jax.cost import count_flops, count_params
from modulenet_jax.zoo import layers
from tests.conftest import normal

TV_MODELS = zoo.list_models("tv_*")


def _meta(name):
    return list(torchvision.models.get_model_weights(torchvision_name(name)))[0].meta


@pytest.mark.parametrize("name", TV_MODELS)
def test_metadata_matches_traced_shapes_and_published_counts(name):
    """Channels and reduction of every module agree with its traced output at 224 px;
    parameters equal torchvision's published count; FLOPs / 2 equal its published GFLOPS
    (which count multiply-accumulates, rounded to 3 decimals)."""
    model = zoo.get_model(name)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert count_params(params) == _meta(name)["num_params"]
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    flops = 0
    for spec in model.modules:
        fn = (lambda p, x, spec=spec: zoo.apply_module(spec, p, x)[0])
        assert x.shape[-1] == spec.in_channels
        flops += count_flops(fn, params[spec.name], x)
        x = jax.eval_shape(fn, params[spec.name], x)
        if spec.kind != "head":
            assert x.shape == (1, 224 // spec.reduction, 224 // spec.reduction, spec.out_channels), spec.name
    assert x.shape == (1, model.num_classes)
    assert abs(flops / 2e9 - _meta(name)["_ops"]) <= 5e-4 + 2e-3 * _meta(name)["_ops"]


@pytest.mark.parametrize("name", TV_MODELS)
def test_stages_are_resolution_groups(name):
    blocks = zoo.get_model(name).blocks
    stages = [b.stage for b in blocks]
    assert stages == sorted(stages) and set(stages) == set(range(1, max(stages) + 1))
    for s in set(stages):
        group = [b for b in blocks if b.stage == s]
        assert [b.index for b in group] == list(range(len(group)))
        assert len({b.reduction for b in group}) == 1, f"stage {s} spans several resolutions"
        assert all(b.stride == 1 for b in group[1:]), "only a stage's first block may be strided"


@pytest.fixture(scope="module")
def resnet18_state_dict():
    torch.manual_seed(0)
    return torch_state_dict(torchvision.models.resnet18())


def test_extra_key_is_named(resnet18_state_dict):
    sd = {**resnet18_state_dict, "layer2.0.conv3.weight": np.zeros((1, 1, 1, 1), np.float32)}
    with pytest.raises(ConversionError, match=r"unexpected key 'layer2\.0\.conv3\.weight'"):
        convert(sd, "tv_resnet18")


def test_missing_key_is_named(resnet18_state_dict):
    sd = dict(resnet18_state_dict)
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(ConversionError, match=r"no tensor for stage3\.block1/bn2/var"):
        convert(sd, "tv_resnet18")


def test_wrong_shape_is_named(resnet18_state_dict):
    sd = {**resnet18_state_dict, "fc.weight": resnet18_state_dict["fc.weight"][:10]}
    with pytest.raises(ConversionError, match=r"key 'fc\.weight' has shape \(10, 512\)"):
        convert(sd, "tv_resnet18")


def test_other_architecture_is_refused_naming_the_model_it_holds(resnet18_state_dict):
    held = r": it holds tv_resnet18, not {0}; name tv_resnet18 instead$"
    with pytest.raises(ConversionError, match=r"tv_resnet34: the state_dict has no tensor for stage1\.block2.*"
                                              + held.format("tv_resnet34")):
        convert(resnet18_state_dict, "tv_resnet34")
    with pytest.raises(ConversionError, match=r"tv_resnet50: key 'fc\.weight' has shape \(1000, 512\).*"
                                              + held.format("tv_resnet50")):
        convert(resnet18_state_dict, "tv_resnet50")
    torch.manual_seed(0)
    vgg = torch_state_dict(torchvision.models.vgg11())
    with pytest.raises(ConversionError, match=r"tv_vgg11_bn: .*features\.\d+\..*: it holds tv_vgg11, not tv_vgg11_bn"):
        convert(vgg, "tv_vgg11_bn")
    del vgg["classifier.6.bias"]  # of no registered model: none named
    with pytest.raises(ConversionError, match=r"tv_vgg11_bn: [^;]*$"):
        convert(vgg, "tv_vgg11_bn")


def test_densenet_legacy_key_names_convert_the_same():
    """The published DenseNet files name `denselayer1.norm.1.weight` what the module calls
    `denselayer1.norm1.weight`; both convert to the same params."""
    torch.manual_seed(0)
    sd = torch_state_dict(torchvision.models.densenet121())
    legacy = {k.replace(".norm1.", ".norm.1.").replace(".conv2.", ".conv.2."): v for k, v in sd.items()}
    assert legacy.keys() != sd.keys()
    a, b = convert(sd, "tv_densenet121"), convert(legacy, "tv_densenet121")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))


def test_local_pth_file(tmp_path, resnet18_state_dict):
    path = tmp_path / "r18.pth"
    torch.save({k: torch.from_numpy(v) for k, v in resnet18_state_dict.items()}, path)
    params, label = load_params("tv_resnet18", str(path))
    assert label == "r18.pth"
    direct = convert(resnet18_state_dict, "tv_resnet18")
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, params, direct))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": object()}, path)
    with pytest.raises(ConversionError, match="refused to load"):
        load_params("tv_resnet18", str(path))


def test_random_weights_follow_the_seed():
    a, _ = load_state_dict_for("tv_mobilenet_v3_small", "random", seed=1)
    b, label = load_state_dict_for("tv_mobilenet_v3_small", "random", seed=1)
    c, _ = load_state_dict_for("tv_mobilenet_v3_small", "random", seed=2)
    assert label == "random (seed 1)"
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["features.0.0.weight"], c["features.0.0.weight"])
    with pytest.raises(ValueError, match="random weights are drawn with a seed"):
        load_state_dict_for("tv_mobilenet_v3_small", "random")


def test_weights_names():
    assert str(weights_enum("tv_resnet18", "DEFAULT")) == "ResNet18_Weights.IMAGENET1K_V1"
    assert weights_enum("tv_resnet50", "IMAGENET1K_V2") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert weights_enum("tv_vgg11_bn", "VGG11_BN_Weights.IMAGENET1K_V1").url.endswith(".pth")
    with pytest.raises(ValueError, match="no torchvision weights 'IMAGENET22K'"):
        weights_enum("tv_resnet18", "IMAGENET22K")
    with pytest.raises(ValueError, match="are not weights of tv_resnet18"):
        weights_enum("tv_resnet18", "ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="not a torchvision zoo model"):
        torchvision_name("cifar_resnet20")


def test_a_local_weights_file_with_a_wrong_hash_is_refused(tmp_path):
    """A file named like torchvision's download (`resnet18-f37072fd.pth`) must hash to that prefix."""
    name = weights_enum("tv_resnet18", "DEFAULT").url.rsplit("/", 1)[-1]
    torch.save({"x": torch.zeros(1)}, tmp_path / name)
    with pytest.raises(ValueError, match="SHA-256 does not start with f37072fd"):
        load_state_dict_for("tv_resnet18", "DEFAULT", weights_dirs=(tmp_path,))


# -- layers against torch -------------------------------------------------------------------

def _nchw(x):
    return torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())


def _close(a, t):
    np.testing.assert_allclose(np.asarray(a), t.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size,kernel,stride,padding,ceil", [
    (7, 3, 2, 1, False), (7, 3, 2, 1, True), (8, 3, 2, 0, True), (6, 2, 2, 0, True), (5, 2, 2, 0, True),
    (14, 3, 2, 1, True), (9, 3, 3, 1, True), (112, 3, 2, 1, False)])
def test_max_pool_matches_torch(size, kernel, stride, padding, ceil):
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    got = layers.max_pool(jnp.asarray(x), kernel, stride, padding, ceil)
    _close(got, torch.nn.functional.max_pool2d(_nchw(x), kernel, stride, padding, ceil_mode=ceil))


@pytest.mark.parametrize("size,out", [(7, 7), (1, 7), (2, 7), (5, 7), (10, 7), (14, 7), (13, 3), (4, 1)])
def test_adaptive_avg_pool_matches_torch(size, out):
    x = np.random.default_rng(size).normal(size=(2, size, size, 4)).astype(np.float32)
    _close(layers.adaptive_avg_pool(jnp.asarray(x), out), torch.nn.functional.adaptive_avg_pool2d(_nchw(x), out))


def test_avg_pool_and_activations_match_torch():
    x = np.random.default_rng(0).normal(scale=4.0, size=(2, 9, 9, 5)).astype(np.float32)
    _close(layers.avg_pool(jnp.asarray(x), 2, 2), torch.nn.functional.avg_pool2d(_nchw(x), 2, 2))
    for name, fn in [("hardswish", torch.nn.functional.hardswish), ("hardsigmoid", torch.nn.functional.hardsigmoid),
                     ("silu", torch.nn.functional.silu), ("gelu", torch.nn.functional.gelu),
                     ("relu6", torch.nn.functional.relu6)]:
        _close(layers.activation(name)(jnp.asarray(x)), fn(_nchw(x)))
    with pytest.raises(ValueError, match="unknown activation"):
        layers.activation("swish2")


def test_layer_norm_matches_torch():
    x = np.random.default_rng(1).normal(loc=3.0, size=(2, 4, 4, 6)).astype(np.float32)
    w = np.random.default_rng(2).normal(size=6).astype(np.float32)
    b = np.random.default_rng(3).normal(size=6).astype(np.float32)
    got = layers.layer_norm({"scale": jnp.asarray(w), "bias": jnp.asarray(b)}, jnp.asarray(x), 1e-6)
    ref = torch.nn.functional.layer_norm(torch.from_numpy(x), (6,), torch.from_numpy(w), torch.from_numpy(b), 1e-6)
    np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=1e-5, atol=1e-5)


def test_jit_and_eager_forward_agree():
    """The registry's eager `forward` and the evaluator's compiled per-module calls agree."""
    from modulenet_jax.assemble import run_module

    model = zoo.get_model("tv_resnet18")
    params = model.init(jax.random.PRNGKey(0))
    x = normal(1, (1, 32, 32, 3))
    eager = zoo.forward(model, params, x)
    h = x
    for spec in model.modules:
        h, _ = run_module(spec, params[spec.name], h)
    np.testing.assert_allclose(np.asarray(h), np.asarray(eager), rtol=1e-5, atol=1e-5 * float(jnp.abs(eager).max()))
    assert bool(jnp.all(jnp.isfinite(eager)))


def test_torch_stays_in_converters():
    """Of the installed package, only `modulenet_jax.converters` and the benchmarks' PyTorch
    baselines import torch; the library's own files never do, wherever the subpackages live
    (beside it in a checkout, inside it when installed)."""
    import pathlib
    import re

    import modulenet_jax
    import modulenet_jax.benchmarks
    import modulenet_jax.converters

    pattern = re.compile(r"^\s*(import torch|from torch)", re.MULTILINE)
    optional = [pathlib.Path(m.__file__).parent for m in (modulenet_jax.converters, modulenet_jax.benchmarks)]
    assert [p.name for p in optional[0].glob("*.py") if pattern.search(p.read_text())]  # the pattern sees torch
    library = pathlib.Path(modulenet_jax.__file__).parent
    offenders = [str(p) for p in library.rglob("*.py")
                 if not any(p.is_relative_to(d) for d in optional) and pattern.search(p.read_text())]
    assert not offenders
