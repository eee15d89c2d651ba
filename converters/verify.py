"""Checking a converted torchvision model against torchvision's own forward pass.

`randomized_model` builds a torchvision model whose every parameter and BatchNorm statistic
is random (so BatchNorm, biases, LayerNorm affines and layer scales are really tested, not
left at their identity initialisation); `torch_modules` cuts it into the same modules as the
zoo's `ModelDef`, as plain torch callables (no hooks); `compare` runs both in fp32, eval
mode, and reports the largest absolute difference of every module's output (each module on
torchvision's own input to it) and of the whole model's logits (end to end), next to the
scale (max |torch output|) each is judged against. The zoo side runs through
`assemble.run_module`, the compiled per-module call the evaluator uses.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import numpy as np
import torch
import torchvision
from torch import nn

from .torchvision_models import convert, torch_state_dict, torchvision_name
from modulenet_jax.assemble import run_module
from modulenet_jax.zoo import get_model

TOLERANCE = 1e-4  # max |jax - torch| <= TOLERANCE * max |torch|
# checked at 224 px as well as 32 px (every family, both ResNet block kinds); the rest at 32 px only
AT_224 = ("tv_resnet18", "tv_resnext50_32x4d", "tv_vgg11_bn", "tv_mobilenet_v2", "tv_mobilenet_v3_small",
          "tv_efficientnet_b0", "tv_densenet121", "tv_convnext_tiny")


@contextlib.contextmanager
def single_torch_thread():
    """torch on one thread inside the block: its small CPU convs run many times slower with two
    OpenMP threads on a busy two-core machine (CI's size)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def randomized_model(model_name: str, seed: int, calibration_size: int = 96,
                     calibration_batch: int = 4) -> nn.Module:
    """torchvision's `model_name` in eval mode with random weights and random BN statistics.

    Biases, norm affines and layer scales are drawn at random; BatchNorm running statistics
    are first set to the batch statistics of random images (a train-mode pass with a
    cumulative average), so activations keep a sane scale through deep models, then moved
    off them at random (mean shifted by 0.2 standard deviations times a normal draw, variance
    scaled by 0.5-2), so the running statistics differ from any batch's.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torchvision.models.get_model(torchvision_name(model_name), weights=None)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0.0, 0.2, generator=gen)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.1, generator=gen)
            if isinstance(getattr(m, "layer_scale", None), nn.Parameter):
                m.layer_scale.uniform_(0.2, 1.0, generator=gen)
        if bns:
            momenta = [m.momentum for m in bns]
            for m in bns:
                m.reset_running_stats()
                m.momentum = None
            model.train()
            model(torch.randn(calibration_batch, 3, calibration_size, calibration_size, generator=gen))
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
                m.running_mean += 0.2 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=gen)
                m.running_var *= torch.empty(m.running_var.shape).uniform_(0.5, 2.0, generator=gen)
    return model.eval()


class _Head(nn.Module):
    """Pooling + classifier as a torch callable (what follows `features` in each family)."""

    def __init__(self, model: nn.Module, pre: nn.Module | None = None):
        super().__init__()
        self.model, self.pre = model, pre

    def forward(self, x):
        if self.pre is not None:
            x = self.pre(x)
        return self.model.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class _Dense(nn.Module):
    """A dense layer as the zoo cuts it: its input with its new features concatenated."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return torch.cat([x, self.layer(x)], 1)


def _vgg_modules(model: nn.Module) -> list[nn.Module]:
    tokens, unit = [], None
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            tokens.append(layer)
            unit = None
        elif isinstance(layer, nn.Conv2d):
            unit = [layer]
            tokens.append(unit)
        else:
            unit.append(layer)
    first_pool = next(i for i, t in enumerate(tokens) if isinstance(t, nn.Module))
    stem = nn.Sequential(*[m for t in tokens[:first_pool] for m in t], tokens[first_pool])
    blocks, pending = [], None
    for t in tokens[first_pool + 1:-1]:
        if isinstance(t, nn.Module):
            pending = t
        else:
            blocks.append(nn.Sequential(*([pending] if pending is not None else []), *t))
            pending = None
    head = nn.Sequential(tokens[-1], model.avgpool, nn.Flatten(1), model.classifier)
    return [stem, *blocks, head]


