"""torchvision classification models -> `tv_*` params, and where their weights come from.

One converter per family (`convert_resnet`, `convert_vgg`, ...), each a renaming rule from
torchvision's state_dict keys onto the zoo's module params, written in its docstring. Every
rule goes through `common.map_state_dict`, so a state_dict whose keys or shapes do not fit
the named architecture is refused with an error naming the first offending key.

Field names are the same for every family: `<torch module>.weight` -> `kernel` (conv OIHW ->
HWIO, linear transposed) for convs and linears, `scale` for BatchNorm and LayerNorm;
`.bias` -> `bias`; `.running_mean` / `.running_var` -> `mean` / `var`;
`num_batches_tracked` is dropped.

Weights (`load_state_dict_for`): `"random"` (torchvision's own initialisation under
`torch.manual_seed(seed)`), a torchvision weights name (`"DEFAULT"`, `"IMAGENET1K_V1"` or
the full `"ResNet18_Weights.IMAGENET1K_V1"`), fetched by torchvision's own download mechanism
(`Weights.get_state_dict`, hash-checked, read with `weights_only=True`) unless the file is
already in one of `weights_dirs`, or the path of a local `.pth` state_dict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torchvision

from .common import (ConversionError, conv_kernel, linear_kernel, load_state_dict, map_state_dict,
                     naming_the_held_model)
from modulenet_jax.errors import UserError
from modulenet_jax.pretrained import find_verified
from modulenet_jax.zoo import flat_param_shapes, get_model, tv_efficientnet, tv_vgg

PREFIX = "tv_"
FIELDS = {"bias": "bias", "running_mean": "mean", "running_var": "var"}

Resolve = Callable[[str], "tuple[str, ...] | None"]


def torchvision_name(model_name: str) -> str:
    """`tv_resnet18` -> `resnet18`, the name torchvision's builders and weights use."""
    if not model_name.startswith(PREFIX):
        raise UserError(f"{model_name!r} is not a torchvision zoo model (those are named {PREFIX}*)")
    get_model(model_name)
    return model_name[len(PREFIX):]


def _squeeze_scale(x: np.ndarray) -> np.ndarray:
    """ConvNeXt's layer scale is stored as (C, 1, 1)."""
    return x.reshape(x.shape[0]) if x.ndim == 3 and x.shape[1:] == (1, 1) else x


def _identity(x):
    return x


def prefix_rule(model_name: str, resolve: Resolve):
    """A `map_state_dict` rule from a resolver of torch module prefixes to param paths.

    `resolve("layer1.0.conv1")` gives the param path of that torch module, e.g.
    `("stage1.block0", "conv1")`; the field after the last dot is renamed by the common table
    (see the module docstring) and transformed by the rank of the param it lands on.
    """
    expected = flat_param_shapes(model_name)

    def rule(key: str):
        prefix, _, field = key.rpartition(".")
        base = resolve(prefix)
        if base is None:
            return None
        if field == "weight":
            leaf = "kernel" if base + ("kernel",) in expected else "scale"
        elif field == "layer_scale":
            return base + ("layer_scale",), _squeeze_scale
        elif field in FIELDS:
            leaf = FIELDS[field]
        else:
            return None
        path = base + (leaf,)
        rank = len(expected.get(path, ()))
        transform = {4: conv_kernel, 2: linear_kernel}.get(rank, _identity) if leaf == "kernel" else _identity
        return path, transform

    return rule


def _block_names(model_name: str) -> list[str]:
    return [m.name for m in get_model(model_name).blocks]


def _unit(parts: list[tuple[str, ...]], j: int, rest: str) -> tuple[str, ...] | None:
    """Path of torchvision's `block.{j}{rest}` inside an inverted residual whose sub-layers are
    `parts`: a conv-norm-activation unit's `.0` / `.1` are its `conv` / `bn`, an SE layer's
    `.fc1` / `.fc2` keep their names, a bare layer has no rest."""
    if j >= len(parts):
        return None
    part = parts[j]
    if not rest:
        return part
    sub = {".0": "conv", ".1": "bn", ".fc1": "fc1", ".fc2": "fc2"}.get(rest)
    return None if sub is None else part + (sub,)


