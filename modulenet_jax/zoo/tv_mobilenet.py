"""torchvision's MobileNetV2 and MobileNetV3 (small, large), and the inverted residual op
that EfficientNet shares with them.

Semantics follow `torchvision/models/mobilenetv2.py` and `mobilenetv3.py`:
- V2: 3x3/2 conv + BN + ReLU6 stem (32 channels); inverted residuals (1x1 expand + BN + ReLU6
  unless the expansion is 1, 3x3 depthwise + BN + ReLU6, 1x1 project + BN, identity shortcut
  when stride 1 and channels equal); a final 1x1 conv to 1280 + BN + ReLU6; pooled Linear head.
  BatchNorm eps 1e-5.
- V3: 3x3/2 conv + BN + Hardswish stem (16 channels); inverted residuals with k x k depthwise
  convs, ReLU or Hardswish, and squeeze-excitation (`_make_divisible(expanded // 4, 8)`
  channels, ReLU inside, Hardsigmoid gate) where the config says so; a final 1x1 conv to
  6x the last width + BN + Hardswish; head = pool, Linear, Hardswish, (dropout), Linear.
  BatchNorm eps 1e-3. Hardswish(x) = x * relu6(x + 3) / 6, Hardsigmoid(x) = relu6(x + 3) / 6.

Modules: `stem`; `stage{s}.block{i}` = torchvision's `features.1` ... `features.N-1` in order,
where a stage is a resolution group (a new stage starts at each strided block) and the final
1x1 conv is the last block of the last stage; `head` = pooling + classifier.
"""

from __future__ import annotations

from modulenet_jax.zoo import layers
from modulenet_jax.zoo.common import (ChainBuilder, Conv, Linear, conv_bn_act, conv_bn_layout, make_model,
                                      pooled_linear_head, squeeze_excite)
from modulenet_jax.zoo.registry import register_model, register_op

V2_EPS = 1e-5
V3_EPS = 1e-3

# (expand ratio t, channels c, repeats n, stride s) of torchvision's MobileNetV2
V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
              (6, 320, 1, 1))

