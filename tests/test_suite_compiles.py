"""`benchmarks/suite_compiles.py`: the pytest plugin records each XLA compilation under the running
test, and the summary adds them up by function and by test file."""

import logging

import jax
import jax.numpy as jnp
import pytest

from modulenet_jax.benchmarks import suite_compiles
from modulenet_jax.errors import UserError


def test_a_compile_is_recorded_under_the_running_test(tmp_path):
    recorder = suite_compiles.Recorder(tmp_path / "gw0.tsv")
    logger = logging.getLogger(suite_compiles.LOGGER)
    level = logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    try:  # a new program for this process: compiled, or loaded from the persistent cache (recorded alike)
        jax.jit(lambda x: jnp.sin(x) * 3.25)(jnp.ones(5)).block_until_ready()
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
    rows = suite_compiles.read(tmp_path)
    test = "tests/test_suite_compiles.py::test_a_compile_is_recorded_under_the_running_test"
    assert (test, "jit(<lambda>)") in [(t, f) for t, f, _ in rows]
    assert all(s > 0 for *_, s in rows)


def test_the_summary_adds_up_by_function_and_by_file(tmp_path):
    (tmp_path / "gw0.tsv").write_text("tests/test_a.py::t1\tjit(f)\t2.0\ntests/test_a.py::t2\tjit(g)\t0.96\n")
    (tmp_path / "gw1.tsv").write_text("tests/test_b.py::t3\tjit(f)\t1.0\ntests/test_b.py::t3\tjit(h)\t0.04\n")
    text = suite_compiles.summary(suite_compiles.read(tmp_path))
    assert text.startswith("4 XLA compilations, 4 s in all; 1 of under 0.05 s, 0 s.")
    assert "| `jit(f)` | 3.0 | 75% | 2 |" in text and "| `jit(g)` | 1.0 | 24% | 1 |" in text
    assert "| `tests/test_a.py` | 3.0 | 74% | 2 |" in text and "| `tests/test_b.py` | 1.0 | 26% | 2 |" in text


def test_no_records_is_one_line_that_says_how_to_make_them(tmp_path):
    (tmp_path / "main.tsv").write_text("")
    with pytest.raises(UserError, match="no compile records .* -p modulenet_jax.benchmarks.suite_compiles"):
        suite_compiles.read(tmp_path)


def test_a_bad_top_exits_2_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        suite_compiles.main(["--dir", str(tmp_path), "--top", "0"])
    assert exit.value.code == 2
    err = capsys.readouterr().err  # the program's name is pytest's here
    assert err.endswith(": error: --top must be positive, got 0\n") and err.count("\n") == 1
