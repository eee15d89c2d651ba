"""Registry of zoo architectures and the metadata each one publishes about its modules.

A model is a chain of modules (stem, blocks, head). Each module is a pure op
`op(params, x, calibrate=False, **static) -> (y, params_used)` registered by name, and
`ModuleSpec` says everything the knowledge base and the search space need to know about
it without running it (timm's `feature_info`, extended to every module).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax.errors import UserError
from modulenet_jax.zoo import layers

Params = Mapping[str, Any]
Op = Callable[..., Any]

KINDS = ("stem", "block", "head")

_OPS: dict[str, Op] = {}
_FOLDS: dict[str, tuple[tuple[str, str], ...]] = {}
_RESIDUALS: dict[str, tuple[str, ...]] = {}
_MODELS: dict[str, "ModelDef"] = {}


@dataclasses.dataclass(frozen=True)
class ModuleSpec:
    """What one module of a model is: where it sits and what it takes and gives.

    `stage` is 0 for the stem, 1..S for the blocks of stage s and S+1 for the head;
    `index` is the block's position inside its stage. `reduction` is the output stride
    relative to the image (timm's name). `static` holds the op's static keyword arguments
    as a sorted tuple of pairs so specs stay hashable.
    """

    name: str
    kind: str
    op: str
    stage: int
    index: int
    in_channels: int
    out_channels: int
    stride: int
    reduction: int
    static: tuple = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"module {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.op not in _OPS:
            raise ValueError(f"module {self.name!r}: op {self.op!r} is not registered")
        if self.stride < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError(f"module {self.name!r}: channels and stride must be positive")


@dataclasses.dataclass(frozen=True)
class ModelDef:
    """A registered architecture: its module chain, preprocessing and how to init params.

    `init(key)` returns a params dict keyed by module name; `params[spec.name]` are the
    params of that module, so cutting a model into modules needs no renaming.
    """

    name: str
    family: str
    modules: tuple[ModuleSpec, ...]
    init: Callable[[jax.Array], dict]
    input_size: int
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        names = [m.name for m in self.modules]
        if len(set(names)) != len(names):
            raise ValueError(f"model {self.name!r}: duplicate module names")
        kinds = [m.kind for m in self.modules]
        if kinds[0] != "stem" or kinds[-1] != "head" or set(kinds[1:-1]) != {"block"}:
            raise ValueError(f"model {self.name!r}: modules must be stem, blocks..., head")
        reduction = 1
        for prev, mod in zip(self.modules, self.modules[1:]):
            if mod.in_channels != prev.out_channels:
                raise ValueError(
                    f"model {self.name!r}: {mod.name} takes {mod.in_channels} channels but "
                    f"{prev.name} gives {prev.out_channels}")
        for mod in self.modules[:-1]:
            reduction *= mod.stride
            if mod.reduction != reduction:
                raise ValueError(f"model {self.name!r}: {mod.name} reduction {mod.reduction} "
                                 f"!= product of strides {reduction}")

    @property
    def blocks(self) -> tuple[ModuleSpec, ...]:
        return tuple(m for m in self.modules if m.kind == "block")

    @property
    def num_stages(self) -> int:
        return max(m.stage for m in self.blocks)

    def module(self, name: str) -> ModuleSpec:
        for m in self.modules:
            if m.name == name:
                return m
        raise KeyError(f"model {self.name!r} has no module {name!r}")

    def predecessor(self, name: str) -> str | None:
        """Name of the module whose output feeds `name` in this model (None for the stem)."""
        names = [m.name for m in self.modules]
        i = names.index(name)
        return names[i - 1] if i > 0 else None


def register_op(name: str, folds: tuple[tuple[str, str], ...] = (), residual: tuple[str, ...] = ()):
    """Decorator registering a module op under a unique name. `folds` names the op's
    (conv, BatchNorm) param pairs whose BatchNorm directly follows the conv: what
    `fold_batch_norms` folds (the op must then run without those BatchNorm params:
    `layers.conv_bn`). `residual` names the params of the last layers of a residual branch
    added to an identity shortcut: with them all zero the op returns its input exactly, on
    the inputs a block of its stage receives (`zeroed_residual`)."""

    def wrap(fn: Op) -> Op:
        if name in _OPS:
            raise ValueError(f"op {name!r} is already registered")
        _OPS[name] = fn
        _FOLDS[name] = tuple(folds)
        _RESIDUALS[name] = tuple(residual)
        return fn

    return wrap


def fold_batch_norms(op: str, static: tuple, params: Params) -> Params:
    """A module's params for inference with every BatchNorm of `register_op`'s `folds` folded
    into its conv (`layers.fold_batch_norm`): the same function of the input, one pass less per
    BatchNorm. Ops without `folds` get their params back unchanged."""
    pairs = _FOLDS.get(op, ())
    if not pairs:
        return params
    eps = dict(static).get("eps", inspect.signature(get_op(op)).parameters["eps"].default)
    out = dict(params)
    for conv, bn in pairs:
        out[conv] = layers.fold_batch_norm(out[conv], out.pop(bn), eps)
    return out


def zeroed_residual(op: str, params: Params, keep):
    """`params` with the op's `register_op` `residual` params zero where `keep` (a boolean, a
    traced one inside the fused program) is False: the op then passes its input through, as a
    slot past a network's depth does, without a select over the activations (a memory pass as
    long as a convolution's on a GPU). None for an op that declares no residual. The zeros
    give exactly the input: the branch's convolution, bias and BatchNorm (folded or not) give
    0, and `relu(0 + x) = x` for the non-negative output of the block before; a non-finite
    activation in the branch gives NaN where the select gave the input."""
    names = _RESIDUALS.get(op, ())
    if not names:
        return None
    out = dict(params)
    for name in names:
        if name in out:
            out[name] = jax.tree_util.tree_map(lambda a: jnp.where(keep, a, jnp.zeros_like(a)), out[name])
    return out


def get_op(name: str) -> Op:
    try:
        return _OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; registered: {sorted(_OPS)}") from None


def register_model(model: ModelDef) -> ModelDef:
    """Registers a model definition; a duplicate name is an error."""
    if model.name in _MODELS:
        raise ValueError(f"model {model.name!r} is already registered")
    _MODELS[model.name] = model
    return model


def get_model(name: str) -> ModelDef:
    try:
        return _MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(sorted(_MODELS))}") from None


@functools.lru_cache(maxsize=None)
def param_shapes(name: str) -> dict:
    """A registered model's params as `jax.ShapeDtypeStruct`s, by module name: traced once per
    model without making arrays (names are never registered twice, so this cannot go stale)."""
    return jax.eval_shape(get_model(name).init, jax.random.PRNGKey(0))


def flat_shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """The path of names of every leaf of a params tree (module, layer, ...) to its shape."""
    return {tuple(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def flat_param_shapes(name: str) -> dict[tuple[str, ...], tuple[int, ...]]:
    """`param_shapes` of a registered model, flattened (`flat_shapes`)."""
    return flat_shapes(param_shapes(name))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def op_of(spec: ModuleSpec) -> tuple:
    """The hashable op key of a module: what a compiled program is cached by."""
    return (spec.op, spec.static)


def run_op(op: tuple, params: Params, x, calibrate: bool = False):
    """One module op, `op` = (registered name, static kwargs as sorted pairs): `(y, params_used)`
    (recalibrated BN stats if `calibrate`)."""
    name, static = op
    return get_op(name)(params, x, calibrate=calibrate, **dict(static))


def apply_module(spec: ModuleSpec, params: Params, x, calibrate: bool = False):
    """Runs one module; returns `(y, params_used)` (recalibrated BN stats if `calibrate`)."""
    return run_op(op_of(spec), params, x, calibrate)


def forward(model: ModelDef, params: Params, x, return_intermediates: bool = False):
    """Runs a whole model on preprocessed NHWC input.

    With `return_intermediates`, also returns `{module name: output}` for every module, so
    any cut point is reachable without hooks (big_vision's habit).
    """
    outs = {}
    for spec in model.modules:
        x, _ = apply_module(spec, params[spec.name], x)
        outs[spec.name] = x
    return (x, outs) if return_intermediates else x
