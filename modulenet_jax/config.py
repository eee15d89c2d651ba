"""Experiment configs: Python files whose `get_config()` returns an `ml_collections.ConfigDict`.

`load_config(config, overrides)` takes a packaged config's name (`cifar10_resnet`, a module of
`modulenet_jax.configs`) or a path to a `.py` file, applies `key.sub=value` overrides (values
parsed as Python literals, else kept as strings) and locks the config, so a misspelled key
is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import ml_collections

from modulenet_jax.errors import UserError

PACKAGE = "modulenet_jax.configs"


def packaged_configs() -> list[str]:
    """The names of the configs shipped with the package."""
    package = importlib.import_module(PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)


def _config_module(config: str):
    """The module of a config: a path (ends in `.py` or names a folder) or a packaged config's name."""
    if config.endswith(".py") or "/" in config or "\\" in config:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {path}; give a path to a .py file or a packaged "
                                    f"config's name ({', '.join(packaged_configs())})")
        spec = importlib.util.spec_from_file_location(f"modulenet_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    if config not in packaged_configs():
        raise UserError(f"no packaged config {config!r}; known: {', '.join(packaged_configs())} "
                        f"(or give a path to a .py file)")
    return importlib.import_module(f"{PACKAGE}.{config}")


def load_config(config, overrides=()) -> ml_collections.ConfigDict:
    """The config called `config` (a packaged name or a path), with `overrides` applied, locked."""
    module = _config_module(str(config))
    if not hasattr(module, "get_config"):
        raise UserError(f"{config}: a config file must define get_config() returning an ml_collections.ConfigDict")
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