def _parts(expected, module: str, names) -> list[tuple[str, ...]]:
    present = {p[1] for p in expected if p[0] == module}
    return [(module,) + n for n in names if n[0] in present]


# -- ResNet ---------------------------------------------------------------------------------

_RESNET_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)$")


def convert_resnet(state_dict: dict[str, np.ndarray], model_name: str) -> dict:
    """ResNet, ResNeXt and Wide ResNet (`tv_resnet` family):

      conv1.*                    -> stem/conv1/*          bn1.* -> stem/bn1/*
      layer{s}.{i}.conv{j}.*     -> stage{s}.block{i}/conv{j}/*
      layer{s}.{i}.bn{j}.*       -> stage{s}.block{i}/bn{j}/*
      layer{s}.{i}.downsample.0.*-> stage{s}.block{i}/downsample/conv/*
      layer{s}.{i}.downsample.1.*-> stage{s}.block{i}/downsample/bn/*
      fc.*                       -> head/fc/*
    """
    def resolve(prefix):
        if prefix in ("conv1", "bn1"):
            return ("stem", prefix)
        if prefix == "fc":
            return ("head", "fc")
        m = _RESNET_BLOCK.match(prefix)
        if not m:
            return None
        s, i, layer = m.groups()
        sub = {"downsample.0": ("downsample", "conv"), "downsample.1": ("downsample", "bn")}.get(layer, (layer,))
        return (f"stage{s}.block{i}",) + sub

    return map_state_dict(state_dict, model_name, prefix_rule(model_name, resolve))


# -- VGG ------------------------------------------------------------------------------------

def _vgg_feature_layers(model_name: str) -> dict[int, tuple[str, ...]]:
    """{index in torchvision's `features`: param path} for every conv and BatchNorm."""
    arch = torchvision_name(model_name).removesuffix("_bn")
    batch_norm = model_name.endswith("_bn")
    blocks = iter(_block_names(model_name))
    out, k = {}, 0
    for g, widths in enumerate(tv_vgg.CONFIGS[arch]):
        for i in range(len(widths)):
            module, j = ("stem", i) if g == 0 else (next(blocks), 0)
            out[k] = (module, f"conv{j}")
            if batch_norm:
                out[k + 1] = (module, f"bn{j}")
            k += 3 if batch_norm else 2
        k += 1  # the max pool
    return out


def convert_vgg(state_dict: dict[str, np.ndarray], model_name: str) -> dict:
    """VGG 11/13/16/19 with and without BN (`tv_vgg` family). `features` is walked in order:
    the convs (and BNs) of the first resolution group go to the stem, each later conv to the
    next block:

      features.{k}.* (conv j of the first group)  -> stem/conv{j}/*   (its BN -> stem/bn{j}/*)
      features.{k}.* (a later conv)               -> stage{s}.block{i}/conv0/*  (BN -> bn0)
      classifier.0.* / classifier.3.* / classifier.6.* -> head/fc1/* / head/fc2/* / head/fc3/*
    """
    feature_layers = _vgg_feature_layers(model_name)
    classifier = {"classifier.0": ("head", "fc1"), "classifier.3": ("head", "fc2"),
                  "classifier.6": ("head", "fc3")}

    def resolve(prefix):
        m = re.match(r"^features\.(\d+)$", prefix)
        if m:
            return feature_layers.get(int(m.group(1)))
        return classifier.get(prefix)

    return map_state_dict(state_dict, model_name, prefix_rule(model_name, resolve))


# -- MobileNetV2 / V3, EfficientNet -----------------------------------------------------------

def _features_rule(model_name: str, feature_prefixes: list[str], block_layers: Callable, classifier: dict):
    """Resolver for models whose `features.*` are the stem, the blocks in order and a final
    conv-norm-activation: `feature_prefixes[n]` is the torch prefix of the zoo's module n."""
    names = [m.name for m in get_model(model_name).modules[:-1]]
    by_prefix = dict(zip(feature_prefixes, names))
    expected = flat_param_shapes(model_name)
    pattern = re.compile(r"^(" + "|".join(re.escape(p) for p in feature_prefixes) + r")\.(.+)$")

    def resolve(prefix):
        if prefix in classifier:
            return classifier[prefix]
        m = pattern.match(prefix)
        if not m:
            return None
        module, rest = by_prefix[m.group(1)], m.group(2)
        if module == "stem" or "project" not in {p[1] for p in expected if p[0] == module}:
            return {"0": (module, "conv"), "1": (module, "bn")}.get(rest)
        return block_layers(expected, module, rest)

    return prefix_rule(model_name, resolve)


