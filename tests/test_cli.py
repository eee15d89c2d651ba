"""The command line: JSON output for scripts, clear errors for bad input."""

import json
import subprocess
import sys

import pytest

from modulenet_jax.cli import main
from tests.conftest import CHECKPOINTS, CIFAR_JPEG, needs_shared


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


def test_errors_are_clear(capsys, tmp_path):
    assert main(["evaluate", "--source", "cifar_resnet20", "--weights", str(tmp_path / "nope.th"),
                 "--data", str(tmp_path), "--json"]) == 1
    assert "error:" in capsys.readouterr().err
    assert main(["kb", "show", str(tmp_path)]) == 1
    assert "not a knowledge base" in capsys.readouterr().err
    assert main(["convert", "--weights", str(CHECKPOINTS[20]), "--model", "resnet9000", "--out", str(tmp_path)]) == 1
    assert "unknown model 'resnet9000'" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["convert"], ["kb", "build"], ["kb", "show"], ["search"], ["evaluate"]])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "modulenet_jax.cli", *cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: modulenet" in r.stdout