# (input, kernel, expanded, out, SE, activation, stride) of torchvision's MobileNetV3 (width 1)
V3_SETTINGS = {
    "mobilenet_v3_large": (
        (16, 3, 16, 16, False, "relu", 1), (16, 3, 64, 24, False, "relu", 2),
        (24, 3, 72, 24, False, "relu", 1), (24, 5, 72, 40, True, "relu", 2),
        (40, 5, 120, 40, True, "relu", 1), (40, 5, 120, 40, True, "relu", 1),
        (40, 3, 240, 80, False, "hardswish", 2), (80, 3, 200, 80, False, "hardswish", 1),
        (80, 3, 184, 80, False, "hardswish", 1), (80, 3, 184, 80, False, "hardswish", 1),
        (80, 3, 480, 112, True, "hardswish", 1), (112, 3, 672, 112, True, "hardswish", 1),
        (112, 5, 672, 160, True, "hardswish", 2), (160, 5, 960, 160, True, "hardswish", 1),
        (160, 5, 960, 160, True, "hardswish", 1)),
    "mobilenet_v3_small": (
        (16, 3, 16, 16, True, "relu", 2), (16, 3, 72, 24, False, "relu", 2),
        (24, 3, 88, 24, False, "relu", 1), (24, 5, 96, 40, True, "hardswish", 2),
        (40, 5, 240, 40, True, "hardswish", 1), (40, 5, 240, 40, True, "hardswish", 1),
        (40, 5, 120, 48, True, "hardswish", 1), (48, 5, 144, 48, True, "hardswish", 1),
        (48, 5, 288, 96, True, "hardswish", 2), (96, 5, 576, 96, True, "hardswish", 1),
        (96, 5, 576, 96, True, "hardswish", 1)),
}
V3_LAST_CHANNEL = {"mobilenet_v3_large": 1280, "mobilenet_v3_small": 1024}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """torchvision's `_make_divisible`: round to a multiple of `divisor`, never down by > 10%."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@register_op("tv_mobilenet.conv_bn_act")
def conv_bn_act_op(params, x, calibrate=False, *, stride=1, act="relu", eps=V2_EPS):
    """A stem or a final 1x1 conv: conv + BN + activation."""
    return conv_bn_act(params, x, calibrate, eps, act, stride)


@register_op("tv_mobilenet.inverted_residual")
def inverted_residual(params, x, calibrate=False, *, stride=1, act="relu6", eps=V2_EPS, residual=False,
                      se_act="relu", se_gate="hardsigmoid"):
    """(1x1 expand + BN + act), depthwise conv + BN + act, (squeeze-excitation), 1x1 project +
    BN, (+ x). Which optional parts exist follows from the params (`expand`, `se`)."""
    used = dict(params)
    h = x
    if "expand" in params:
        h, used["expand"] = conv_bn_act(params["expand"], h, calibrate, eps, act)
    h, used["dw"] = conv_bn_act(params["dw"], h, calibrate, eps, act, stride, groups=h.shape[-1])
    if "se" in params:
        h = squeeze_excite(params["se"], h, se_act, se_gate)
    h, used["project"] = conv_bn_act(params["project"], h, calibrate, eps, "identity")
    return (h + x if residual else h), used


def inverted_residual_layout(cin: int, expanded: int, cout: int, kernel: int, squeeze: int | None) -> dict:
    layout = {"dw": conv_bn_layout(kernel, expanded, expanded, groups=expanded),
              "project": conv_bn_layout(1, expanded, cout)}
    if expanded != cin:
        layout["expand"] = conv_bn_layout(1, cin, expanded)
    if squeeze:
        layout["se"] = {"fc1": Conv(1, expanded, squeeze, bias=True), "fc2": Conv(1, squeeze, expanded, bias=True)}
    return layout


@register_op("tv_mobilenet.v2_head")
def v2_head(params, x, calibrate=False):
    return pooled_linear_head(params, x), params


@register_op("tv_mobilenet.v3_head")
def v3_head(params, x, calibrate=False):
    h = layers.hardswish(layers.linear(layers.global_avg_pool(x), params["fc1"]))
    return layers.linear(h, params["fc2"]), params


def tv_mobilenet_v2(num_classes: int = 1000):
    chain = ChainBuilder("tv_mobilenet.conv_bn_act", 32, 2, {"stride": 2, "act": "relu6", "eps": V2_EPS})
    layouts = {"stem": conv_bn_layout(3, 3, 32)}
    for t, c, n, s in V2_SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            cin = chain.channels
            static = {"stride": stride, "act": "relu6", "eps": V2_EPS, "residual": stride == 1 and cin == c}
            name = chain.block("tv_mobilenet.inverted_residual", chain.next_stage(stride), c, stride, static)
            layouts[name] = inverted_residual_layout(cin, int(round(cin * t)), c, 3, None)
    cin = chain.channels
    name = chain.block("tv_mobilenet.conv_bn_act", chain.stage, 1280, 1, {"act": "relu6", "eps": V2_EPS})
    layouts[name] = conv_bn_layout(1, cin, 1280)
    layouts["head"] = {"fc": Linear(1280, num_classes)}
    specs = chain.head("tv_mobilenet.v2_head", num_classes)
    return make_model("tv_mobilenet_v2", "tv_mobilenet_v2", specs, layouts, num_classes)


def tv_mobilenet_v3(arch: str, num_classes: int = 1000):
    if arch not in V3_SETTINGS:
        raise ValueError(f"unknown torchvision MobileNetV3 {arch!r}; known: {', '.join(V3_SETTINGS)}")
    setting = V3_SETTINGS[arch]
    first = setting[0][0]
    chain = ChainBuilder("tv_mobilenet.conv_bn_act", first, 2, {"stride": 2, "act": "hardswish", "eps": V3_EPS})
    layouts = {"stem": conv_bn_layout(3, 3, first)}
    for cin, k, expanded, cout, se, act, stride in setting:
        static = {"stride": stride, "act": act, "eps": V3_EPS, "residual": stride == 1 and cin == cout,
                  "se_act": "relu", "se_gate": "hardsigmoid"}
        name = chain.block("tv_mobilenet.inverted_residual", chain.next_stage(stride), cout, stride, static)
        squeeze = make_divisible(expanded // 4, 8) if se else None
        layouts[name] = inverted_residual_layout(cin, expanded, cout, k, squeeze)
    cin = chain.channels
    name = chain.block("tv_mobilenet.conv_bn_act", chain.stage, 6 * cin, 1, {"act": "hardswish", "eps": V3_EPS})
    layouts[name] = conv_bn_layout(1, cin, 6 * cin)
    last = V3_LAST_CHANNEL[arch]
    layouts["head"] = {"fc1": Linear(6 * cin, last), "fc2": Linear(last, num_classes)}
    specs = chain.head("tv_mobilenet.v3_head", num_classes)
    return make_model(f"tv_{arch}", "tv_mobilenet_v3", specs, layouts, num_classes)


register_model(tv_mobilenet_v2())
for _arch in V3_SETTINGS:
    register_model(tv_mobilenet_v3(_arch))
