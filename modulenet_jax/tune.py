"""Tuning the junction stitches (and the head) of an assembled network by gradient steps.

After the least-squares fits, the stitches and the head can be tuned jointly for a few optax
steps on the classification loss of the fit images, as Stitchable Neural Networks train
their stitches. Every inherited module param stays frozen twice over: the optimizer is an
`optax.multi_transform` that gives module params `optax.set_to_zero()` (the optax way to
freeze a subtree, not a flag), and the forward pass reads them through
`jax.lax.stop_gradient`, so no gradient is even computed for them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from modulenet_jax.assemble import apply_stitch
from modulenet_jax.zoo.registry import ModuleSpec, get_op

TRAINABLE = ("stitches", "head")


def _logits(tree, specs: tuple[ModuleSpec, ...], x):
    hi = jax.lax.Precision.HIGHEST
    for spec, p, stitch in zip(specs, tree["modules"], tree["stitches"]):
        if stitch is not None:
            x = apply_stitch(stitch, x)
        x, _ = get_op(spec.op)(jax.lax.stop_gradient(p), x, **spec.static_kwargs)
    features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    return jnp.dot(features, tree["head"]["kernel"], precision=hi) + tree["head"]["bias"]


def optimizer(learning_rate: float) -> optax.GradientTransformation:
    """Adam on the stitches and the head; `set_to_zero` on every module param."""
    def labels(tree):
        return {k: jax.tree_util.tree_map(lambda _: "train" if k in TRAINABLE else "frozen", v)
                for k, v in tree.items()}

    return optax.multi_transform({"train": optax.adam(learning_rate), "frozen": optax.set_to_zero()}, labels)


@functools.partial(jax.jit, static_argnames=("specs", "steps"))
def _tune(tree, x, labels, learning_rate, specs, steps):
    tx = optimizer(learning_rate)

    def loss(t):
        return optax.softmax_cross_entropy_with_integer_labels(_logits(t, specs, x), labels).mean()

    def step(carry, _):
        t, state = carry
        value, grads = jax.value_and_grad(loss)(t)
        updates, state = tx.update(grads, state, t)
        return (optax.apply_updates(t, updates), state), value

    (tree, _), losses = jax.lax.scan(step, (tree, tx.init(tree)), None, length=steps)
    return tree, jnp.append(losses, loss(tree))


def tune_stitches(specs, params, stitches, head, x, labels, steps: int, learning_rate: float):
    """`(stitches, head, losses)` after `steps` Adam steps on the cross-entropy of `x`
    (preprocessed fit images) through the network; `losses[i]` is the loss before step i and
    `losses[-1]` the final one. `params` (the modules', BN statistics included) come back
    untouched."""
    if steps < 1:
        raise ValueError(f"tune_stitches needs steps >= 1, got {steps}")
    tree = {"modules": tuple(params), "stitches": tuple(stitches), "head": head}
    tree, losses = _tune(tree, x, labels, learning_rate, tuple(specs), steps)
    return tree["stitches"], tree["head"], losses
