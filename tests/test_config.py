"""Configs: the packaged ones are found by name, any `.py` file by path, and an unknown name
is an error that lists the known ones."""

import json

import pytest

from modulenet_jax.config import load_config, packaged_configs, to_dict
from modulenet_jax.errors import UserError
from tests.conftest import ROOT

CONFIGS = ROOT / "configs"


def test_every_config_of_the_checkout_is_packaged():
    assert packaged_configs() == sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem != "__init__")
    assert "cifar10_resnet" in packaged_configs()


@pytest.mark.parametrize("name", packaged_configs())
def test_a_name_and_its_file_give_the_same_config(name):
    assert to_dict(load_config(name)) == to_dict(load_config(CONFIGS / f"{name}.py"))


def test_the_gpu_config_overrides_only_what_differs():
    base, gpu = to_dict(load_config("cifar10_resnet")), to_dict(load_config("cifar10_resnet_gpu"))
    assert gpu["search"]["population"] == 64 and gpu["data"] == {**base["data"], "val_size": 5000}


def test_unknown_names_and_missing_files():
    with pytest.raises(UserError, match="no packaged config 'nope'; known: cifar10_resnet, cifar10_resnet_gpu, "
                                        "cifar10_torchvision"):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="no config file at configs/nope.py; give a path"):
        load_config("configs/nope.py")


def test_overrides_are_checked():
    with pytest.raises(UserError, match="no config field 'populaton'"):
        load_config("cifar10_resnet", ["search.populaton=3"])
    with pytest.raises(UserError, match=r"override 'seed.x': no config field 'x' \(fields there: none\)"):
        load_config("cifar10_resnet", ["seed.x=1"])
    config = load_config("cifar10_resnet", ["knowledge.weights_dirs=('../shared/weights/cifar-resnet',)",
                                            "search.objectives=['error', 'flops']", "protocol.stitch_ridge=1"])
    assert config.knowledge.weights_dirs == ("../shared/weights/cifar-resnet",)
    assert config.search.objectives == ("error", "flops") and config.protocol.stitch_ridge == 1.0


@pytest.mark.parametrize("name", packaged_configs())
def test_no_config_holds_a_path_of_this_machine(name):
    """Data and weights are named (a TFDS dataset, the download cache); local copies are overrides."""
    text = json.dumps(to_dict(load_config(name)))
    assert str(ROOT.parent) not in text and '"/' not in text
