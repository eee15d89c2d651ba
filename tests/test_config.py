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


def test_every_protocol_setting_has_a_row_in_the_config_reference():
    """A new `Protocol` field needs its row in `schema.FIELDS` (type, range, meaning): one line."""
    import dataclasses

    from modulenet_jax.protocol import Protocol
    from modulenet_jax.schema import BY_KEY

    rows = {k.split(".", 1)[1] for k in BY_KEY if k.startswith("protocol.")}
    assert rows == {f.name for f in dataclasses.fields(Protocol)}
    assert all(BY_KEY[f"protocol.{f.name}"].default == f.default for f in dataclasses.fields(Protocol))


@pytest.mark.parametrize("name", packaged_configs())
def test_every_packaged_config_is_valid(name):
    from modulenet_jax.schema import problems

    assert problems(load_config(name)) == []


@pytest.mark.parametrize("override, message", [
    ("search.population='12'", "search.population must be an integer >= 2, got '12'"),
    ("search.population=True", "search.population must be an integer >= 2, got True"),
    ("search.crossover_prob=2", "search.crossover_prob must be a number in [0, 1], got 2.0"),
    ("search.mutation_prob='often'", "search.mutation_prob must be None or a number in [0, 1], got 'often'"),
    ("protocol.stitch_lr=0", "protocol.stitch_lr must be a number > 0, got 0.0"),
    ("knowledge.sources=()", "knowledge.sources must be a non-empty tuple of strings, got ()"),
    ("final.split='train'", "final.split must be one of 'final', 'val', 'test', got 'train'"),
])
def test_values_are_checked_for_type_and_range(override, message):
    with pytest.raises(UserError) as e:
        load_config("cifar10_resnet", [override])
    assert str(e.value).startswith(message) and "--set " in str(e.value)


def test_fields_a_config_leaves_out_can_be_set():
    """`protocol.input_size` is not in cifar10_resnet, but it is a field of the reference."""
    from modulenet_jax.schema import setting

    config = load_config("cifar10_resnet")
    assert setting(config, "protocol.input_size") is None and setting(config.space, "space.kind") == "stages"
    config = load_config("cifar10_resnet", ["protocol.input_size=32", "protocol.stitch_lr=1"])
    assert config.protocol.input_size == 32 and config.protocol.stitch_lr == 1.0
    with pytest.raises(UserError, match=r"no config field 'input_sise' \(fields there: batch_size, .*input_size"):
        load_config("cifar10_resnet", ["protocol.input_sise=32"])


@pytest.mark.parametrize("text, message", [
    ("def get_config(:\n", r"bad.py line 1: .*; fix the config file"),
    ("import nothing_here\n", r"bad.py: running the config file raised ModuleNotFoundError: .*; fix the config file"),
    ("def get_config():\n    return 1 / 0\n", r"get_config\(\) raised ZeroDivisionError: division by zero"),
    ("def get_config():\n    return {}\n", r"get_config\(\) returned dict, not an ml_collections.ConfigDict"),
    ("x = 1\n", r"a config file must define get_config\(\)"),
])
def test_a_broken_config_file_is_named(tmp_path, text, message):
    (tmp_path / "bad.py").write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / "bad.py")


def test_a_config_with_a_field_missing_or_unknown_is_refused(tmp_path):
    base = "from modulenet_jax.configs.cifar10_resnet import get_config as base\n"
    (tmp_path / "missing.py").write_text(base + "def get_config():\n    c = base()\n    del c.search['algorithm']\n"
                                                "    return c\n")
    with pytest.raises(UserError, match=r"^the config has no search.algorithm; add it \(README: config reference\)$"):
        load_config(tmp_path / "missing.py")
    (tmp_path / "extra.py").write_text(base + "def get_config():\n    c = base()\n    c.search.speed = 3\n    return c\n")
    with pytest.raises(UserError, match="unknown config field 'search.speed'"):
        load_config(tmp_path / "extra.py")


def test_zero_prefix_memory_is_allowed_and_negative_immigrants_are_not():
    from modulenet_jax.config import load_config
    from modulenet_jax.errors import UserError
    assert load_config("cifar10_resnet", ["evaluator.prefix_memory_mb=0"]).evaluator.prefix_memory_mb == 0  # S1
    with pytest.raises(UserError, match="search.immigrants must be an integer >= 0, got -1"):  # S2
        load_config("cifar10_resnet", ["search.immigrants=-1"])


def test_a_loaded_config_is_locked():  # CF1
    from modulenet_jax.config import load_config
    config = load_config("cifar10_resnet")
    with pytest.raises((AttributeError, KeyError)):
        config.search.populaton = 3