def _v3_block(expected, module, rest):
    m = re.match(r"^block\.(\d+)((?:\.\w+)?)$", rest)
    parts = _parts(expected, module, [("expand",), ("dw",), ("se",), ("project",)])
    return _unit(parts, int(m.group(1)), m.group(2)) if m else None


def convert_mobilenet_v2(state_dict: dict[str, np.ndarray], model_name: str = "tv_mobilenet_v2") -> dict:
    """MobileNetV2 (`tv_mobilenet_v2`). `features.{n}` is the zoo's module n (stem, blocks in
    order, the final 1x1 conv); inside an inverted residual `conv.{j}` counts the sub-layers
    [expand (absent when the expansion is 1), depthwise, project conv, project BN]:

      features.0.0.* / features.0.1.*       -> stem/conv/* / stem/bn/*
      features.{n}.conv.{j}.0.* / .1.*      -> <block n>/{expand|dw}/conv/* / .../bn/*
      features.{n}.conv.{j}.*  (bare)       -> <block n>/project/conv/* or <block n>/project/bn/*
      features.18.0.* / features.18.1.*     -> <last block>/conv/* / .../bn/*
      classifier.1.*                        -> head/fc/*
    """
    def block_layers(expected, module, rest):
        m = re.match(r"^conv\.(\d+)((?:\.\d)?)$", rest)
        parts = _parts(expected, module, [("expand",), ("dw",), ("project", "conv"), ("project", "bn")])
        return _unit(parts, int(m.group(1)), m.group(2)) if m else None

    prefixes = [f"features.{n}" for n in range(len(get_model(model_name).modules) - 1)]
    rule = _features_rule(model_name, prefixes, block_layers, {"classifier.1": ("head", "fc")})
    return map_state_dict(state_dict, model_name, rule)


def convert_mobilenet_v3(state_dict: dict[str, np.ndarray], model_name: str) -> dict:
    """MobileNetV3 small and large (`tv_mobilenet_v3`). `features.{n}` is the zoo's module n;
    inside an inverted residual `block.{j}` counts the sub-layers present among [expand,
    depthwise, squeeze-excitation, project]:

      features.0.0.* / features.0.1.*       -> stem/conv/* / stem/bn/*
      features.{n}.block.{j}.0.* / .1.*     -> <block n>/{expand|dw|project}/conv/* / .../bn/*
      features.{n}.block.{j}.fc{1,2}.*      -> <block n>/se/fc{1,2}/*
      features.{N}.0.* / features.{N}.1.*   -> <last block>/conv/* / .../bn/*
      classifier.0.* / classifier.3.*       -> head/fc1/* / head/fc2/*
    """
    prefixes = [f"features.{n}" for n in range(len(get_model(model_name).modules) - 1)]
    rule = _features_rule(model_name, prefixes, _v3_block,
                          {"classifier.0": ("head", "fc1"), "classifier.3": ("head", "fc2")})
    return map_state_dict(state_dict, model_name, rule)


def convert_efficientnet(state_dict: dict[str, np.ndarray], model_name: str = "tv_efficientnet_b0") -> dict:
    """EfficientNet-B0 (`tv_efficientnet`). torchvision groups the MBConv blocks as
    `features.{g}.{i}` (g = 1..7); the zoo's blocks are those in order, then `features.8`:

      features.0.0.* / features.0.1.*       -> stem/conv/* / stem/bn/*
      features.{g}.{i}.block.{j}.0.* / .1.* -> <block>/{expand|dw|project}/conv/* / .../bn/*
      features.{g}.{i}.block.{j}.fc{1,2}.*  -> <block>/se/fc{1,2}/*
      features.8.0.* / features.8.1.*       -> <last block>/conv/* / .../bn/*
      classifier.1.*                        -> head/fc/*
    """
    prefixes = ["features.0"]
    for g, setting in enumerate(tv_efficientnet.B0_SETTING, start=1):
        prefixes += [f"features.{g}.{i}" for i in range(setting[-1])]
    prefixes.append(f"features.{len(tv_efficientnet.B0_SETTING) + 1}")
    rule = _features_rule(model_name, prefixes, _v3_block, {"classifier.1": ("head", "fc")})
    return map_state_dict(state_dict, model_name, rule)


