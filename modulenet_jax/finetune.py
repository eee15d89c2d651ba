"""Short end-to-end fine-tuning of an assembled network: the reference the no-tuning score is
checked against (fidelity), never part of the search itself.

Every weight is trained (convolutions, BatchNorm affine, stitches, head) with SGD; BatchNorm
normalises with batch statistics and updates its running statistics by momentum, as
PyTorch's training mode does; the running statistics are buffers, excluded from the
optimizer with `optax.multi_transform` + `optax.set_to_zero`. Backpropagation runs module
by module through compiled per-module vector-Jacobian products, so a whole population of
different architectures shares a handful of compiled programs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from modulenet_jax.assemble import FittedNetwork, apply_stitch, preprocess
from modulenet_jax.cost import BUFFER_NAMES
from modulenet_jax.data import Split
from modulenet_jax.zoo.registry import get_op


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """`images` train images seen once each per epoch, in batches of `batch_size`; gradients
    clipped to a global norm of `clip_norm` (least-squares stitches can start large)."""

    images: int = 10_000
    epochs: int = 1
    batch_size: int = 128
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bn_momentum: float = 0.1
    clip_norm: float = 1.0
    seed: int = 0


def _train_apply(op, static, params, stitch, x):
    if stitch is not None:
        x = apply_stitch(stitch, x)
    return get_op(op)(params, x, calibrate=True, **dict(static))


@functools.partial(jax.jit, static_argnames=("op", "static"))
def _forward(op, static, params, stitch, x):
    return _train_apply(op, static, params, stitch, x)


@functools.partial(jax.jit, static_argnames=("op", "static"))
def _backward(op, static, params, stitch, x, grad_y):
    """Gradients w.r.t. (params, stitch, x), recomputing the module's forward."""
    _, vjp = jax.vjp(lambda p, s, x: _train_apply(op, static, p, s, x)[0], params, stitch, x)
    return vjp(grad_y)


@jax.jit
def _head_loss(head, x, labels):
    def loss(head, x):
        feats = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        logits = jnp.dot(feats, head["kernel"], precision=jax.lax.Precision.HIGHEST) + head["bias"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    value, (g_head, g_x) = jax.value_and_grad(loss, argnums=(0, 1))(head, x)
    return value, g_head, g_x


def _labels(tree):
    """'buffer' for BatchNorm running statistics, 'train' for everything else."""
    def label(path, _):
        return "buffer" if getattr(path[-1], "key", None) in BUFFER_NAMES else "train"
    return jax.tree_util.tree_map_with_path(label, tree)


def _blend_running_stats(params, used, momentum):
    """PyTorch's running-statistics update: new = (1 - m) * old + m * batch."""
    def blend(path, old, new):
        if getattr(path[-1], "key", None) in BUFFER_NAMES:
            return (1 - momentum) * old + momentum * new
        return old
    return jax.tree_util.tree_map_with_path(blend, params, used)


def finetune(net: FittedNetwork, train: Split, config: FinetuneConfig) -> FittedNetwork:
    """Fine-tunes every weight of `net` on `train`; returns the tuned network."""
    n = min(config.images, len(train))
    steps = config.epochs * (n // config.batch_size)
    if steps < 1:
        raise ValueError(f"fine-tuning needs at least {config.batch_size} train images, got {n}")
    trainable = {"modules": list(net.params), "stitches": list(net.stitches), "head": net.head}
    schedule = optax.cosine_decay_schedule(config.learning_rate, steps)
    sgd = optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(schedule, momentum=config.momentum, nesterov=True))
    opt = optax.multi_transform({"train": sgd, "buffer": optax.set_to_zero()}, _labels(trainable))
    state = opt.init(trainable)
    rng = np.random.default_rng(config.seed)
    specs = net.specs
    for epoch in range(config.epochs):
        order = rng.permutation(len(train))[:n]
        for b in range(n // config.batch_size):
            idx = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
            images, labels = jnp.asarray(train.images[idx]), jnp.asarray(train.labels[idx])
            x = preprocess(images, net.mean, net.std)
            inputs, used = [], []
            for spec, p, st in zip(specs, trainable["modules"], trainable["stitches"]):
                inputs.append(x)
                x, u = _forward(spec.op, spec.static, p, st, x)
                used.append(u)
            _, g_head, g = _head_loss(trainable["head"], x, labels)
            g_mods, g_st = [None] * len(specs), [None] * len(specs)
            for i in reversed(range(len(specs))):
                g_mods[i], g_st[i], g = _backward(specs[i].op, specs[i].static, trainable["modules"][i],
                                                  trainable["stitches"][i], inputs[i], g)
            grads = {"modules": g_mods, "stitches": g_st, "head": g_head}
            updates, state = opt.update(grads, state, trainable)
            trainable = optax.apply_updates(trainable, updates)
            trainable["modules"] = [_blend_running_stats(p, u, config.bn_momentum)
                                    for p, u in zip(trainable["modules"], used)]
    return dataclasses.replace(net, params=tuple(trainable["modules"]), stitches=tuple(trainable["stitches"]),
                               head=trainable["head"])
