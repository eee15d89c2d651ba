"""Where a test run's XLA compile time goes: a pytest plugin that records every XLA compilation
(the running test, the jitted function, seconds), and a summary of the records by function and by
test file. Compiling is most of a cold test suite (CI's case), so this says what to shrink.

JAX times a compile and a load from its persistent cache as one step, so with `.jax_cache/` in
place the records are mostly loads (a warm suite: about 3,200 records, 33 s); clear it to time the
compiles:

    rm -rf .jax_cache
    .venv/bin/python -m pytest -q -n 2 --dist loadgroup -p modulenet_jax.benchmarks.suite_compiles
    .venv/bin/python -m modulenet_jax.benchmarks.suite_compiles

Records go to $SUITE_COMPILES (default `.suite-compiles/`), one file per test process (each
xdist worker); a run starts by removing the previous run's. The tests' subprocesses (the README's
blocks, the multi-device runs) compile in other interpreters and are not recorded.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import re
from pathlib import Path

from modulenet_jax.errors import UserError, run_script

FINISHED = re.compile(r"Finished XLA compilation of (\S+) in ([0-9.e+-]+) sec")
LOGGER = "jax._src.dispatch"  # where JAX reports each compile (or persistent-cache load), at DEBUG level


def records_dir() -> Path:
    return Path(os.environ.get("SUITE_COMPILES", ".suite-compiles"))


def current_test() -> str:
    """The running test's id, from pytest's `PYTEST_CURRENT_TEST` (`<nodeid> (<phase>)`: a
    fixture's compiles count for the first test that sets it up)."""
    running = os.environ.get("PYTEST_CURRENT_TEST")
    return running.rsplit(" ", 1)[0] if running else "<collection>"


class Recorder(logging.Handler):
    """Appends `test<TAB>function<TAB>seconds` for each compile JAX reports."""

    def __init__(self, path: Path):
        super().__init__(logging.DEBUG)
        self.file = path.open("a")

    def emit(self, record):
        found = FINISHED.search(record.getMessage())
        if found:
            self.file.write(f"{current_test()}\t{found[1]}\t{found[2]}\n")
            self.file.flush()


def pytest_configure(config):
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    folder = records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if worker is None:  # the run's first process (xdist's controller, or the only one): a new record
        for old in folder.glob("*.tsv"):
            old.unlink()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(Recorder(folder / f"{worker or 'main'}.tsv"))
    logger.setLevel(logging.DEBUG)


def read(folder: Path) -> list[tuple[str, str, float]]:
    """(test, function, seconds) of every record in `folder`."""
    rows = []
    for f in sorted(folder.glob("*.tsv")):
        for line in f.read_text().splitlines():
            test, function, seconds = line.split("\t")
            rows.append((test, function, float(seconds)))
    if not rows:
        raise UserError(f"no compile records in {folder}; run pytest with -p modulenet_jax.benchmarks.suite_compiles "
                        f"first (after rm -rf .jax_cache to time compiles rather than cache loads)")
    return rows


SMALL = 0.05  # seconds: the summary's first line says how many compiles took less, and how long in all


def summary(rows, top: int = 15) -> str:
    """Markdown: the total (and the small compiles' share), then seconds and programs by function
    and by test file (largest first)."""
    total = sum(s for *_, s in rows)
    small = [s for *_, s in rows if s < SMALL]
    out = [f"{len(rows):,} XLA compilations, {total:.0f} s in all; {len(small):,} of under {SMALL} s, "
           f"{sum(small):.0f} s.", ""]
    for title, key in (("function", lambda r: r[1]), ("test file", lambda r: r[0].split("::")[0])):
        seconds, count = collections.Counter(), collections.Counter()
        for row in rows:
            seconds[key(row)] += row[2]
            count[key(row)] += 1
        out += [f"| {title} | seconds | share | programs |", "| --- | ---: | ---: | ---: |"]
        out += [f"| `{k}` | {s:.1f} | {s / total:.0%} | {count[k]} |" for k, s in seconds.most_common(top)]
        out.append("")
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=None, help="the records (default $SUITE_COMPILES or .suite-compiles)")
    p.add_argument("--top", type=int, default=15, help="rows per table")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    if args.top < 1:
        raise UserError(f"--top must be positive, got {args.top}")
    print(summary(read(args.dir or records_dir()), args.top))


if __name__ == "__main__":
    main()
