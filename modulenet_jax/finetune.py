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

from modulenet_jax.assemble import apply_stitch, preprocess
from modulenet_jax.cost import BUFFER_NAMES
from modulenet_jax.data import Split
from modulenet_jax.errors import UserError
from modulenet_jax.protocol import FittedNetwork
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


def _optimizer(config: FinetuneConfig, steps: int, params) -> optax.GradientTransformation:
    """SGD with Nesterov momentum, decoupled weight decay and a cosine schedule; BN buffers frozen."""
    sgd = optax.chain(optax.add_decayed_weights(config.weight_decay),
                      optax.sgd(optax.cosine_decay_schedule(config.learning_rate, steps),
                                momentum=config.momentum, nesterov=True))
    return optax.multi_transform({"train": sgd, "buffer": optax.set_to_zero()}, _labels(params))


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def _init(config, steps, params):
    return _optimizer(config, steps, params).init(params)


@jax.jit
def _squared_norm(tree):
    return sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in jax.tree_util.tree_leaves(tree))


@functools.partial(jax.jit, static_argnames=("config", "steps"))
def _update(config, steps, params, state, grads, scale, used):
    """One optimizer step of one module's params (compiled once per module shape), then
    PyTorch's running-statistics update: new = (1 - m) * old + m * batch."""
    grads = jax.tree_util.tree_map(lambda g: g * scale, grads)
    updates, state = _optimizer(config, steps, params).update(grads, state, params)
    params = optax.apply_updates(params, updates)
    if used is not None:
        m = config.bn_momentum

        def blend(path, old, new):
            return (1 - m) * old + m * new if getattr(path[-1], "key", None) in BUFFER_NAMES else old

        params = jax.tree_util.tree_map_with_path(blend, params, used)
    return params, state


def finetune(net: FittedNetwork, train: Split, config: FinetuneConfig) -> FittedNetwork:
    """Fine-tunes every weight of `net` on `train`; returns the tuned network.

    Gradients are clipped by their global norm over the whole network; the optimizer then
    steps module by module (stitches and head included), each step one compiled call.
    """
    n = min(config.images, len(train))
    steps = config.epochs * (n // config.batch_size)
    if steps < 1:
        raise UserError(f"fine-tuning needs at least {config.batch_size} train images (--batch-size), got {n}")
    modules, stitches, head = list(net.params), list(net.stitches), net.head
    mod_state = [_init(config, steps, p) for p in modules]
    st_state = [None if st is None else _init(config, steps, st) for st in stitches]
    head_state = _init(config, steps, head)
    rng = np.random.default_rng(config.seed)
    specs = net.specs
    for _ in range(config.epochs):
        order = rng.permutation(len(train))[:n]
        for b in range(n // config.batch_size):
            idx = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
            images, labels = jnp.asarray(train.images[idx]), jnp.asarray(train.labels[idx])
            x = preprocess(images, net.mean, net.std, jnp.float32, net.input_size)
            inputs, used = [], []
            for spec, p, st in zip(specs, modules, stitches):
                inputs.append(x)
                x, u = _forward(spec.op, spec.static, p, st, x)
                used.append(u)
            _, g_head, g = _head_loss(head, x, labels)
            g_mods, g_st = [None] * len(specs), [None] * len(specs)
            for i in reversed(range(len(specs))):
                g_mods[i], g_st[i], g = _backward(specs[i].op, specs[i].static, modules[i], stitches[i], inputs[i], g)
            norm = jnp.sqrt(_squared_norm((g_mods, g_st, g_head)))
            scale = jnp.minimum(1.0, config.clip_norm / (norm + 1e-12))
            for i in range(len(specs)):
                modules[i], mod_state[i] = _update(config, steps, modules[i], mod_state[i], g_mods[i], scale, used[i])
                if stitches[i] is not None:
                    stitches[i], st_state[i] = _update(config, steps, stitches[i], st_state[i], g_st[i], scale, None)
            head, head_state = _update(config, steps, head, head_state, g_head, scale, None)
    return dataclasses.replace(net, params=tuple(modules), stitches=tuple(stitches), head=head)