# -- DenseNet -------------------------------------------------------------------------------

_LEGACY_DENSE = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def convert_densenet(state_dict: dict[str, np.ndarray], model_name: str = "tv_densenet121") -> dict:
    """DenseNet-121 (`tv_densenet`). Transition t is block 0 of stage t + 1, so dense layer l
    of block b > 1 is block l of stage b (block l - 1 in stage 1). The published checkpoints
    use the legacy names `denselayer{l}.norm.1.*` for `denselayer{l}.norm1.*` (and so on);
    they are renamed first, as torchvision's own loader does:

      features.conv0.* / features.norm0.*   -> stem/conv0/* / stem/norm0/*
      features.denseblock{b}.denselayer{l}.{norm1,conv1,norm2,conv2}.*
                                            -> stage{b}.block{l - 1 or l}/{norm1,...}/*
      features.transition{t}.{norm,conv}.*  -> stage{t+1}.block0/{norm,conv}/*
      features.norm5.* / classifier.*       -> head/norm5/* / head/fc/*
    """
    state_dict = {_LEGACY_DENSE.sub(r"\1\2.", k): v for k, v in state_dict.items()}
    fixed = {"features.conv0": ("stem", "conv0"), "features.norm0": ("stem", "norm0"),
             "features.norm5": ("head", "norm5"), "classifier": ("head", "fc")}

    def resolve(prefix):
        if prefix in fixed:
            return fixed[prefix]
        m = re.match(r"^features\.denseblock(\d)\.denselayer(\d+)\.(norm[12]|conv[12])$", prefix)
        if m:
            b, layer = int(m.group(1)), int(m.group(2))
            return (f"stage{b}.block{layer - 1 if b == 1 else layer}", m.group(3))
        m = re.match(r"^features\.transition(\d)\.(norm|conv)$", prefix)
        if m:
            return (f"stage{int(m.group(1)) + 1}.block0", m.group(2))
        return None

    return map_state_dict(state_dict, model_name, prefix_rule(model_name, resolve))


# -- ConvNeXt -------------------------------------------------------------------------------

def convert_convnext(state_dict: dict[str, np.ndarray], model_name: str = "tv_convnext_tiny") -> dict:
    """ConvNeXt-Tiny (`tv_convnext`). `features.{2s-1}` holds stage s's CNBlocks and
    `features.{2s}` the downsample into stage s + 1, which is that stage's block 0:

      features.0.0.* / features.0.1.*             -> stem/conv/* / stem/norm/*
      features.{2s-1}.{i}.block.0.*               -> stage{s}.block{i or i+1}/dwconv/*
      features.{2s-1}.{i}.block.{2,3,5}.*         -> .../norm/*, .../fc1/*, .../fc2/*
      features.{2s-1}.{i}.layer_scale  (C, 1, 1)  -> .../layer_scale  (C,)
      features.{2s}.0.* / features.{2s}.1.*       -> stage{s+1}.block0/norm/* / .../conv/*
      classifier.0.* / classifier.2.*             -> head/norm/* / head/fc/*
    """
    fixed = {"features.0.0": ("stem", "conv"), "features.0.1": ("stem", "norm"),
             "classifier.0": ("head", "norm"), "classifier.2": ("head", "fc")}
    block_layers = {"0": "dwconv", "2": "norm", "3": "fc1", "5": "fc2"}

    def resolve(prefix):
        if prefix in fixed:
            return fixed[prefix]
        m = re.match(r"^features\.(\d+)\.(\d+)(?:\.block\.(\d))?$", prefix)
        if not m:
            return None
        f, i, layer = int(m.group(1)), int(m.group(2)), m.group(3)
        if f % 2 == 0:  # a downsample: features.{2s}.{0: norm, 1: conv}
            sub = {0: "norm", 1: "conv"}.get(i)
            return None if sub is None or layer is not None else (f"stage{f // 2 + 1}.block0", sub)
        s = (f + 1) // 2
        module = f"stage{s}.block{i if s == 1 else i + 1}"
        if layer is None:
            return (module,)
        return (module, block_layers[layer]) if layer in block_layers else None

    return map_state_dict(state_dict, model_name, prefix_rule(model_name, resolve))


