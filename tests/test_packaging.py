"""The wheel: `converters/`, `benchmarks/` and `configs/` install inside `modulenet_jax`, nothing
installs under a generic top-level name, and neither benchmark results nor tests are shipped."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_AS = {"modulenet_jax": "modulenet_jax", "converters": "modulenet_jax/converters",
                "benchmarks": "modulenet_jax/benchmarks", "configs": "modulenet_jax/configs"}
COPIED = ("setup.cfg", "pyproject.toml", "README.md", "tests", *INSTALLED_AS)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel's file names, built (as `pip install .` builds it) from a copy of the checkout."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in COPIED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(dist), "."], cwd=src, check=True, capture_output=True)
    built, = dist.glob("modulenet_jax-*.whl")
    with zipfile.ZipFile(built) as z:
        return z.namelist()


def test_every_package_installs_under_modulenet_jax(wheel):
    expected = {f"{INSTALLED_AS[top]}/{p.relative_to(ROOT / top).as_posix()}"
                for top in INSTALLED_AS for package in (ROOT / top).rglob("__init__.py")
                for p in package.parent.glob("*.py")}
    assert {"modulenet_jax/converters/common.py", "modulenet_jax/benchmarks/throughput.py",
            "modulenet_jax/configs/cifar10_resnet.py", "modulenet_jax/configs/cifar10_resnet_gpu.py"} <= expected
    assert expected - set(wheel) == set()


def test_nothing_else_is_shipped(wheel):
    tops = {name.split("/")[0] for name in wheel}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"modulenet_jax"}
    assert [n for n in wheel if "/results/" in n or n.startswith("tests/")] == []
