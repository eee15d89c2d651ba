"""A search's run folder, kept consistent whatever stops the process.

Files: `config.json` (the resolved config), `history.jsonl` (one line per network evaluated,
appended as each is done), `state.json` (the algorithm after its last finished generation,
written atomically), `log.txt` (what the search said, with times) and the results, written
when the search is done: `front.json`, `front.png`, `final.json`, `final.md`.

What keeps it consistent:

- A new run (or a `--restart` of an old one) is built in a hidden sibling, `.<name>.new`, and
  moved into place when its first network has been evaluated: a run that fails before that
  leaves nothing, and an interrupted restart leaves the old run whole. Replacing an old run
  is two renames (old aside to `.<name>.old`, new into place) and the removal of the old one;
  a process stopped between them is repaired the next time the folder is opened.
- Resuming checks the config against `config.json`, except the budget (`search.generations`),
  which may grow: a finished search then goes on, and its results are removed until it ends
  again (they are rewritten then), so the folder never shows results older than its state.
- A corrupt `state.json`, `history.jsonl` or `config.json` is a `UserError` naming the file
  and the way out; a torn last history line (a kill mid-write) is dropped.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import ml_collections

from modulenet_jax import jsonfile
from modulenet_jax.atomic import write_atomic
from modulenet_jax.checks import check_writable
from modulenet_jax.config import from_dict
from modulenet_jax.errors import UserError
from modulenet_jax.protocol import inert_fields
from modulenet_jax.schema import BUDGET_KEYS, BY_KEY, REQUIRED

CONFIG, STATE, HISTORY, LOG = "config.json", "state.json", "history.jsonl", "log.txt"
RESULTS = ("front.json", "front.png", "final.json", "final.md")
RESTART_HINT = "start the run over with `modulenet search --restart`"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _with_defaults(flat: dict) -> dict:
    """A flat config with every field it leaves out that has a default set to it: a folder made
    before a field existed holds the run its default gives, and resumes under a config saying so."""
    return {**{k: f.default for k, f in BY_KEY.items() if f.absent is not REQUIRED}, **flat}


def _inert(there: dict, here: dict) -> tuple[str, ...]:
    """Fields that change nothing in either run, so a difference in them does not stop a resume:
    the stitches' learning rate where neither run tunes them (a folder made before its default
    changed resumes under the new one)."""
    protocols = [{k.removeprefix("protocol."): v for k, v in flat.items() if k.startswith("protocol.")}
                 for flat in (there, here)]
    return tuple(f"protocol.{k}" for k in inert_fields(protocols))


def read_json(path: Path, what: str, kind: type = dict):
    """A run folder's JSON file holding a `kind` (a dict: config, state, final table); anything
    else is a `UserError` naming the file."""
    return jsonfile.read_json(path, what, f"the {what} was changed outside modulenet; restore it, or {RESTART_HINT}",
                              kind)


def read_state(path: Path) -> dict:
    """A run folder's `state.json` (empty before the first generation ends); one that is not a
    search state is a `UserError`."""
    state = read_json(path / STATE, "state", object) if (path / STATE).is_file() else {}
    if not isinstance(state, dict) or not isinstance(state.get("generation", 0), int):
        raise UserError(f"{path / STATE} does not hold a search state: it was changed outside modulenet; "
                        f"restore it, or {RESTART_HINT}")
    return state


RECORD_NUMBERS = ("correct", "total", "params", "flops", "junctions", "accuracy", "error")


def read_config(path) -> ml_collections.ConfigDict:
    """The config a run folder was run with (its `config.json`, tuples restored); a corrupt file
    is a `UserError` naming it."""
    return from_dict(read_json(Path(path) / CONFIG, "config"))


def read_history(path: Path, repair: bool = True) -> list[dict]:
    """The records of a history file. A torn last line (a kill mid-write) is dropped, and with
    `repair` cut from the file; any other line that is not a JSON record is a `UserError`."""
    if not path.is_file():
        return []
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = e
        if not isinstance(record, dict) or "canonical" not in record:
            problem = f"is not a network's record ({record})"
        else:
            bad = [k for k in RECORD_NUMBERS if not _is_finite_number(record.get(k))]
            problem = f"has no finite {', '.join(bad)}" if bad else None
        if problem:
            raise UserError(f"{path} line {number} {problem}; delete that line and those after it to evaluate "
                            f"those networks again, or {RESTART_HINT}")
        records.append(record)
    if repair and "".join(lines) != text:
        write_atomic(path, "".join(lines))
    return records


def _is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class RunFolder:
    """A run folder opened for a search (`open`), or checked without being changed (`check`)."""

    def __init__(self, path: Path, staged: bool):
        self.target = path
        self.staged = staged
        self.path = _staging(path) if staged else path

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def check(path, config: dict, restart: bool = False) -> dict:
        """Everything that would stop `open` from resuming (or restarting) `path`, checked
        before any work: a `UserError` naming the problem. Repairs a replacement that was
        stopped half-way. Returns the folder's state (empty for a new run)."""
        path = Path(path)
        check_writable(path)
        _repair(path)
        if path.is_dir() and any(path.iterdir()) and not (path / CONFIG).is_file():
            raise UserError(f"{path} is a folder but not a run folder (no {CONFIG}); choose another --out "
                            f"(a new or empty folder)")
        if restart or not (path / CONFIG).is_file():
            return {}
        there, here = _with_defaults(_flat(read_json(path / CONFIG, "config"))), _with_defaults(_flat(config))
        changed = jsonfile.difference(there, here, ignore=BUDGET_KEYS + _inert(there, here))
        if changed:
            raise UserError(f"{path} holds a run of a different config ({changed}); choose a new --out, or pass "
                            f"--restart to start this folder over")
        state = read_state(path)
        done = state.get("generation", 0)
        generations = config["search"]["generations"]
        if done > generations:
            raise UserError(f"{path} has {done} generations done; search.generations must be at least {done} to "
                            f"resume it, or {RESTART_HINT}")
        history = {tuple(r["canonical"]) for r in read_history(path / HISTORY, repair=False)}
        missing = [k for k in state.get("seen", ()) if tuple(k) not in history]
        if missing:
            raise UserError(f"{path / HISTORY} lacks {len(missing)} of the networks {path / STATE} says were "
                            f"evaluated: the history was cut or replaced; restore it, or {RESTART_HINT}")
        return state

    @classmethod
    def open(cls, path, config: dict, restart: bool = False, log: Callable[[str], None] = print,
             resume: Callable[[dict], None] | None = None) -> "RunFolder":
        """The folder ready for a search of `config`: resumed in place, or (new run, `restart`)
        a fresh one built beside it until its first network is evaluated (`commit`). `resume`
        is given the state of a run that goes on before anything in the folder changes (what it
        refuses leaves the folder as it was)."""
        path = Path(path)
        state = cls.check(path, config, restart)
        if state and resume is not None:
            resume(state)
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        if restart or not (path / CONFIG).is_file():
            folder = cls(path, staged=True)
            shutil.rmtree(folder.path, ignore_errors=True)
            folder.path.mkdir(parents=True)
            write_atomic(folder.path / CONFIG, text)
            return folder
        folder = cls(path, staged=False)
        stored = read_json(path / CONFIG, "config")["search"]["generations"]
        generations = config["search"]["generations"]
        if state.get("generation", 0) < generations:
            for name in RESULTS:  # the run goes on: results older than its state would mislead
                (path / name).unlink(missing_ok=True)
        write_atomic(path / CONFIG, text)
        if generations != stored:
            folder.teed(log)(f"search.generations {stored} -> {generations}: the search goes on from generation "
                             f"{state.get('generation', 0)}")
        return folder

    def commit(self) -> None:
        """Moves a staged run into place (replacing an old run there); a no-op once in place."""
        if not self.staged:
            return
        old = _aside(self.target)
        if self.target.exists():
            self.target.replace(old)
        self.path.replace(self.target)
        shutil.rmtree(old, ignore_errors=True)
        self.path, self.staged = self.target, False

    def abandon(self) -> None:
        """Removes a staged run that never evaluated a network (the old run, if any, stays)."""
        if self.staged:
            shutil.rmtree(self.path, ignore_errors=True)

    # -- reading and writing ------------------------------------------------------------------

    def history(self) -> list[dict]:
        """Every network evaluated so far (a torn last line cut off)."""
        return read_history(self.path / HISTORY)

    def append_history(self, record: dict) -> None:
        """One evaluated network, flushed at once (the first one moves a staged run into place)."""
        self.commit()
        with open(self.path / HISTORY, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_state(self, state: dict) -> None:
        """The state after a finished generation, written atomically."""
        write_atomic(self.path / STATE, json.dumps(state) + "\n")

    def log(self, message: str) -> None:
        """A line of `log.txt`, with the time."""
        with open(self.path / LOG, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")

    def teed(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, and `log.txt` too."""
        def both(message: str) -> None:
            self.log(message)
            log(message)

        return both


def _staging(path: Path) -> Path:
    return path.parent / f".{path.name}.new"


def _aside(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _repair(path: Path) -> None:
    """Finishes or undoes a replacement stopped half-way, and drops a staged run that never
    evaluated anything: afterwards `path` holds one whole run (or none) and nothing is beside it."""
    old = _aside(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old)  # the new run is in place: only the removal of the old one was left
        else:
            old.replace(path)  # stopped between the two renames: the old run goes back
    shutil.rmtree(_staging(path), ignore_errors=True)
