"""Saving and loading a converted model: its params (orbax-checkpoint) and a readable spec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from modulenet_jax import zoo
from modulenet_jax.errors import UserError
from modulenet_jax.jsonfile import read_json

SPEC_FILE = "model.json"
READ_WINDOW = 64  # values `check_whole` reads at a time: few enough to hold, enough to keep the disk busy
PARAMS_DIR = "params"
T = TypeVar("T")


def save_tree(path, tree) -> None:
    """Writes a pytree of arrays with orbax (overwriting)."""
    path = Path(path).absolute()
    tree = jax.tree_util.tree_map(np.asarray, tree)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, tree, force=True)


def unreadable(path, where: str, error: Exception, fix: str) -> UserError:
    """The one-line error for checkpoint files that cannot be read: `where` names the part (an
    array, or the exception's kind), then the error's first line and `fix`."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(f"{path} cannot be read ({where}: {first[:200]}): the files were cut short or changed; {fix}")


def check_whole(path, fix: str) -> None:
    """A `UserError` ending in `fix`, naming the first damaged array, unless every value of the
    orbax checkpoint at `path` (an OCDBT database) can be read. Orbax stops at the first value
    it cannot read and closes its event loop while its other reads are pending, whose late
    callbacks then print tracebacks after the error; reading everything here first, with
    tensorstore's own futures and no event loop, leaves nothing pending (the second read, by
    orbax, comes from the page cache). `READ_WINDOW` values are held at a time."""
    path = Path(path).absolute()
    if not (path / "manifest.ocdbt").is_file():
        return
    try:
        store = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{path}/"}).result()
        keys, damaged = store.list().result(), []
        for start in range(0, len(keys), READ_WINDOW):
            reads = [(key, store.read(key)) for key in keys[start:start + READ_WINDOW]]
            for key, read in reads:
                try:
                    read.result()
                except Exception as e:  # noqa: BLE001 - tensorstore reports damage as ValueError, OSError, ...
                    damaged.append(("array " + key.decode(errors="replace").split("/")[0], e))
    except Exception as e:  # noqa: BLE001 - a damaged manifest fails the open or the listing
        damaged = [("the database's manifest", e)]
    if damaged:
        (name, e), more = damaged[0], len({n for n, _ in damaged}) - 1
        raise unreadable(path, name + (f" and {more} more" if more else ""), e, fix)


def restore_checked(path, restore: Callable[[], T], fix: str) -> T:
    """`restore()`, orbax reading the checkpoint at `path`, once `check_whole` has read every
    value: files it cannot read (cut short, changed) are a `UserError` ending in `fix`."""
    check_whole(path, fix)
    try:
        return restore()
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for damaged files
        raise unreadable(path, type(e).__name__, e, fix) from e


def load_tree(path, fix: str):
    """Reads a pytree written by `save_tree` as numpy arrays (`restore_checked`)."""
    path = Path(path).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint at {path}")

    def restore():
        with ocp.StandardCheckpointer() as ckpt:
            return jax.tree_util.tree_map(np.asarray, ckpt.restore(path))

    return restore_checked(path, restore, fix)


def check_params(model_name: str, params) -> None:
    """A `UserError` unless `params` has exactly the structure and shapes `model_name` expects."""
    fix = f"these params are not {model_name}'s: convert the checkpoint again with the right --model"
    expected, got = zoo.flat_param_shapes(model_name), zoo.flat_shapes(params)
    for path, shape in expected.items():
        if path not in got:
            raise UserError(f"{model_name}: params have no {'/'.join(path)}; {fix}")
        if got[path] != shape:
            raise UserError(f"{model_name}: {'/'.join(path)} has shape {got[path]}, expected {shape}; {fix}")
    for path in got:
        if path not in expected:
            raise UserError(f"{model_name}: unexpected param {'/'.join(path)}; {fix}")


def save_model(path, model_name: str, params, metadata: dict | None = None) -> Path:
    """Saves a converted model as `path/model.json` + `path/params/` (orbax)."""
    check_params(model_name, params)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tree(path / PARAMS_DIR, params)
    spec = {"model": model_name, **(metadata or {})}
    (path / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return path


def load_model(path) -> tuple[str, dict, dict]:
    """Returns `(model_name, params, metadata)` of a model saved by `save_model`."""
    path = Path(path)
    if not (path / SPEC_FILE).is_file():
        raise FileNotFoundError(f"{path}: not a converted model (no {SPEC_FILE}); "
                                f"make one with `modulenet convert`")
    meta = read_json(path / SPEC_FILE, "converted model's description", "convert the checkpoint again")
    if not isinstance(meta.get("model"), str):
        raise UserError(f"{path / SPEC_FILE} names no model; convert the checkpoint again")
    model_name = meta.pop("model")
    params = load_tree(path / PARAMS_DIR, "convert the checkpoint again")
    check_params(model_name, params)
    return model_name, params, meta
