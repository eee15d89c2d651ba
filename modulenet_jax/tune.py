"""Tuning the junction stitches (and the head) of an assembled network by gradient steps.

After the least-squares fits, the stitches and the head can be tuned jointly for a few optax
steps on the classification loss of the fit images, as Stitchable Neural Networks train
their stitches. Every inherited module param stays frozen twice over: the optimizer is an
`optax.multi_transform` that gives module params `optax.set_to_zero()` (the optax way to
freeze a subtree, not a flag), and the forward pass reads them through
`jax.lax.stop_gradient`, so no gradient is even computed for them.

The network is any `forward(modules, stitches, head, x) -> logits`, so the per-module chain
and the fused population program tune through the same function.
"""

from __future__ import annotations

import jax
import optax

TRAINABLE = ("stitches", "head")


def optimizer(learning_rate: float, make=optax.adam) -> optax.GradientTransformation:
    """`make` (Adam) on the `TRAINABLE` parts, the stitches and the head; `set_to_zero` on every
    module param."""
    def labels(tree):
        return {k: jax.tree_util.tree_map(lambda _: "train" if k in TRAINABLE else "frozen", v)
                for k, v in tree.items()}

    return optax.multi_transform({"train": make(learning_rate), "frozen": optax.set_to_zero()}, labels)


def tune_stitches(forward, modules, stitches, head, x, labels, steps: int, learning_rate):
    """`(stitches, head, losses)` after `steps` Adam steps on the cross-entropy of `forward`
    on `x` (preprocessed images); `losses[i]` is the loss before step i and `losses[-1]` the
    final one. `modules` (the modules' params, BN statistics included) are read, never changed.
    Pure and traceable: a driver jits it (or runs it inside its own program)."""
    if steps < 1:
        raise ValueError(f"tune_stitches needs steps >= 1, got {steps}")
    tx = optimizer(learning_rate)

    def loss(t):
        logits = forward(jax.lax.stop_gradient(t["modules"]), t["stitches"], t["head"], x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(carry, _):
        t, state = carry
        value, grads = jax.value_and_grad(loss)(t)
        updates, state = tx.update(grads, state, t)
        return (optax.apply_updates(t, updates), state), value

    tree = {"modules": modules, "stitches": stitches, "head": head}
    (tree, _), losses = jax.lax.scan(step, (tree, tx.init(tree)), None, length=steps)
    return tree["stitches"], tree["head"], jax.numpy.append(losses, loss(tree))
