"""torchvision's DenseNet-121.

Semantics follow `torchvision/models/densenet.py` (growth 32, blocks (6, 12, 24, 16), 64
initial features, bottleneck size 4, no dropout): a 7x7/2 conv + BN + ReLU + 3x3/2 max pool
stem; dense layers (BN, ReLU, 1x1 conv to 128, BN, ReLU, 3x3 conv to 32) whose output is
concatenated to their input; transitions (BN, ReLU, 1x1 conv halving the channels, 2x2/2
average pool); a final BN, ReLU, global average pool and Linear. BatchNorm eps 1e-5.

The cut: each dense layer is a block (C -> C + 32 channels: `concat([x, new])`, which is the
same tensor torchvision's dense block builds by concatenating all earlier features), and each
transition is a block too, the first of the next stage, carrying its stride 2. So stage 1 is
`denseblock1`'s 6 layers (reduction 4), stage s > 1 is `transition{s-1}` then
`denseblock{s}`'s layers. The head is `norm5` + ReLU + pooling + classifier, so every block's
output is what the next torchvision layer reads.
"""

from __future__ import annotations

import jax.numpy as jnp

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import BN, ChainBuilder, Conv, Linear, make_model
from modulenet_jax.zoo.registry import register_model, register_op

BN_EPS = 1e-5
GROWTH = 32
BN_SIZE = 4
INIT_FEATURES = 64
BLOCKS = {"densenet121": (6, 12, 24, 16)}


def _bn_relu(params, name, x, calibrate, used):
    h, used[name] = layers.batch_norm(params[name], x, BN_EPS, calibrate)
    return layers.relu(h)


@register_op("tv_densenet.stem")
def stem(params, x, calibrate=False):
    used = dict(params)
    h = _bn_relu(params, "norm0", layers.conv(params["conv0"], x, stride=2, padding=3), calibrate, used)
    return layers.max_pool(h, 3, 2, 1), used


@register_op("tv_densenet.dense_layer")
def dense_layer(params, x, calibrate=False):
    used = dict(params)
    h = layers.conv(params["conv1"], _bn_relu(params, "norm1", x, calibrate, used))
    h = layers.conv(params["conv2"], _bn_relu(params, "norm2", h, calibrate, used), padding=1)
    return jnp.concatenate([x, h], axis=-1), used


@register_op("tv_densenet.transition")
def transition(params, x, calibrate=False):
    used = dict(params)
    h = layers.conv(params["conv"], _bn_relu(params, "norm", x, calibrate, used))
    return layers.avg_pool(h, 2, 2), used


@register_op("tv_densenet.head")
def head(params, x, calibrate=False):
    h, _ = layers.batch_norm(params["norm5"], x, BN_EPS)
    return layers.linear(layers.global_avg_pool(layers.relu(h)), params["fc"]), params


def tv_densenet(arch: str, num_classes: int = 1000):
    if arch not in BLOCKS:
        raise ValueError(f"unknown torchvision DenseNet {arch!r}; known: {', '.join(BLOCKS)}")
    chain = ChainBuilder("tv_densenet.stem", INIT_FEATURES, 4)
    layouts = {"stem": {"conv0": Conv(7, 3, INIT_FEATURES), "norm0": BN(INIT_FEATURES)}}
    for s, n in enumerate(BLOCKS[arch], start=1):
        if s > 1:
            c = chain.channels
            name = chain.block("tv_densenet.transition", s, c // 2, 2)
            layouts[name] = {"norm": BN(c), "conv": Conv(1, c, c // 2)}
        for _ in range(n):
            c = chain.channels
            name = chain.block("tv_densenet.dense_layer", s, c + GROWTH)
            layouts[name] = {"norm1": BN(c), "conv1": Conv(1, c, BN_SIZE * GROWTH),
                             "norm2": BN(BN_SIZE * GROWTH), "conv2": Conv(3, BN_SIZE * GROWTH, GROWTH)}
    c = chain.channels
    layouts["head"] = {"norm5": BN(c), "fc": Linear(c, num_classes)}
    specs = chain.head("tv_densenet.head", num_classes)
    return make_model(f"tv_{arch}", "tv_densenet", specs, layouts, num_classes)


for _arch in BLOCKS:
    register_model(tv_densenet(_arch))
