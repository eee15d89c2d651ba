"""The README and the library say the same thing: its python blocks run as written (and print
what their `# prints:` lines say), and its config reference is the one the code checks."""

import os
import re
import subprocess
import sys

from modulenet_jax.config import load_config
from modulenet_jax.schema import reference_table
from tests.conftest import COMPILE_CACHE_ENV, ROOT, SHARED, needs_shared

README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def _expected(code: str) -> list[str]:
    """The `# prints: ...` lines of the blocks, as patterns (`...` stands for anything)."""
    return [".*".join(map(re.escape, line.split("# prints: ", 1)[1].split("...")))
            for line in code.splitlines() if line.startswith("# prints: ")]


def test_the_readme_has_python_blocks_that_say_what_they_print():
    assert len(PYTHON_BLOCKS) >= 3 and len(_expected("\n".join(PYTHON_BLOCKS))) >= 4


@needs_shared
def test_the_python_blocks_run_as_written(tmp_path):
    """In order, in one interpreter, from a checkout with ../shared beside it (a copy's place, so
    what the blocks write stays in tmp_path)."""
    (tmp_path / "checkout").mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    code = "\n".join(PYTHON_BLOCKS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), **COMPILE_CACHE_ENV}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "checkout", env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    printed = iter(r.stdout.splitlines())
    for pattern in _expected(code):
        assert any(re.fullmatch(pattern, line) for line in printed), f"no line printed matches {pattern!r}:\n{r.stdout}"


def test_the_config_reference_is_the_one_the_code_checks():
    """Regenerate it with `python -c "from modulenet_jax import schema, config;
    print(schema.reference_table(config.load_config('cifar10_resnet')))"` when a field changes."""
    assert reference_table(load_config("cifar10_resnet")) in README
