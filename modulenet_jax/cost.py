"""Counting a module's parameters and FLOPs from its params and its traced program.

FLOPs are 2 x the multiply-accumulates of convolutions and matrix products, read off the
jaxpr (so every family is counted by the same rule, with no per-layer bookkeeping);
BatchNorm, activations, pooling and additions are not counted. Parameters are every
trainable leaf: BatchNorm running statistics (`mean`, `var`) are buffers, not parameters.
"""

from __future__ import annotations

import math

import jax
import numpy as np

BUFFER_NAMES = ("mean", "var")


def count_params(params) -> int:
    """Number of trainable scalars in a param tree (BN running statistics excluded)."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        last = path[-1]
        if getattr(last, "key", None) in BUFFER_NAMES:
            continue
        total += int(np.prod(np.shape(leaf)))
    return total


def _eqn_macs(eqn) -> int:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        out = eqn.outvars[0].aval.shape
        rhs = eqn.invars[1].aval.shape
        dn = eqn.params["dimension_numbers"]
        # rhs_spec = (out feature dim, in feature dim, spatial dims...)
        k_in = rhs[dn.rhs_spec[1]]
        k_spatial = math.prod(rhs[d] for d in dn.rhs_spec[2:])
        return math.prod(out) * k_in * k_spatial
    if name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        contract = math.prod(lhs[d] for d in lhs_contract)
        return math.prod(eqn.outvars[0].aval.shape) * contract
    return 0


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn)
        for sub in _subjaxprs(eqn):
            total += _jaxpr_macs(sub)
    return total


def _subjaxprs(eqn):
    for value in eqn.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr
            elif hasattr(v, "eqns"):
                yield v


def count_flops(fn, *args) -> int:
    """FLOPs (2 x multiply-accumulates of convs and matmuls) of `fn(*args)` per call."""
    closed = jax.make_jaxpr(fn)(*args)
    return 2 * _jaxpr_macs(closed.jaxpr)
