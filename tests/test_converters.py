"""Converter safety: mismatched state_dicts name the offending key; pickled code is refused;
and nothing outside converters/ (and the PyTorch baselines) imports torch."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modulenet_jax.converters.cifar_resnet import convert
from modulenet_jax.converters.common import TRANSPOSE_TILE, ConversionError, linear_kernel, load_state_dict
from tests.conftest import CHECKPOINTS, needs_shared
from tests.torch_cifar_resnet import CifarResNet

ROOT = Path(__file__).resolve().parents[1]


def _state_dict(depth=20):
    return {k: v.numpy() for k, v in CifarResNet(depth).state_dict().items()}


def test_random_state_dict_converts():
    name, params = convert(_state_dict())
    assert name == "cifar_resnet20" and params["stage2.block0"]["conv1"]["kernel"].shape == (3, 3, 16, 32)


@pytest.mark.parametrize("shape", [(10, 64), (TRANSPOSE_TILE, 3), (TRANSPOSE_TILE + 7, 2 * TRANSPOSE_TILE + 1)])
def test_linear_kernels_are_transposed_tile_by_tile_into_a_new_array(shape):
    w = np.random.default_rng(0).standard_normal(shape, np.float32)
    k = linear_kernel(w)
    assert np.array_equal(k, w.T) and k.flags.c_contiguous and not np.may_share_memory(k, w)


def test_converted_params_never_alias_the_state_dict():
    """Even where the transform is the identity (BatchNorm, biases): the state_dict's arrays are
    the caller's (`tensor.numpy()` shares the tensor's memory)."""
    state_dict = _state_dict()
    _, params = convert(state_dict)
    assert not np.may_share_memory(params["stem"]["bn"]["scale"], state_dict["bn1.weight"])
    state_dict["bn1.weight"][:] = 7
    assert not (params["stem"]["bn"]["scale"] == 7).any()


def test_wrong_shape_names_the_key():
    sd = _state_dict()
    sd["layer2.0.conv1.weight"] = np.zeros((32, 8, 3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"key 'layer2.0.conv1.weight' has shape \(32, 8, 3, 3\)"):
        convert(sd)


def test_missing_and_unexpected_keys_are_named():
    sd = _state_dict()
    del sd["layer3.2.bn2.running_var"]
    with pytest.raises(ConversionError, match="no tensor for stage3.block2/bn2/var"):
        convert(sd)
    sd = _state_dict()
    sd["layer4.0.conv1.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(ConversionError, match="unexpected key 'layer4.0.conv1.weight'"):
        convert(sd)


def test_depth_mismatch_is_refused_naming_the_model_it_holds():
    with pytest.raises(ConversionError, match=r"unexpected key 'layer1.3.*: it holds cifar_resnet32, not cifar_resnet20; "
                                              r"name cifar_resnet32 instead$"):
        convert(_state_dict(32), "cifar_resnet20")
    with pytest.raises(ConversionError, match=r"no tensor for .* \(60 params missing\): it holds cifar_resnet20, not cifar_resnet32"):
        convert(_state_dict(20), "cifar_resnet32")
    sd = _state_dict(32)
    sd["layer1.0.conv1.weight"] = np.zeros((16, 16, 1, 1), np.float32)  # of no registered model: no model named
    with pytest.raises(ConversionError, match=r"key 'layer1.0.conv1.weight' has shape \(16, 16, 1, 1\)[^:]*$"):
        convert(sd, "cifar_resnet20")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.th"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Evil()}, path)
    with pytest.raises(ConversionError, match="refused to load: the file needs pickled code"):
        load_state_dict(path)
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "missing.th")


@needs_shared
def test_shared_checkpoints_load_with_weights_only():
    sd = load_state_dict(CHECKPOINTS[56])
    assert "conv1.weight" in sd and not any(k.startswith("module.") for k in sd)


def test_library_never_imports_torch():
    code = ("import sys, modulenet_jax, modulenet_jax.cli, modulenet_jax.search.runner, modulenet_jax.evaluate, "
            "modulenet_jax.knowledge, modulenet_jax.space, modulenet_jax.assemble, modulenet_jax.data; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    pattern = re.compile(r"^\s*(import torch|from torch|import torchvision|from torchvision)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "modulenet_jax").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
