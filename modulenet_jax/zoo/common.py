"""Shared pieces of the torchvision families: declarative param layouts, their init, and the
small conv-norm-activation units most of those models are built from.

A family describes each module's params as a *layout*: a nested dict whose leaves are layer
descriptors (`Conv`, `BN`, `Linear`, `LN`, `Scale`). `make_model` turns the layouts into
`ModelDef.init(key)` (one explicit PRNG key), so a model's param structure is written down
once and every shape check follows from it.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.registry import ModelDef, ModuleSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Conv:
    """A conv kernel (k, k, cin / groups, cout), He-normal on its fan-in, optionally a bias."""

    k: int
    cin: int
    cout: int
    groups: int = 1
    bias: bool = False


@dataclasses.dataclass(frozen=True)
class Linear:
    """A (cin, cout) kernel and a bias, uniform in +-1/sqrt(cin) like PyTorch's default."""

    cin: int
    cout: int


@dataclasses.dataclass(frozen=True)
class BN:
    """BatchNorm affine params and running statistics, all randomised so BN is exercised."""

    c: int


@dataclasses.dataclass(frozen=True)
class LN:
    """LayerNorm affine params (scale near 1, bias near 0)."""

    c: int


@dataclasses.dataclass(frozen=True)
class Scale:
    """A per-channel multiplier (ConvNeXt's layer scale), uniform in [0.5, 1]."""

    c: int


