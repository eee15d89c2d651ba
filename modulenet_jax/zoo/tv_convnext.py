"""torchvision's ConvNeXt-Tiny.

Semantics follow `torchvision/models/convnext.py` (`convnext_tiny`: widths 96, 192, 384,
768, depths 3, 3, 9, 3): a 4x4/4 conv (with bias) + LayerNorm2d stem; CNBlocks (7x7
depthwise conv with bias, LayerNorm over channels, Linear to 4x, exact GELU, Linear back,
times the per-channel layer scale, plus the input; stochastic depth is the identity at
evaluation); between stages a downsample of LayerNorm2d + 2x2/2 conv (with bias); head =
global average pool, LayerNorm2d, Linear. Every LayerNorm has eps 1e-6.

Modules: `stem` (reduction 4); `stage{s}.block{i}`: stage 1 is `features.1`'s blocks, stage
s > 1 starts with the downsample `features.{2s-2}` (stride 2, the channels double) followed by
`features.{2s-1}`'s blocks; `head`.
"""

from __future__ import annotations

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import LN, ChainBuilder, Conv, Linear, Scale, make_model
from modulenet_jax.zoo.registry import register_model, register_op

LN_EPS = 1e-6
CONFIGS = {"convnext_tiny": ((96, 3), (192, 3), (384, 9), (768, 3))}


@register_op("tv_convnext.stem")
def stem(params, x, calibrate=False):
    h = layers.conv(params["conv"], x, stride=4)
    return layers.layer_norm(params["norm"], h, LN_EPS), params


@register_op("tv_convnext.block", residual=("layer_scale",))
def block(params, x, calibrate=False):
    h = layers.conv(params["dwconv"], x, padding=3, groups=x.shape[-1])
    h = layers.layer_norm(params["norm"], h, LN_EPS)
    h = layers.linear(layers.gelu(layers.linear(h, params["fc1"])), params["fc2"])
    return x + params["layer_scale"] * h, params


@register_op("tv_convnext.downsample")
def downsample(params, x, calibrate=False):
    return layers.conv(params["conv"], layers.layer_norm(params["norm"], x, LN_EPS), stride=2), params


@register_op("tv_convnext.head")
def head(params, x, calibrate=False):
    h = layers.layer_norm(params["norm"], layers.global_avg_pool(x), LN_EPS)
    return layers.linear(h, params["fc"]), params


def tv_convnext(arch: str, num_classes: int = 1000):
    if arch not in CONFIGS:
        raise ValueError(f"unknown torchvision ConvNeXt {arch!r}; known: {', '.join(CONFIGS)}")
    stages = CONFIGS[arch]
    first = stages[0][0]
    chain = ChainBuilder("tv_convnext.stem", first, 4)
    layouts = {"stem": {"conv": Conv(4, 3, first, bias=True), "norm": LN(first)}}
    for s, (dim, n) in enumerate(stages, start=1):
        if s > 1:
            c = chain.channels
            name = chain.block("tv_convnext.downsample", s, dim, 2)
            layouts[name] = {"norm": LN(c), "conv": Conv(2, c, dim, bias=True)}
        for _ in range(n):
            name = chain.block("tv_convnext.block", s, dim)
            layouts[name] = {"dwconv": Conv(7, dim, dim, groups=dim, bias=True), "norm": LN(dim),
                             "fc1": Linear(dim, 4 * dim), "fc2": Linear(4 * dim, dim), "layer_scale": Scale(dim)}
    c = chain.channels
    layouts["head"] = {"norm": LN(c), "fc": Linear(c, num_classes)}
    specs = chain.head("tv_convnext.head", num_classes)
    return make_model(f"tv_{arch}", "tv_convnext", specs, layouts, num_classes)


for _arch in CONFIGS:
    register_model(tv_convnext(_arch))
