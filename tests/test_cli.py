"""The command line: JSON output for scripts; bad input exits 2 with one line (the cases: test_bad_input.py),
bugs keep their traceback."""

import json
import os
import subprocess
import sys

import pytest

from modulenet_jax import cli
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


def test_debug_shows_the_traceback_of_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a knowledge base"):
        main(["--debug", "kb", "show", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="not a knowledge base"):  # after the command too
        main(["kb", "show", str(tmp_path), "--debug"])
    assert main(["kb", "show", str(tmp_path)]) == 2


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
    # --distributed joins the cluster before the command, in a process where JAX has not started yet
    alone = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "SLURM"))}
    lone = subprocess.run([sys.executable, "-m", "modulenet_jax.cli", "--distributed", "kb", "show", str(tmp_path)],
                          capture_output=True, text=True, env=alone)
    assert lone.returncode == 2 and lone.stderr.count("\n") == 1, lone.stderr
    assert "--distributed found no cluster to join" in lone.stderr, lone.stderr


@pytest.mark.parametrize("cmd", [[], ["convert"], ["kb", "build"], ["kb", "show"], ["search"], ["evaluate"],
                                 ["runs", "show"], ["runs", "compare"]])
def test_help(cmd):
    r = subprocess.run([sys.executable, "-m", "modulenet_jax.cli", *cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: modulenet" in r.stdout


def test_bench_passes_its_options_and_prints_json(tmp_path, monkeypatch, capsys, tiny_kb, tiny_dataset):
    from modulenet_jax.benchmarks import throughput
    from modulenet_jax.search import runner

    seen = {}
    monkeypatch.setattr(runner, "load_data", lambda cfg, progress: tiny_dataset)
    monkeypatch.setattr(runner, "load_knowledge", lambda cfg, progress: tiny_kb)
    monkeypatch.setattr(throughput, "run", lambda kb, ds, protocol, **kw: seen.update(kw, protocol=protocol)
                        or {"results": [], "device": "d"})
    monkeypatch.setattr(throughput, "save", lambda report, out, stem: tmp_path)
    assert main(["bench", "--out", str(tmp_path), "--name", "x", "--batch-size", "16", "--torch-modes",
                 "--populations", "2", "4", "--budget", "30", "--json", "--quiet"]) == 0
    assert seen["protocol"].batch_size == 16 and seen["populations"] == (2, 4) and seen["budget_s"] == 30.0
    assert seen["torch_modes"] == () and json.loads(capsys.readouterr().out) == {"results": [], "device": "d"}
    assert main(["bench", "--out", str(tmp_path), "--name", "x", "--json", "--quiet"]) == 0  # PyTorch at its best
    assert seen["torch_modes"] == ("eager", "compile", "compile-network") and seen["torch_max_network"] == 2


def test_a_first_ctrl_c_is_a_request_the_search_honours_and_a_second_stops_at_once(capsys):
    """`cli.ctrl_c_stops`: the first SIGINT only sets a flag (it cannot be lost inside a C
    extension's callback) that `stop()` turns into KeyboardInterrupt; the second raises at once;
    the previous handler comes back."""
    import os
    import signal

    from modulenet_jax.cli import ctrl_c_stops

    before = signal.getsignal(signal.SIGINT)
    with ctrl_c_stops() as stop:
        stop()  # nothing asked yet
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            stop()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGINT) is before
    assert "stopping after the network in progress (Ctrl-C again: at once)" in capsys.readouterr().err