def _leaves(d) -> dict:
    """{param name: (shape, distribution, a, b)} of one descriptor: `normal` draws a + b * N(0, 1),
    `uniform` draws U(a, b)."""
    if isinstance(d, Conv):
        fan_in = d.k * d.k * (d.cin // d.groups)
        out = {"kernel": ((d.k, d.k, d.cin // d.groups, d.cout), "normal", 0.0, (2.0 / fan_in) ** 0.5)}
        if d.bias:
            out["bias"] = ((d.cout,), "normal", 0.0, 0.05)
        return out
    if isinstance(d, Linear):
        bound = 1.0 / d.cin ** 0.5
        return {"kernel": ((d.cin, d.cout), "uniform", -bound, bound), "bias": ((d.cout,), "uniform", -bound, bound)}
    if isinstance(d, BN):
        return {"scale": ((d.c,), "normal", 1.0, 0.1), "bias": ((d.c,), "normal", 0.0, 0.1),
                "mean": ((d.c,), "normal", 0.0, 0.1), "var": ((d.c,), "uniform", 0.5, 1.5)}
    if isinstance(d, LN):
        return {"scale": ((d.c,), "normal", 1.0, 0.1), "bias": ((d.c,), "normal", 0.0, 0.1)}
    if isinstance(d, Scale):
        return {"": ((d.c,), "uniform", 0.5, 1.0)}
    raise TypeError(f"not a layer descriptor: {d!r}")


def _flatten(layout, prefix=()) -> list:
    """[(path, (shape, distribution, a, b))] of a layout, in sorted path order."""
    if not isinstance(layout, dict):
        return [((prefix + (k,)) if k else prefix, leaf) for k, leaf in sorted(_leaves(layout).items())]
    return [item for name in sorted(layout) for item in _flatten(layout[name], prefix + (name,))]


def unflatten(items) -> dict:
    """A nested dict from `(path tuple, value)` pairs."""
    tree: dict = {}
    for path, value in items:
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return tree


def _init_model(layouts: tuple, key) -> dict:
    """Params of `{module: layout}`: one normal and one uniform draw for the whole model, cut
    into the leaves. With a concrete key the cutting is done in numpy and the tree goes to the
    device in one `jax.device_put`: an op (or an RNG call) per leaf would compile one XLA
    program per shape, which takes minutes for a deep model on a CPU, and with jax 0.10 even
    `jnp.asarray` of a numpy array does (27 ms per new shape on the 2-core EPYC, 0.23 ms for
    `device_put`; the README's Development section has the command).
    Traced (under `eval_shape` or `jit`) the same cuts are jax ops."""
    leaves = _flatten(dict(layouts))
    sizes = {"normal": 0, "uniform": 0}
    for _, (shape, dist, _, _) in leaves:
        sizes[dist] += math.prod(shape)
    kn, ku = jax.random.split(key)
    draws = {"normal": jax.random.normal(kn, (sizes["normal"],)), "uniform": jax.random.uniform(ku, (sizes["uniform"],))}
    traced = isinstance(draws["normal"], jax.core.Tracer)
    if not traced:
        draws = {k: np.asarray(v) for k, v in draws.items()}
    offsets = {"normal": 0, "uniform": 0}
    items = []
    for path, (shape, dist, a, b) in leaves:
        n, o = math.prod(shape), offsets[dist]
        offsets[dist] = o + n
        z = draws[dist][o:o + n]
        value = (a + b * z if dist == "normal" else a + (b - a) * z).reshape(shape)
        items.append((path, value))
    tree = unflatten(items)
    return tree if traced else jax.device_put(tree)


def make_model(name: str, family: str, specs, layouts: dict, num_classes: int,
               input_size: int = 224) -> ModelDef:
    """A `ModelDef` whose init follows `layouts` ({module name: layout}), ImageNet preprocessing."""
    specs = tuple(specs)
    missing = [s.name for s in specs if s.name not in layouts]
    if missing or len(layouts) != len(specs):
        raise ValueError(f"model {name!r}: layouts do not match the modules (missing {missing})")
    ordered = tuple((s.name, layouts[s.name]) for s in specs)
    return ModelDef(name=name, family=family, modules=specs, init=functools.partial(_init_model, ordered),
                    input_size=input_size, num_classes=num_classes, mean=IMAGENET_MEAN, std=IMAGENET_STD)


class ChainBuilder:
    """Collects a model's module specs in forward order, tracking channels and reduction."""

    def __init__(self, stem_op: str, stem_channels: int, stem_stride: int, stem_static: dict | None = None):
        self.specs = [ModuleSpec("stem", "stem", stem_op, 0, 0, 3, stem_channels, stem_stride, stem_stride,
                                 static_items(stem_static))]
        self.channels = stem_channels
        self.reduction = stem_stride
        self.stage = 0
        self._index: dict[int, int] = {}

    def next_stage(self, stride: int) -> int:
        """The stage of the next block when stages are resolution groups: the first block
        opens stage 1 and every strided block after it opens a new stage."""
        if self.stage == 0 or stride > 1:
            self.stage += 1
        return self.stage

    def block(self, op: str, stage: int, out_channels: int, stride: int = 1, static: dict | None = None) -> str:
        """Appends block `stage{stage}.block{i}` (i counts within the stage); returns its name."""
        i = self._index.get(stage, 0)
        self._index[stage] = i + 1
        self.reduction *= stride
        name = f"stage{stage}.block{i}"
        self.specs.append(ModuleSpec(name, "block", op, stage, i, self.channels, out_channels, stride,
                                     self.reduction, static_items(static)))
        self.channels = out_channels
        return name

    def head(self, op: str, num_classes: int, static: dict | None = None) -> tuple[ModuleSpec, ...]:
        stage = max(self._index, default=0) + 1
        self.specs.append(ModuleSpec("head", "head", op, stage, 0, self.channels, num_classes, 1,
                                     self.reduction, static_items(static)))
        return tuple(self.specs)


def static_items(static: dict | None) -> tuple:
    """A spec's static kwargs as the sorted tuple of pairs `ModuleSpec` keeps."""
    return tuple(sorted((static or {}).items()))


# -- conv-norm-activation units ----------------------------------------------------------

def conv_bn_act(params, x, calibrate: bool, eps: float, act: str, stride: int = 1, groups: int = 1):
    """`{"conv", "bn"}` params: conv (padding (k-1)/2, as torchvision's Conv2dNormActivation),
    BatchNorm, activation. Returns `(y, params_used)`."""
    k = params["conv"]["kernel"].shape[0]
    h = layers.conv(params["conv"], x, stride=stride, padding=(k - 1) // 2, groups=groups)
    h, bn = layers.batch_norm(params["bn"], h, eps, calibrate)
    return layers.activation(act)(h), {**params, "bn": bn}


def conv_bn_layout(k: int, cin: int, cout: int, groups: int = 1) -> dict:
    return {"conv": Conv(k, cin, cout, groups), "bn": BN(cout)}


def squeeze_excite(params, x, inner_act: str, gate_act: str):
    """torchvision's SqueezeExcitation: mean-pool, 1x1 conv, act, 1x1 conv, gate, rescale."""
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    s = layers.activation(inner_act)(layers.conv(params["fc1"], s))
    s = layers.activation(gate_act)(layers.conv(params["fc2"], s))
    return x * s


def pooled_linear_head(params, x):
    """Global average pool then the `fc` linear layer (dropout is the identity at evaluation)."""
    return layers.linear(layers.global_avg_pool(x), params["fc"])