def torch_modules(model_name: str, model: nn.Module) -> list[nn.Module]:
    """torch callables, one per module of the zoo's `model_name`, in forward order."""
    family = get_model(model_name).family
    if family == "tv_resnet":
        m = model
        blocks = [b for layer in (m.layer1, m.layer2, m.layer3, m.layer4) for b in layer]
        head = nn.Sequential(m.avgpool, nn.Flatten(1), m.fc)
        out = [nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool), *blocks, head]
    elif family == "tv_vgg":
        out = _vgg_modules(model)
    elif family in ("tv_mobilenet_v2", "tv_mobilenet_v3"):
        out = [*model.features, _Head(model)]
    elif family == "tv_efficientnet":
        f = list(model.features)
        out = [f[0], *[b for group in f[1:-1] for b in group], f[-1], _Head(model)]
    elif family == "tv_densenet":
        out = []
        for name, child in model.features.named_children():
            if name == "conv0":
                f = model.features
                out.append(nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0))
            elif name.startswith("denseblock"):
                out += [_Dense(layer) for layer in child.values()]
            elif name.startswith("transition"):
                out.append(child)
        out.append(_Head(model, nn.Sequential(model.features.norm5, nn.ReLU())))
    elif family == "tv_convnext":
        out = []
        for i, child in enumerate(model.features):
            out += list(child) if i % 2 else [child]
        out.append(nn.Sequential(model.avgpool, model.classifier))
    else:
        raise ValueError(f"no torch module cut for family {family!r}")
    n = len(get_model(model_name).modules)
    if len(out) != n:
        raise AssertionError(f"{model_name}: {len(out)} torch modules for {n} zoo modules")
    return out


@dataclasses.dataclass(frozen=True)
class Report:
    """Largest |jax - torch| per module and for the logits, with the scale each is judged on.

    Each module is checked on its own: the zoo's module gets the very input torchvision's
    module got, so a module's row measures that module alone. The logits row is end to end
    (the zoo's whole forward from the image), so it includes what accumulates over depth.
    """

    model: str
    size: int
    modules: tuple[tuple[str, float, float], ...]  # (module name, max abs diff, max |torch|)
    logits_diff: float
    logits_scale: float
    chain_diff: float  # torch's module-by-module chain against torch's own forward

    @property
    def worst_module(self) -> tuple[str, float, float]:
        return max(self.modules, key=lambda m: m[1] / max(m[2], 1e-30))

    def relative(self) -> float:
        """The largest diff / scale over the modules and the logits."""
        return max([self.logits_diff / self.logits_scale] + [d / max(s, 1e-30) for _, d, s in self.modules])

    def failures(self, tolerance: float = TOLERANCE) -> list[str]:
        """Rows over `tolerance` x their scale, and a torch chain that is not torch's forward."""
        rows = [f"{n}: {d:.3g} > {tolerance} x {s:.3g}" for n, d, s in self.modules if d > tolerance * s]
        if self.logits_diff > tolerance * self.logits_scale:
            rows.append(f"logits: {self.logits_diff:.3g} > {tolerance} x {self.logits_scale:.3g}")
        if self.chain_diff > 1e-6 * self.logits_scale:
            rows.append(f"torch's module chain differs from its forward by {self.chain_diff:.3g}")
        return rows


def _nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy().copy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def compare(model_name: str, size: int, *, seed: int, batch: int = 2, model: nn.Module | None = None,
            params: dict | None = None) -> Report:
    """Runs the randomized torchvision model and the converted zoo model on the same random
    `batch x 3 x size x size` input, module by module and end to end; see `Report`."""
    model = model if model is not None else randomized_model(model_name, seed)
    params = params if params is not None else convert(torch_state_dict(model), model_name)
    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, size, size)).astype(np.float32))
    zoo_model = get_model(model_name)
    inputs, outputs = [], []
    with torch.no_grad():
        h = x
        for tm in torch_modules(model_name, model):
            inputs.append(_nhwc(h))
            h = tm(h)
            outputs.append(_nhwc(h))
        full = model(x).numpy()
    params = jax.device_put(params)
    got = [run_module(spec, params[spec.name], jax.device_put(h))[0] for spec, h in zip(zoo_model.modules, inputs)]
    h = jax.device_put(inputs[0])
    for spec in zoo_model.modules:
        h, _ = run_module(spec, params[spec.name], h)
    logits = np.asarray(h)
    rows = []
    for spec, g, ref in zip(zoo_model.modules, got, outputs):
        if g.shape != ref.shape:
            raise AssertionError(f"{model_name}/{spec.name}: shape {g.shape}, torch gives {ref.shape}")
        rows.append((spec.name, float(np.max(np.abs(np.asarray(g) - ref))), float(np.max(np.abs(ref)))))
    return Report(model_name, size, tuple(rows), float(np.max(np.abs(logits - full))),
                  float(np.max(np.abs(full))), float(np.max(np.abs(full - outputs[-1]))))
