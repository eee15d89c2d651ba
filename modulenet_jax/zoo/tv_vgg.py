"""torchvision's VGGs: vgg11/13/16/19, each with and without BatchNorm.

Semantics follow `torchvision/models/vgg.py`: 3x3 convs (padding 1, with bias), each followed
by BatchNorm (the `_bn` variants, eps 1e-5) and ReLU, 2x2/2 max pools between the resolution
groups; the classifier pools adaptively to 7x7, flattens in PyTorch's C-H-W order and applies
Linear(25088, 4096), ReLU, Linear(4096, 4096), ReLU, Linear(4096, classes) (dropout is the
identity at evaluation).

Modules (a resolution group is a run of convs between two max pools):
- `stem`: the first group (the 64-channel convs) and its max pool (reduction 2);
- `stage{s}.block{i}`: the convs of group s+1; the first conv of groups 3-5 takes the max pool
  before it, so that block carries the stride 2 (groups 2-5 are stages 1-4, reductions 2-16);
- `head`: the last max pool, the adaptive 7x7 pool, the flatten and the MLP.
"""

from __future__ import annotations

import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import BN, ChainBuilder, Conv, Linear, make_model
from modulenet_jax.zoo.registry import register_model, register_op

FAMILY = "tv_vgg"
BN_EPS = 1e-5

# the conv widths of each resolution group ("cfgs" A, B, D, E in torchvision)
CONFIGS = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _conv_unit(params, x, i, batch_norm, calibrate, used):
    h = layers.conv(params[f"conv{i}"], x, padding=1)
    if batch_norm:
        h, used[f"bn{i}"] = layers.batch_norm(params[f"bn{i}"], h, BN_EPS, calibrate)
    return layers.relu(h)


@register_op("tv_vgg.stem")
def stem(params, x, calibrate=False, *, convs=1, batch_norm=False):
    used = dict(params)
    for i in range(convs):
        x = _conv_unit(params, x, i, batch_norm, calibrate, used)
    return layers.max_pool(x, 2, 2), used


@register_op("tv_vgg.conv")
def conv_block(params, x, calibrate=False, *, pool=False, batch_norm=False):
    """(A 2x2/2 max pool, then) conv + (BN +) ReLU."""
    used = dict(params)
    if pool:
        x = layers.max_pool(x, 2, 2)
    return _conv_unit(params, x, 0, batch_norm, calibrate, used), used


@register_op("tv_vgg.head")
def head(params, x, calibrate=False):
    x = layers.adaptive_avg_pool(layers.max_pool(x, 2, 2), 7)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's flatten order: C, H, W
    x = layers.relu(layers.linear(x, params["fc1"]))
    x = layers.relu(layers.linear(x, params["fc2"]))
    return layers.linear(x, params["fc3"]), params


def _conv_layout(cin, cout, batch_norm, i=0):
    layout = {f"conv{i}": Conv(3, cin, cout, bias=True)}
    if batch_norm:
        layout[f"bn{i}"] = BN(cout)
    return layout


def tv_vgg(arch: str, batch_norm: bool, num_classes: int = 1000):
    """The ModelDef of torchvision's `arch` (`_bn` if `batch_norm`), registered as `tv_{name}`."""
    if arch not in CONFIGS:
        raise ValueError(f"unknown torchvision VGG {arch!r}; known: {', '.join(CONFIGS)}")
    groups = CONFIGS[arch]
    first = groups[0]
    chain = ChainBuilder("tv_vgg.stem", first[-1], 2, {"convs": len(first), "batch_norm": batch_norm})
    stem_layout, cin = {}, 3
    for i, cout in enumerate(first):
        stem_layout.update(_conv_layout(cin, cout, batch_norm, i))
        cin = cout
    layouts = {"stem": stem_layout}
    for s, widths in enumerate(groups[1:], start=1):
        for i, cout in enumerate(widths):
            pool = s > 1 and i == 0
            name = chain.block("tv_vgg.conv", s, cout, 2 if pool else 1, {"pool": pool, "batch_norm": batch_norm})
            layouts[name] = _conv_layout(chain.specs[-1].in_channels, cout, batch_norm)
    c = chain.channels
    layouts["head"] = {"fc1": Linear(c * 49, 4096), "fc2": Linear(4096, 4096), "fc3": Linear(4096, num_classes)}
    specs = chain.head("tv_vgg.head", num_classes)
    return make_model(f"tv_{arch}{'_bn' if batch_norm else ''}", FAMILY, specs, layouts, num_classes)


for _arch in CONFIGS:
    for _bn in (False, True):
        register_model(tv_vgg(_arch, _bn))
