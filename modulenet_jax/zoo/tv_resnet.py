"""torchvision's ResNets: resnet18/34/50/101/152, resnext50_32x4d and wide_resnet50_2.

Semantics follow `torchvision/models/resnet.py`: a 7x7/2 conv + BN + ReLU + 3x3/2 max pool
stem (padding 1, floor mode), four stages of BasicBlocks (18, 34) or Bottlenecks (the rest;
stride on the 3x3 conv, `width = planes * width_per_group / 64 * groups`), a 1x1 conv + BN
downsample on the first block of a stage when its stride or channels change, global average
pooling and a linear classifier. BatchNorm eps 1e-5.

Modules: `stem` (reduction 4), `stage{s}.block{i}` for torchvision's `layer{s}.{i}`
(the first block of stages 2-4 has stride 2), `head` (pool + fc).
"""

from __future__ import annotations

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import BN, ChainBuilder, Conv, Linear, make_model, pooled_linear_head
from modulenet_jax.zoo.registry import register_model, register_op

FAMILY = "tv_resnet"
BN_EPS = 1e-5
STAGE_PLANES = (64, 128, 256, 512)

# name: (block, blocks per stage, groups, width per group)
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128),
}


def _bn(params, name, h, calibrate, used):
    h, used[name] = layers.batch_norm(params[name], h, BN_EPS, calibrate)
    return h


@register_op("tv_resnet.stem")
def stem(params, x, calibrate=False):
    used = dict(params)
    h = layers.conv(params["conv1"], x, stride=2, padding=3)
    h = layers.relu(_bn(params, "bn1", h, calibrate, used))
    return layers.max_pool(h, 3, 2, 1), used


def _shortcut(params, x, stride, calibrate, used):
    if "downsample" not in params:
        return x
    d = dict(params["downsample"])
    h = layers.conv(d["conv"], x, stride=stride)
    h = _bn(d, "bn", h, calibrate, d)
    used["downsample"] = d
    return h


@register_op("tv_resnet.basic_block", residual=("conv2", "bn2"))
def basic_block(params, x, calibrate=False, *, stride=1):
    used = dict(params)
    h = layers.conv(params["conv1"], x, stride=stride, padding=1)
    h = layers.relu(_bn(params, "bn1", h, calibrate, used))
    h = layers.conv(params["conv2"], h, padding=1)
    h = _bn(params, "bn2", h, calibrate, used)
    return layers.relu(h + _shortcut(params, x, stride, calibrate, used)), used


@register_op("tv_resnet.bottleneck", residual=("conv3", "bn3"))
def bottleneck(params, x, calibrate=False, *, stride=1, groups=1):
    used = dict(params)
    h = layers.relu(_bn(params, "bn1", layers.conv(params["conv1"], x), calibrate, used))
    h = layers.conv(params["conv2"], h, stride=stride, padding=1, groups=groups)
    h = layers.relu(_bn(params, "bn2", h, calibrate, used))
    h = _bn(params, "bn3", layers.conv(params["conv3"], h), calibrate, used)
    return layers.relu(h + _shortcut(params, x, stride, calibrate, used)), used


@register_op("tv_resnet.head")
def head(params, x, calibrate=False):
    return pooled_linear_head(params, x), params


def _block_layout(kind, cin, planes, stride, groups, width_per_group):
    if kind == "basic":
        out = planes
        layout = {"conv1": Conv(3, cin, planes), "bn1": BN(planes),
                  "conv2": Conv(3, planes, planes), "bn2": BN(planes)}
    else:
        width = int(planes * (width_per_group / 64.0)) * groups
        out = planes * 4
        layout = {"conv1": Conv(1, cin, width), "bn1": BN(width),
                  "conv2": Conv(3, width, width, groups), "bn2": BN(width),
                  "conv3": Conv(1, width, out), "bn3": BN(out)}
    if stride != 1 or cin != out:
        layout["downsample"] = {"conv": Conv(1, cin, out), "bn": BN(out)}
    return layout, out


def tv_resnet(arch: str, num_classes: int = 1000):
    """The ModelDef of torchvision's `arch` (a key of `CONFIGS`), registered as `tv_{arch}`."""
    if arch not in CONFIGS:
        raise ValueError(f"unknown torchvision ResNet {arch!r}; known: {', '.join(CONFIGS)}")
    kind, depths, groups, width_per_group = CONFIGS[arch]
    chain = ChainBuilder("tv_resnet.stem", 64, 4)
    layouts = {"stem": {"conv1": Conv(7, 3, 64), "bn1": BN(64)}}
    for s, (planes, n) in enumerate(zip(STAGE_PLANES, depths), start=1):
        for i in range(n):
            stride = 2 if (s > 1 and i == 0) else 1
            layout, out = _block_layout(kind, chain.channels, planes, stride, groups, width_per_group)
            static = {"stride": stride} if kind == "basic" else {"stride": stride, "groups": groups}
            name = chain.block(f"tv_resnet.{'basic_block' if kind == 'basic' else 'bottleneck'}", s, out,
                               stride, static)
            layouts[name] = layout
    layouts["head"] = {"fc": Linear(chain.channels, num_classes)}
    specs = chain.head("tv_resnet.head", num_classes)
    return make_model(f"tv_{arch}", FAMILY, specs, layouts, num_classes)


for _arch in CONFIGS:
    register_model(tv_resnet(_arch))
