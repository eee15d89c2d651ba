"""torchvision's EfficientNet-B0.

Semantics follow `torchvision/models/efficientnet.py` (`efficientnet_b0`, width and depth
multipliers 1): a 3x3/2 conv + BN + SiLU stem (32 channels); seven groups of MBConv blocks
(1x1 expand to `_make_divisible(cin * ratio, 8)` + BN + SiLU unless the ratio is 1, k x k
depthwise + BN + SiLU, squeeze-excitation with `max(1, cin // 4)` channels, SiLU inside and a
sigmoid gate, 1x1 project + BN, identity shortcut when stride 1 and channels equal, through
stochastic depth, which is the identity at evaluation); a 1x1 conv to 1280 + BN + SiLU; a
pooled Linear head (dropout is the identity at evaluation). BatchNorm eps 1e-5 (B0 uses
PyTorch's default; only the V2 models use 1e-3).

Modules: `stem`; `stage{s}.block{i}` = torchvision's `features.1.0`, `features.2.0`, ...,
`features.7.0` and `features.8` (the final 1x1 conv) in order, a stage being a resolution
group (a strided block opens a new stage); `head` = pooling + classifier.
"""

from __future__ import annotations

from modulenet_jax.zoo.common import ChainBuilder, Linear, conv_bn_layout, make_model, pooled_linear_head
from modulenet_jax.zoo.registry import register_model, register_op
from modulenet_jax.zoo.tv_mobilenet import inverted_residual_layout, make_divisible

BN_EPS = 1e-5

# (expand ratio, kernel, stride, in, out, layers) of torchvision's EfficientNet-B0
B0_SETTING = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


@register_op("tv_efficientnet.head")
def head(params, x, calibrate=False):
    return pooled_linear_head(params, x), params


def tv_efficientnet_b0(num_classes: int = 1000):
    chain = ChainBuilder("tv_mobilenet.conv_bn_act", 32, 2, {"stride": 2, "act": "silu", "eps": BN_EPS})
    layouts = {"stem": conv_bn_layout(3, 3, 32)}
    for ratio, k, s, _, cout, n in B0_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            cin = chain.channels
            static = {"stride": stride, "act": "silu", "eps": BN_EPS, "residual": stride == 1 and cin == cout,
                      "se_act": "silu", "se_gate": "sigmoid"}
            name = chain.block("tv_mobilenet.inverted_residual", chain.next_stage(stride), cout, stride, static)
            layouts[name] = inverted_residual_layout(cin, make_divisible(cin * ratio, 8), cout, k, max(1, cin // 4))
    cin = chain.channels
    name = chain.block("tv_mobilenet.conv_bn_act", chain.stage, 4 * cin, 1, {"act": "silu", "eps": BN_EPS})
    layouts[name] = conv_bn_layout(1, cin, 4 * cin)
    layouts["head"] = {"fc": Linear(4 * cin, num_classes)}
    specs = chain.head("tv_efficientnet.head", num_classes)
    return make_model("tv_efficientnet_b0", "tv_efficientnet", specs, layouts, num_classes)


register_model(tv_efficientnet_b0())
