"""PyTorch is an optional extra: without it, the commands that need it say so in one line that
names the extra (exit 2), and what does not need it (the library, JAX-only bench) still runs."""

import json
import os
import subprocess
import sys

import pytest

from modulenet_jax.data import save_bundle
from tests.conftest import COMPILE_CACHE_ENV

pytestmark = pytest.mark.xdist_group("without_torch")  # module fixtures built once (make test: --dist loadgroup)

# Runs `modulenet` commands in a process where importing torch or torchvision fails as if they
# were not installed (a finder that refuses them: `sys.modules` keeps no entry, as without the
# packages, which scipy.stats checks); prints [exit status, stderr] per command as JSON.
WITHOUT_TORCH = """
import contextlib, importlib.abc, io, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from modulenet_jax.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), err.getvalue()])
assert "torch" not in [m.split(".")[0] for m in sys.modules]
print(json.dumps(results))
"""
EXTRA = "pip install 'modulenet-jax[torch]'"


def without_torch(commands: list[list[str]]) -> list[list]:
    """[exit status, stderr] of each command, run in one process without torch."""
    out = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, json.dumps(commands)], capture_output=True, text=True,
                         env={**os.environ, **COMPILE_CACHE_ENV})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tiny_kb, tiny_dataset, tmp_path_factory):
    """A saved tiny knowledge base and dataset bundle, and the arguments that use them."""
    d = tmp_path_factory.mktemp("without-torch")
    tiny_kb.save(d / "kb")
    save_bundle(tiny_dataset, d / "tiny.npz", None, seed=0)
    tiny = ["--set", f"data.source={d / 'tiny.npz'}", "protocol.fit_images=64", "protocol.stitch_images=32",
            "protocol.batch_size=32", "data.val_size=32", "final.size=32"]
    bench = ["bench", "--kb", str(d / "kb"), *tiny, "--populations", "1", "--dtypes", "float32", "--workloads", "W1",
             "--val-size", "32", "--out", str(d / "bench")]
    return d, tiny, bench


@pytest.fixture(scope="module")
def refused(saved):
    d, tiny, bench = saved
    commands = {
        "convert": ["convert", "--weights", str(d / "r20.th"), "--out", str(d / "r20")],
        "kb build --checkpoints": ["kb", "build", "--checkpoints", str(d / "r20.th"), "--out", str(d / "k")],
        "kb build --pretrained": ["kb", "build", "--pretrained", "cifar_resnet20", "--out", str(d / "k")],
        "search from checkpoints": ["search", "--config", "cifar10_resnet", "--out", str(d / "run"), *tiny],
        "bench, torch modes": [*bench, "--torch-modes", "eager"],
        "bench, paired": [*bench, "--paired", "2", "--torch-modes"],
    }
    return dict(zip(commands, without_torch(list(commands.values()))))


@pytest.mark.parametrize("name", ["convert", "kb build --checkpoints", "kb build --pretrained",
                                  "search from checkpoints"])
def test_reading_checkpoints_names_the_extra(refused, name):
    status, err = refused[name]
    assert status == 2 and err.count("\n") == 1
    assert f"error: reading PyTorch checkpoints (modulenet_jax.converters) needs torch, which is not installed: " \
           f"{EXTRA}\n" in err


def test_bench_baselines_name_the_extra_and_the_jax_only_way(refused):
    for name, asked in (("bench, torch modes", "--torch-modes eager"), ("bench, paired", "--paired 2")):
        status, err = refused[name]
        assert err == (f"modulenet bench: error: timing the PyTorch baselines ({asked}) needs torch, which is not "
                       f"installed: {EXTRA}, or pass --torch-modes with no value (and no --paired) to time JAX alone\n")
        assert status == 2


def test_bench_times_jax_alone_without_torch(saved):
    d, _, bench = saved
    (status, err), = without_torch([[*bench, "--name", "jax-alone", "--torch-modes"]])
    assert status == 0, err
    report = json.loads((d / "bench" / "jax-alone.json").read_text())
    assert {r["impl"] for r in report["results"]} == {"jax-loop"}
