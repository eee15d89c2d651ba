"""Experiment configs: Python files whose `get_config()` returns an `ml_collections.ConfigDict`.

`load_config(config, overrides)` takes a packaged config's name (`cifar10_resnet`, a module of
`modulenet_jax.configs`) or a path to a `.py` file, applies `key.sub=value` overrides (values
parsed as Python literals, else kept as strings), locks the config, so a misspelled key is an
error rather than a silently ignored setting, and checks every value against the config
reference (`schema.py`) before anything is loaded.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import ml_collections

from modulenet_jax import schema
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
        if path.suffix != ".py":
            raise UserError(f"{path} is not a config file: a config is a .py file defining get_config() (a run "
                            f"folder's config.json is resumed by passing that folder as --out)")
        spec = importlib.util.spec_from_file_location(f"modulenet_config_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise UserError(f"{path} line {e.lineno}: {e.msg}; fix the config file") from e
        except Exception as e:  # noqa: BLE001 - the user's own code: any error in it is theirs to fix
            raise UserError(f"{path}: running the config file raised {type(e).__name__}: {e}; "
                            f"fix the config file") from e
        return module
    if config not in packaged_configs():
        raise UserError(f"no packaged config {config!r}; known: {', '.join(packaged_configs())} "
                        f"(or give a path to a .py file)")
    return importlib.import_module(f"{PACKAGE}.{config}")


def _get_config(module, config: str) -> ml_collections.ConfigDict:
    if not hasattr(module, "get_config"):
        raise UserError(f"{config}: a config file must define get_config() returning an ml_collections.ConfigDict")
    try:
        result = module.get_config()
    except Exception as e:  # noqa: BLE001 - as above: the config file's code
        raise UserError(f"{config}: get_config() raised {type(e).__name__}: {e}; fix the config file") from e
    if not isinstance(result, ml_collections.ConfigDict):
        raise UserError(f"{config}: get_config() returned {type(result).__name__}, not an "
                        f"ml_collections.ConfigDict; fix the config file")
    return result


def _override(config: ml_collections.ConfigDict, item: str) -> None:
    """Applies one `key.sub=value` override. A field of the config reference that the config
    leaves out may be set too (e.g. `protocol.input_size`); anything else unknown is an error."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise UserError(f"override {item!r} must look like key.sub=value, e.g. search.generations=20")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *path, leaf = key.split(".")
    parent = config
    for i, name in enumerate(path):
        if not isinstance(parent, ml_collections.ConfigDict) or name not in parent:
            raise UserError(f"override {key!r}: no config field {name!r} ({_fields_there(parent, path[:i])})")
        parent = parent[name]
    if not isinstance(parent, ml_collections.ConfigDict) or (leaf not in parent and key not in schema.BY_KEY):
        raise UserError(f"override {key!r}: no config field {leaf!r} ({_fields_there(parent, path)})")
    if isinstance(parent.get(leaf), ml_collections.ConfigDict):
        raise UserError(f"override {key!r}: {key} is a section, not a field; set its fields, {key}.<field>=... "
                        f"({_fields_there(parent[leaf], [*path, leaf])})")
    if key in schema.BY_KEY:
        value = schema.BY_KEY[key].kind.convert(value)
    with parent.ignore_type(), parent.unlocked():
        parent[leaf] = value


def _fields_there(node, path) -> str:
    """The fields an override could name where `path` leads: the config's and the reference's."""
    if not isinstance(node, ml_collections.ConfigDict):
        return "fields there: none"
    section = "".join(f"{name}." for name in path)
    known = {k[len(section):].split(".")[0] for k in schema.BY_KEY if k.startswith(section)}
    return f"fields there: {', '.join(sorted(known | set(node.keys())))}"


def load_config(config, overrides=()) -> ml_collections.ConfigDict:
    """The config called `config` (a packaged name or a path), with `overrides` applied, locked
    and validated against the config reference (`schema`): a wrong type, an out-of-range value or
    a broken rule between fields is a `UserError` naming the field."""
    config_dict = _get_config(_config_module(str(config)), str(config))
    config_dict.lock()
    for item in overrides:
        _override(config_dict, item)
    schema.validate(config_dict)
    return config_dict


def to_dict(config) -> dict:
    """A plain, JSON-serialisable dict of a config (tuples become lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(config.to_dict())


def from_dict(d: dict) -> ml_collections.ConfigDict:
    """The config `to_dict` wrote (a run folder's `config.json`): its lists are tuples again, as
    the config reference wants them."""
    def tuples(v):
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        if isinstance(v, list):
            return tuple(tuples(x) for x in v)
        return v
    return ml_collections.ConfigDict(tuples(d))
