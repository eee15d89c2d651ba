"""The CIFAR ResNet port: module-by-module equivalence with PyTorch, and the exact reference
counts on the real CIFAR-10 JPEG test split (../shared/README.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from modulenet_jax.converters.cifar_resnet import convert_file
from modulenet_jax import zoo
from modulenet_jax.assemble import preprocess
from modulenet_jax.cost import count_flops, count_params
from tests.conftest import CHECKPOINTS, needs_shared, normal
from tests.torch_cifar_resnet import CifarResNet, load

# Reference: ../shared/README.md (correct of 10,000 / even / odd test positions, fp32).
REFERENCE = {20: (8103, 4050, 4053), 32: (8256, 4114, 4142), 44: (8267, 4112, 4155), 56: (8320, 4156, 4164)}
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}
TOLERANCE = 1e-4  # max |jax - torch| relative to max |torch| per module output


def _nchw(x):
    return torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)


def _nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy() if t.ndim == 4 else t.detach().numpy()


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 56, 110])
def test_registry_param_counts_and_shapes(depth):
    model = zoo.get_model(f"cifar_resnet{depth}")
    params = model.init(jax.random.PRNGKey(0))
    tmodel = CifarResNet(depth)
    assert count_params(params) == sum(p.numel() for p in tmodel.parameters())
    if depth in PARAMS:
        assert count_params(params) == PARAMS[depth]
    x = jnp.zeros((2, 32, 32, 3))
    logits, inter = zoo.forward(model, params, x, return_intermediates=True)
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    for spec in model.modules[:-1]:
        assert inter[spec.name].shape[-1] == spec.out_channels
        assert inter[spec.name].shape[1] == 32 // spec.reduction


def test_flops_of_resnet20():
    model = zoo.get_model("cifar_resnet20")
    params = model.init(jax.random.PRNGKey(0))
    flops = count_flops(lambda p, x: zoo.forward(model, p, x), params, jnp.zeros((1, 32, 32, 3)))
    # 3x3 convs + the linear layer, multiply-accumulates x 2 (40.55 M MACs, as usually quoted ~41 M)
    assert flops == 2 * 40_551_040


def test_jit_and_no_jit_agree():
    model = zoo.get_model("cifar_resnet14")
    params = model.init(jax.random.PRNGKey(1))
    x = normal(2, (2, 32, 32, 3))
    a = zoo.forward(model, params, x)
    b = jax.jit(lambda p, x: zoo.forward(model, p, x))(params, x)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@needs_shared
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_modules_match_pytorch(depth, cifar_test):
    images, _, _ = cifar_test
    name, params = convert_file(CHECKPOINTS[depth])
    assert name == f"cifar_resnet{depth}"
    model = zoo.get_model(name)
    tmodel = load(CHECKPOINTS[depth], depth)
    batch = images[::625]  # 16 real images across all classes
    x = preprocess(jnp.asarray(batch), jnp.asarray(model.mean), jnp.asarray(model.std))
    _, inter = zoo.forward(model, jax.tree_util.tree_map(jnp.asarray, params), x, return_intermediates=True)
    t = _nchw(x)
    with torch.no_grad():
        for mod_name, module in tmodel.modules_in_order():
            t = module(t)
            ref = _nhwc(t)
            diff = np.max(np.abs(np.asarray(inter[mod_name]) - ref))
            assert diff <= TOLERANCE * np.max(np.abs(ref)), (mod_name, diff)


@needs_shared
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_reference_counts_exact(depth, real_kb, cifar_test):
    """Each source model as published reproduces ../shared/README.md's counts in fp32: ResNet-20
    on all 10,000 test images (and so both halves), the deeper three on the odd half, the final
    table's test set (half the CPU time: the four take 140 s of it on the whole split)."""
    from modulenet_jax.evaluate import published_logits

    images, labels, classes = cifar_test
    assert len(labels) == 10_000 and classes[0] == "airplane" and classes[-1] == "truck"
    logits_fn = published_logits(real_kb, f"cifar_resnet{depth}")
    start, step = (0, 1) if depth == 20 else (1, 2)
    images, labels = images[start::step], labels[start::step]
    preds = np.concatenate([np.asarray(jnp.argmax(logits_fn(jnp.asarray(images[i:i + 500])), -1))
                            for i in range(0, len(labels), 500)])
    ok = preds == labels
    total, even, odd = REFERENCE[depth]
    if depth == 20:
        assert (int(ok.sum()), int(ok[0::2].sum()), int(ok[1::2].sum())) == (total, even, odd)
    else:
        assert len(ok) == 5_000 and int(ok.sum()) == odd
    assert count_params(real_kb.params[f"cifar_resnet{depth}"]) == PARAMS[depth]


@pytest.mark.parametrize("name", ["stem", "stage1.block0", "stage2.block0"])
def test_folded_batch_norm_is_the_same_function(name):
    """`zoo.fold_batch_norms`: every BatchNorm in its conv, no BatchNorm params left, the same
    outputs up to float rounding; a head (no conv-BatchNorm pair) comes back unchanged."""
    model = zoo.get_model("cifar_resnet14")
    params = model.init(jax.random.PRNGKey(3))
    spec = model.module(name)
    side = 32 * spec.stride // spec.reduction  # the module's input resolution
    x = normal(4, (4, side, side, spec.in_channels))
    folded = zoo.fold_batch_norms(spec.op, spec.static, params[name])
    assert not any(k.startswith("bn") for k in folded) and all("bias" in folded[k] for k in folded)
    y, _ = zoo.apply_module(spec, params[name], x)
    y_folded, _ = zoo.apply_module(spec, folded, x)
    np.testing.assert_allclose(np.asarray(y_folded), np.asarray(y), rtol=1e-5, atol=1e-5)
    head = model.module("head")
    assert zoo.fold_batch_norms(head.op, head.static, params["head"]) is params["head"]