CONVERTERS = {"tv_resnet": convert_resnet, "tv_vgg": convert_vgg, "tv_mobilenet_v2": convert_mobilenet_v2,
              "tv_mobilenet_v3": convert_mobilenet_v3, "tv_efficientnet": convert_efficientnet,
              "tv_densenet": convert_densenet, "tv_convnext": convert_convnext}
FAMILIES = tuple(CONVERTERS)


def convert(state_dict: dict[str, np.ndarray], model_name: str) -> dict:
    """The params of `model_name` (a `tv_*` zoo model) from a torchvision state_dict."""
    family = get_model(model_name).family
    if family not in CONVERTERS:
        raise ConversionError(f"{model_name} (family {family}) is not a torchvision family: "
                              f"{', '.join(FAMILIES)}")
    try:
        return CONVERTERS[family](state_dict, model_name)
    except ConversionError as e:
        raise naming_the_held_model(e, state_dict, model_name, CONVERTERS[family]) from None


def convert_file(path, model_name: str | None = None):
    """`(model_name, params)` of a local `.pth` state_dict (read with `weights_only=True`)."""
    if model_name is None:
        raise UserError(f"{path}: say which torchvision model it holds (e.g. --model tv_resnet18)")
    return model_name, convert(load_state_dict(path), model_name)


# -- weights ----------------------------------------------------------------------------------

def torch_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def weights_enum(model_name: str, weights: str):
    """torchvision's `Weights` for a name like `DEFAULT`, `IMAGENET1K_V1` or the full
    `ResNet18_Weights.IMAGENET1K_V1`."""
    enum = torchvision.models.get_model_weights(torchvision_name(model_name))
    short = weights.split(".")[-1]
    if "." in weights and weights.split(".")[0] != enum.__name__:
        raise UserError(f"{weights!r} are not weights of {model_name} (its weights are {enum.__name__}.*)")
    try:
        return enum[short]
    except KeyError:
        raise UserError(f"{model_name} has no torchvision weights {weights!r}; known: "
                        f"{', '.join(enum.__members__)}") from None


def _local_copy(url: str, weights_dirs) -> Path | None:
    """A local copy of a torchvision weights file (same file name; the SHA-256 prefix that
    torchvision writes into the name checked)."""
    name = url.rsplit("/", 1)[-1]
    digest = re.search(r"-([a-f0-9]+)\.", name)
    return find_verified(name, weights_dirs, digest and digest.group(1), "delete or replace it")


def load_state_dict_for(model_name: str, weights: str, seed: int | None = None,
                        weights_dirs=()) -> tuple[dict[str, np.ndarray], str]:
    """`(state_dict as numpy, label)` of a torchvision model's weights (see the module doc);
    `random` weights need their `seed`."""
    name = torchvision_name(model_name)
    if weights == "random":
        if seed is None:
            raise ValueError(f"{model_name}: random weights are drawn with a seed; pass it")
        torch.manual_seed(seed)
        return torch_state_dict(torchvision.models.get_model(name, weights=None)), f"random (seed {seed})"
    if weights.endswith((".pth", ".pt")) or Path(weights).is_file():
        return load_state_dict(weights), str(Path(weights).name)
    w = weights_enum(model_name, weights)
    local = _local_copy(w.url, weights_dirs)
    if local is not None:
        return load_state_dict(local), local.name
    try:
        sd = w.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except OSError as e:
        raise UserError(f"could not fetch torchvision weights {w} from {w.url} ({e}); check the network, or "
                        f"put {w.url.rsplit('/', 1)[-1]} into a folder of knowledge.weights_dirs") from None
    return {k: v.detach().cpu().numpy() for k, v in sd.items()}, str(w)


def load_params(model_name: str, weights: str, seed: int | None = None, weights_dirs=()) -> tuple[dict, str]:
    """`(params, label)` of a `tv_*` model with the given weights, converted."""
    state_dict, label = load_state_dict_for(model_name, weights, seed, weights_dirs)
    return convert(state_dict, model_name), label
