"""The run folder stays consistent: an interrupted restart leaves the old run, a failed start
leaves nothing, a half-done replacement is repaired, a finished search extends to exactly the
longer run, and Ctrl-C then resume ends exactly as an uninterrupted run."""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from modulenet_jax.cli import main
from modulenet_jax.data import save_bundle
from modulenet_jax.errors import UserError
from modulenet_jax.search.run_folder import RunFolder
from modulenet_jax.search.runner import final_table, search
from tests.conftest import COMPILE_CACHE_ENV, ROOT
from tests.test_runner import SMALL, small_run, without_times


class Interrupt(Exception):
    pass


def snapshot(folder) -> dict:
    """{relative path: SHA-256} of every file below `folder` (and every folder, as None)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def quiet(message):
    pass


def _finished(tiny_kb, tiny_dataset, out, extra=("search.generations=1",)):
    run = small_run(tiny_kb, tiny_dataset, list(extra))
    final_table(run, search(run, out, log=quiet), out, log=quiet)
    return run


def _die_on_first_evaluation(run, check=lambda: None):
    def dying(arch):
        check()
        raise Interrupt

    run.evaluator.cost = dying  # called once per network, as its evaluation is completed


def test_an_interrupted_restart_leaves_the_old_run_whole(tiny_kb, tiny_dataset, tmp_path):
    _finished(tiny_kb, tiny_dataset, tmp_path / "run")
    before = snapshot(tmp_path)
    assert {f"run/{n}" for n in ("front.json", "final.json", "final.md", "state.json", "log.txt")} <= set(before)
    restart = small_run(tiny_kb, tiny_dataset, ["search.generations=1", "seed=3"])

    def the_new_run_is_started():
        assert json.loads((tmp_path / ".run.new" / "config.json").read_text())["seed"] == 3

    _die_on_first_evaluation(restart, the_new_run_is_started)
    with pytest.raises(Interrupt):
        search(restart, tmp_path / "run", resume=False, log=quiet)
    assert snapshot(tmp_path) == before  # the old run, whole, and nothing beside it


def test_a_restart_replaces_the_run_once_it_has_evaluated_a_network(tiny_kb, tiny_dataset, tmp_path):
    _finished(tiny_kb, tiny_dataset, tmp_path / "run")
    restart = small_run(tiny_kb, tiny_dataset, ["search.generations=1", "seed=3"])
    real, calls = restart.evaluator.cost, []

    def dying(arch):
        calls.append(arch)
        if len(calls) == 3:
            raise Interrupt
        return real(arch)

    restart.evaluator.cost = dying
    with pytest.raises(Interrupt):
        search(restart, tmp_path / "run", resume=False, log=quiet)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["run"]
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["seed"] == 3
    assert len((run / "history.jsonl").read_text().splitlines()) == 2
    assert not any((run / name).exists() for name in ("state.json", "front.json", "final.json", "final.md"))
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=1", "seed=3"]), run, log=quiet)  # resumes the new run
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=1", "seed=3"]), tmp_path / "fresh", log=quiet)
    assert without_times((run / "history.jsonl").read_text()) == without_times((tmp_path / "fresh" / "history.jsonl").read_text())


def test_a_run_that_fails_before_its_first_evaluation_leaves_nothing(tiny_kb, tiny_dataset, tmp_path):
    run = small_run(tiny_kb, tiny_dataset)
    _die_on_first_evaluation(run)
    with pytest.raises(Interrupt):
        search(run, tmp_path / "run", log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_a_replacement_stopped_between_its_renames_is_repaired(tmp_path):
    config = {"search": {"generations": 1}, "seed": 0}
    old = tmp_path / ".run.old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps(config))
    (tmp_path / ".run.new").mkdir()  # the new run, never moved into place
    assert RunFolder.check(tmp_path / "run", config) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old run is back, nothing beside it
    old.mkdir()  # stopped after both renames, before the old run was removed
    RunFolder.check(tmp_path / "run", config)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_folder_made_before_a_field_existed_resumes_under_its_default(tmp_path):
    """A run folder whose config.json lacks a field with a default (made before the field
    existed, or a config leaving a protocol field to `Protocol()`) is the run that default
    gives: a config setting the default resumes it, another value is refused, naming the field
    and both values."""
    from modulenet_jax.config import load_config, to_dict

    from tests.test_runner import CONFIG

    config = to_dict(load_config(CONFIG))
    old = json.loads(json.dumps(config))
    del old["search"]["shrink_prob"]
    tmp_path.joinpath("config.json").write_text(json.dumps(old))
    config["search"]["shrink_prob"] = 0.0
    assert RunFolder.check(tmp_path, config) == {}
    config["search"]["shrink_prob"] = 0.25
    with pytest.raises(UserError, match=r"different config \(search.shrink_prob: 0.0 there, 0.25 here\)"):
        RunFolder.check(tmp_path, config)
    config["search"]["shrink_prob"] = 0.0
    assert "stitch_steps" not in old["protocol"]
    config["protocol"]["stitch_steps"] = 0  # Protocol()'s default
    assert RunFolder.check(tmp_path, config) == {}
    config["protocol"]["stitch_steps"] = 5
    with pytest.raises(UserError, match=r"different config \(protocol.stitch_steps: 0 there, 5 here\)"):
        RunFolder.check(tmp_path, config)


def test_the_stitch_learning_rate_matters_only_where_a_run_tunes(tmp_path):
    """`protocol.stitch_lr` changes nothing without `stitch_steps`: a folder of an untuned run
    resumes under any rate (so under a changed default); a tuned run is refused, naming it."""
    from modulenet_jax.config import load_config, to_dict

    from tests.test_runner import CONFIG

    config = to_dict(load_config(CONFIG))
    config["protocol"]["stitch_lr"] = 0.001
    tmp_path.joinpath("config.json").write_text(json.dumps(config))
    config["protocol"]["stitch_lr"] = 0.0001
    assert RunFolder.check(tmp_path, config) == {}
    config["protocol"]["stitch_steps"] = 2
    tmp_path.joinpath("config.json").write_text(json.dumps({**config, "protocol": {**config["protocol"],
                                                                                     "stitch_lr": 0.001}}))
    with pytest.raises(UserError, match=r"different config \(protocol.stitch_lr: 0.001 there, 0.0001 here\)"):
        RunFolder.check(tmp_path, config)


def test_more_generations_extend_a_finished_search_to_the_longer_run(tiny_kb, tiny_dataset, tmp_path):
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=2"]), tmp_path / "short", log=quiet)
    assert (tmp_path / "short" / "front.json").is_file()
    logs = []
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=3"]), tmp_path / "short", log=logs.append)
    assert logs[0] == "search.generations 2 -> 3: the search goes on from generation 2"
    search(small_run(tiny_kb, tiny_dataset, ["search.generations=3"]), tmp_path / "long", log=quiet)
    short, long = tmp_path / "short", tmp_path / "long"
    assert without_times((short / "history.jsonl").read_text()) == without_times((long / "history.jsonl").read_text())
    for name in ("state.json", "front.json", "config.json"):
        assert (short / name).read_text() == (long / name).read_text(), name
    assert "search.generations 2 -> 3" in (short / "log.txt").read_text()


def test_extending_removes_the_results_until_the_search_ends_again(tiny_kb, tiny_dataset, tmp_path):
    _finished(tiny_kb, tiny_dataset, tmp_path, ["search.generations=1"])
    longer = small_run(tiny_kb, tiny_dataset, ["search.generations=2"])
    _die_on_first_evaluation(longer)
    with pytest.raises(Interrupt):
        search(longer, tmp_path, log=quiet)
    assert not any((tmp_path / n).exists() for n in ("front.json", "final.json", "final.md"))
    assert json.loads((tmp_path / "state.json").read_text())["generation"] == 1


@pytest.fixture(scope="module")
def tiny_files(tiny_kb, tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-files")
    tiny_kb.save(folder / "kb")
    save_bundle(tiny_dataset, folder / "tiny.npz", None, seed=0)
    return folder


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tiny_files, tmp_path, capsys):
    """`modulenet search` sent SIGINT mid-run: it stops cleanly (status 130, one line saying what
    it kept and the command that resumes it); that command finishes the run as if uninterrupted."""
    out = tmp_path / "run"
    args = ["search", "--config", "cifar10_resnet", "--out", str(out), "--set", *SMALL,
            "search.generations=8",  # generations left to interrupt even when a loaded machine polls late
            f"knowledge.path={tiny_files / 'kb'}", f"data.source={tiny_files / 'tiny.npz'}"]
    env = {**os.environ, **COMPILE_CACHE_ENV}
    def deliverable():  # a test worker's threads may block or ignore SIGINT, and a child inherits both
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([sys.executable, "-m", "modulenet_jax.cli", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=deliverable)
    history = out / "history.jsonl"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if history.is_file() and len(history.read_text().splitlines()) >= 5:  # in the second generation
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"modulenet search: interrupted: {out} keeps "), err
    kept, _, command = last.partition("; resume with: ")
    assert re.search(r"keeps \d+ evaluated networks and [1-7] finished generations?$", kept), kept
    resume = shlex.split(command)
    assert resume[:2] == ["modulenet", "search"] and "--restart" not in resume
    assert main(resume[1:] + ["--quiet"]) == 0
    assert main([*args[:4], str(tmp_path / "whole"), *args[5:], "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: no log lines, no bars
    whole = tmp_path / "whole"
    assert without_times(history.read_text()) == without_times((whole / "history.jsonl").read_text())
    for name in ("state.json", "front.json", "final.json"):
        assert (out / name).read_text() == (whole / name).read_text(), name


def test_ctrl_c_in_a_restart_before_its_first_network_keeps_the_old_run_and_says_restart(tiny_files, tmp_path,
                                                                                        capsys, monkeypatch):
    from modulenet_jax.evaluate import Evaluator

    args = ["search", "--config", "cifar10_resnet", "--out", str(tmp_path / "run"), "--quiet", "--set", *SMALL,
            "search.generations=1", f"knowledge.path={tiny_files / 'kb'}", f"data.source={tiny_files / 'tiny.npz'}"]
    assert main(args) == 0
    before = snapshot(tmp_path)

    def interrupted(self, arch):  # Ctrl-C inside a C extension's callback reaches us wrapped, as in numpy's
        raise SystemError("<function _ScalarMeta.__numpy_dtype__> returned a result with an exception set") \
            from KeyboardInterrupt()

    monkeypatch.setattr(Evaluator, "cost", interrupted)
    capsys.readouterr()
    assert main([*args, "--restart"]) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"modulenet search: interrupted: the restart had evaluated no network, so {tmp_path / 'run'} "
                          f"holds the old run, whole; restart with: modulenet search ") and "--restart" in err, err
    assert snapshot(tmp_path) == before


def test_difference_names_a_key_set_only_here():
    from modulenet_jax.jsonfile import difference
    assert difference({"a": 1}, {"a": 1}) is None
    assert difference({"a": 1}, {"a": 1, "b": 2}) == "b: None there, 2 here"
    assert difference({"a": 1, "c": 3}, {"a": 2}, ignore=("c",)) == "a: 1 there, 2 here"
