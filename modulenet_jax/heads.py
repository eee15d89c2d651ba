"""Classifier heads fitted on pooled features: closed-form ridge or L-BFGS logistic regression.

Both return `{"kernel": (C, K), "bias": (K,)}` in float32, applied as `features @ kernel + bias`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from modulenet_jax.assemble import fit_linear_map


def fit_ridge_head(features, labels, num_classes: int, ridge: float):
    """Least-squares classifier on one-hot targets (relative ridge penalty, as the stitches)."""
    return fit_linear_map(features, jax.nn.one_hot(labels, num_classes), ridge)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def fit_logistic_head(features, labels, num_classes: int, l2: float, steps: int):
    """Multinomial logistic regression with L-BFGS on standardised features.

    The standardisation is folded back into the returned kernel and bias.
    """
    f = features.astype(jnp.float32)
    mu, sd = jnp.mean(f, axis=0), jnp.std(f, axis=0) + 1e-6
    z = (f - mu) / sd
    hi = jax.lax.Precision.HIGHEST

    def loss(p):
        logits = jnp.dot(z, p["kernel"], precision=hi) + p["bias"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return ce + 0.5 * l2 * jnp.sum(jnp.square(p["kernel"]))

    params = {"kernel": jnp.zeros((f.shape[1], num_classes)), "bias": jnp.zeros((num_classes,))}
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    kernel = params["kernel"] / sd[:, None]
    return {"kernel": kernel, "bias": params["bias"] - jnp.dot(mu, kernel, precision=hi)}
