"""Experiment configs: Python files whose `get_config()` returns an `ml_collections.ConfigDict`.

`load_config(path, overrides)` imports the file, applies `key.sub=value` overrides (values
parsed as Python literals, else kept as strings) and locks the config, so a misspelled key
is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import ml_collections

from modulenet_jax.errors import UserError


def load_config(path, overrides=()) -> ml_collections.ConfigDict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    spec = importlib.util.spec_from_file_location(f"modulenet_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"{path}: a config file must define get_config() returning an ml_collections.ConfigDict")
    config = module.get_config()
    config.lock()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key.sub=value, e.g. search.generations=20")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        parent, leaf, current = None, None, config
        for name in key.split("."):
            if not isinstance(current, ml_collections.ConfigDict) or name not in current:
                fields = ", ".join(current.keys()) if isinstance(current, ml_collections.ConfigDict) else "none"
                raise UserError(f"override {key!r}: no config field {name!r} (fields there: {fields})")
            parent, leaf, current = current, name, current[name]
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, float) and isinstance(value, int):
            value = float(value)
        with parent.ignore_type():
            parent[leaf] = value
    return config


def to_dict(config) -> dict:
    """A plain, JSON-serialisable dict of a config (tuples become lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(config.to_dict())
