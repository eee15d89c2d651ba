"""The command line: JSON output for scripts; bad input exits 2 with one line, bugs keep their traceback."""

import json
import subprocess
import sys

import pytest

from modulenet_jax import cli
from modulenet_jax.cli import main
from modulenet_jax.data import save_bundle
from modulenet_jax.space import SearchSpace
from tests.conftest import CHECKPOINTS, CIFAR_JPEG, needs_shared

CONFIG = "cifar10_resnet"  # found by name among the packaged configs


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@needs_shared
def test_evaluate_source_as_published_json(capsys):
    out = _json(capsys, ["evaluate", "--source", "cifar_resnet20", "--weights", str(CHECKPOINTS[20]),
                         "--data", str(CIFAR_JPEG), "--split", "val", "--size", "500", "--json"])
    assert isinstance(out["correct"], int) and out["total"] == 500
    assert 350 <= out["correct"] <= 450


@needs_shared
def test_convert_kb_build_and_show(capsys, tmp_path):
    out = _json(capsys, ["convert", "--weights", str(CHECKPOINTS[20]), "--out", str(tmp_path / "r20"), "--json"])
    assert out["model"] == "cifar_resnet20" and out["params"] == 269_722
    out = _json(capsys, ["kb", "build", "--models", str(tmp_path / "r20"), "--out", str(tmp_path / "kb"), "--json"])
    assert out["modules"] == 11
    out = _json(capsys, ["kb", "show", str(tmp_path / "kb"), "--json"])
    assert [m["id"] for m in out["modules"]][:2] == ["r20/stem", "r20/stage1.block0"]
    assert main(["kb", "show", str(tmp_path / "kb")]) == 0
    assert "r20/stage3.block2" in capsys.readouterr().out


@pytest.fixture(scope="module")
def saved(tiny_kb, tiny_dataset, tmp_path_factory):
    """A folder with a saved tiny knowledge base (`kb/`), a dataset bundle (`tiny.npz`) and a file
    that is no checkpoint (`junk.th`), for commands that read their input from disk."""
    folder = tmp_path_factory.mktemp("saved")
    tiny_kb.save(folder / "kb")
    save_bundle(tiny_dataset, folder / "tiny.npz", None)
    (folder / "junk.th").write_text("hello\n")
    return folder


def _genotype_args(saved, genotype: str) -> list[str]:
    return ["evaluate", "--config", CONFIG, "--set", f"knowledge.path={saved / 'kb'}", "protocol.fit_images=64",
            "protocol.stitch_images=32", "protocol.batch_size=32", "--data", str(saved / "tiny.npz"),
            "--genotype", genotype]


# (name, argv from the `saved` folder and the tiny space's number of genes, what the message says)
BAD_INPUT = [
    ("config path", lambda d, n: ["search", "--config", str(d / "nope.py")], "no config file at"),
    ("unknown config name", lambda d, n: ["fidelity", "--config", "cifar10_resnett"],
     "no packaged config 'cifar10_resnett'; known: cifar10_resnet, cifar10_resnet_gpu"),
    ("unknown --set key", lambda d, n: ["search", "--config", CONFIG, "--set", "search.populaton=3"],
     "no config field 'populaton' (fields there: algorithm, continue_run_prob"),
    ("--set without =", lambda d, n: ["search", "--config", CONFIG, "--set", "search.population"],
     "must look like key.sub=value"),
    ("--set value out of range", lambda d, n: ["search", "--config", CONFIG, "--set", "protocol.bn='x'"],
     "protocol.bn must be one of"),
    ("unknown pretrained source", lambda d, n: ["kb", "build", "--pretrained", "cifar_resnet99", "--out", str(d / "k")],
     "no known pretrained checkpoint 'cifar_resnet99'; known: cifar_resnet20"),
    ("unknown zoo model", lambda d, n: ["convert", "--weights", str(d / "junk.th"), "--model", "resnet9000",
                                        "--out", str(d / "c")], "unknown model 'resnet9000'"),
    ("not a checkpoint", lambda d, n: ["convert", "--weights", str(d / "junk.th"), "--out", str(d / "c")],
     "not a readable PyTorch checkpoint"),
    ("wrong data path", lambda d, n: ["evaluate", "--source", "cifar_resnet8", "--kb", str(d / "kb"),
                                      "--data", str(d / "no-data")], "not a folder and not a known TFDS name"),
    ("not a knowledge base", lambda d, n: ["kb", "show", str(d)], "not a knowledge base"),
    ("source not in the base", lambda d, n: ["evaluate", "--source", "cifar_resnet99", "--kb", str(d / "kb"),
                                             "--data", str(d / "tiny.npz")], "no source 'cifar_resnet99'"),
    ("evaluate without a network", lambda d, n: ["evaluate", "--data", str(d / "tiny.npz")], "give --source NAME"),
    ("genotype not JSON", lambda d, n: _genotype_args(d, "[1, 2"), "is not JSON"),
    ("genotype not integers", lambda d, n: _genotype_args(d, '["a"]'), "is not a list of integers"),
    ("genotype out of range", lambda d, n: _genotype_args(d, json.dumps([99] * n)), "gene stem = 99 is outside"),
]


@pytest.mark.parametrize("argv, message", [case[1:] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_input_is_one_line_and_status_2(capsys, saved, tiny_kb, argv, message):
    argv = argv(saved, SearchSpace(tiny_kb, "run").num_genes)
    assert main(argv) == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2]) if argv[0] == "kb" else argv[0]
    assert err.startswith(f"modulenet {command}: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    assert message in err and "Traceback" not in err


def test_debug_shows_the_traceback_of_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a knowledge base"):
        main(["--debug", "kb", "show", str(tmp_path)])


def test_a_bug_is_not_caught(monkeypatch):
    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "cmd_kb_show", broken)
    with pytest.raises(TypeError, match="a bug"):
        main(["kb", "show", "anywhere"])


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_kb_show", interrupted)
    assert main(["kb", "show", "anywhere"]) == 130
    assert capsys.readouterr().err == "modulenet kb show: interrupted\n"


def test_exit_statuses_of_the_command(tmp_path):
    """Run as a program: bad input exits 2 with one line; a bug exits 1 with its traceback."""
    bad = subprocess.run([sys.executable, "-m", "modulenet_jax.cli", "kb", "show", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not a knowledge base" in bad.stderr
    bug = ("import sys, modulenet_jax.cli as cli\n"
           "def broken(args):\n    raise TypeError('a bug')\n"
           "cli.cmd_kb_show = broken\n"
           f"sys.exit(cli.main(['kb', 'show', {str(tmp_path)!r}]))\n")
    crash = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True)
    assert crash.returncode == 1 and "Traceback" in crash.stderr and "TypeError: a bug" in crash.stderr


@pytest.mark.parametrize("cmd", [[], ["convert"], ["kb", "build"], ["kb", "show"], ["search"], ["evaluate"]])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "modulenet_jax.cli", *cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: modulenet" in r.stdout
