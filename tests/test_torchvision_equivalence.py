"""Every torchvision zoo model against torchvision's own forward pass (fp32, eval mode).

Random weights with random BatchNorm statistics, biases, norm affines and layer scales
(`modulenet_jax.converters.verify.randomized_model`); every module on torchvision's own input to it and
the whole model end to end must agree within 1e-4 x the output's scale. Every model is
checked at 32x32; one or two per family also at 224x224 (the big variants only at 32 to
keep CI time low).
"""

import numpy as np
import pytest
import torch

from modulenet_jax.converters.torchvision_models import FAMILIES, convert, torch_state_dict
from modulenet_jax.converters.verify import AT_224, TOLERANCE, compare, randomized_model, single_torch_thread
from modulenet_jax import zoo
from modulenet_jax.cost import count_params

TV_MODELS = zoo.list_models("tv_*")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    with single_torch_thread():
        yield


def test_every_family_has_a_224_check():
    assert {zoo.get_model(n).family for n in AT_224} == set(FAMILIES)
    assert set(AT_224) <= set(TV_MODELS)
    assert len(TV_MODELS) == 21


@pytest.mark.parametrize("name", TV_MODELS)
def test_matches_torchvision(name):
    model = randomized_model(name, seed=0)
    params = convert(torch_state_dict(model), name)
    assert count_params(params) == sum(p.numel() for p in model.parameters())
    for size in (32, 224) if name in AT_224 else (32,):
        report = compare(name, size, batch=2, seed=0, model=model, params=params)
        assert len(report.modules) == len(zoo.get_model(name).modules)
        assert not report.failures(), f"{name} at {size}px: {report.failures()}"
        assert report.logits_scale > 0.1  # the random model does not collapse to zero


def test_a_wrong_conversion_is_caught():
    """The comparison can fail: the same params with one BN's statistics swapped do not pass."""
    name = "tv_resnet18"
    model = randomized_model(name, seed=0)
    params = convert(torch_state_dict(model), name)
    bn = params["stage2.block1"]["bn1"]
    params["stage2.block1"]["bn1"] = {**bn, "mean": bn["var"], "var": bn["mean"] ** 2 + 1}
    report = compare(name, 32, seed=0, model=model, params=params)
    assert any(f.startswith("stage2.block1") for f in report.failures())
    assert report.relative() > 100 * TOLERANCE


def test_randomized_model_really_randomizes_batchnorm():
    model = randomized_model("tv_mobilenet_v3_small", seed=3)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var - 1):
        assert float(t.detach().abs().min()) > 0
        assert float(t.detach().std()) > 1e-3
    assert not model.training
    again = randomized_model("tv_mobilenet_v3_small", seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(torch_state_dict(model).values(),
                                                     torch_state_dict(again).values()))
