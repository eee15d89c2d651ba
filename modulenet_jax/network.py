"""An assembled network as a standalone `flax.linen` Module: what `modulenet export` writes.

`Network` runs the zoo ops of its modules in order — a 1x1 stitch before every junction
module, global average pooling, a linear head — exactly as the evaluation protocol scores a
fitted network (`protocol.FittedNetwork`), so an exported network counts the same correct
predictions. It reads uint8 NHWC images and normalises (and resizes) them itself.

Variables follow Flax's convention: `params` holds what is trained (convolutions, BatchNorm
affine, stitches, head) and `batch_stats` the BatchNorm running statistics (the buffers of
`cost.BUFFER_NAMES`). `model.apply(variables, images)` is evaluation mode (running
statistics, BatchNorm folded into the convs as the protocol scores: `protocol.folded`);
`model.apply(variables, images, train=True, mutable=["batch_stats"])` is
training mode: BatchNorm normalises with the batch's statistics and the running statistics
move by momentum, new = (1 - m) * old + m * batch, with the batch's unbiased variance, as
PyTorch's `BatchNorm2d` does. (One difference from PyTorch: the zoo ops normalise a training
batch with its unbiased variance where PyTorch uses the biased one; the two differ by a factor
n / (n - 1), n = batch x height x width, under 2e-4 for a batch of 128 CIFAR images.)
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax import zoo
from modulenet_jax.assemble import apply_stitch, head_logits, pool, preprocess
from modulenet_jax.cost import BUFFER_NAMES
from modulenet_jax.data import Split
from modulenet_jax.protocol import FittedNetwork, count_correct
from modulenet_jax.zoo.layers import ACTIVATION_DTYPES, numerics
from modulenet_jax.zoo.registry import ModuleSpec, fold_batch_norms


def split_buffers(tree: dict) -> tuple[dict, dict]:
    """A module's params as (trainable, buffers): the BatchNorm running statistics
    (`cost.BUFFER_NAMES`) apart. Subtrees left empty are dropped from either side."""
    trainable, buffers = {}, {}
    for k, v in tree.items():
        if isinstance(v, dict):
            t, b = split_buffers(v)
            if t:
                trainable[k] = t
            if b:
                buffers[k] = b
        elif k in BUFFER_NAMES:
            buffers[k] = v
        else:
            trainable[k] = v
    return trainable, buffers


def merge_buffers(trainable: dict, buffers: dict) -> dict:
    """The inverse of `split_buffers`: one nested dict again."""
    out = dict(trainable)
    for k, v in buffers.items():
        out[k] = merge_buffers(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def blend_running_stats(old: dict, batch: dict, momentum: float) -> dict:
    """PyTorch's running-statistics update: `(1 - momentum) * old + momentum * batch`."""
    return jax.tree_util.tree_map(lambda o, b: (1 - momentum) * o + momentum * b.astype(o.dtype), old, batch)


def _init_trainable(key, model: str, name: str):
    return split_buffers(zoo.get_model(model).init(key)[name])[0]


def _init_buffers(model: str, name: str):
    """Running statistics of a fresh BatchNorm: mean 0, variance 1."""
    _, shapes = split_buffers(zoo.param_shapes(model)[name])
    return jax.tree_util.tree_map_with_path(
        lambda p, s: (jnp.zeros if p[-1].key == "mean" else jnp.ones)(s.shape, s.dtype), shapes)


class Network(nn.Module):
    """A chain of zoo modules with junction stitches, pooling and a linear head.

    - `specs`: the modules' `ModuleSpec`s (op, static config, channels) in forward order;
    - `models`: the zoo model each module was cut from (what `init` draws fresh params from);
    - `junctions`: per module, is there a stitch before it;
    - `num_classes`, `mean`, `std`: the head's classes and the input normalisation
      `(x / 255 - mean) / std`; `input_size`: images are resized to it first (None: as they are);
    - `dtype`: `float32`, `tensorfloat32` (fp32 activations, TF32 convolutions on GPUs that
      have them: `zoo.layers.numerics`), or `bfloat16` activations (fp32 accumulation, BN and head);
    - `bn_momentum`: the running statistics' momentum in training mode (PyTorch's 0.1).

    Variables: `params` = {`module{i}`, `stitch{i}` (junctions only), `head`}, `batch_stats` =
    {`module{i}`} for modules with BatchNorm. `init` draws modules from their zoo model's init,
    stitches and head like PyTorch's default linear layer, running statistics mean 0, variance 1.
    """

    specs: tuple[ModuleSpec, ...]
    models: tuple[str, ...]
    junctions: tuple[bool, ...]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | None = None
    dtype: str = "float32"
    bn_momentum: float = 0.1

    @nn.compact
    def __call__(self, images, train: bool = False):
        """Logits (float32) of uint8 NHWC `images`; `train`: BatchNorm in training mode."""
        with numerics(self.dtype):
            x = preprocess(images, jnp.asarray(self.mean, jnp.float32), jnp.asarray(self.std, jnp.float32),
                           ACTIVATION_DTYPES[self.dtype], self.input_size)
            for i, (spec, model, junction) in enumerate(zip(self.specs, self.models, self.junctions)):
                if junction:
                    x = apply_stitch(self.param(f"stitch{i}", _linear_init, x.shape[-1], spec.in_channels), x)
                trainable = self.param(f"module{i}", _init_trainable, model, spec.name)
                stats, buffers = None, {}
                if split_buffers(zoo.param_shapes(model)[spec.name])[1]:  # a module with BatchNorm
                    stats = self.variable("batch_stats", f"module{i}", _init_buffers, model, spec.name)
                    buffers = stats.value
                params = merge_buffers(trainable, buffers)
                if not train:  # evaluation runs the inference form the protocol scores with
                    params = fold_batch_norms(spec.op, spec.static, params)
                x, used = zoo.apply_module(spec, params, x, calibrate=train)
                if train and stats is not None and not self.is_initializing():
                    stats.value = blend_running_stats(buffers, split_buffers(used)[1], self.bn_momentum)
            head = self.param("head", _linear_init, self.specs[-1].out_channels, self.num_classes)
            return head_logits(head, pool(x))


def _linear_init(key, cin: int, cout: int) -> dict:
    """PyTorch's default `nn.Linear` init: kernel and bias uniform in +-1/sqrt(cin)."""
    bound = 1.0 / cin ** 0.5
    k1, k2 = jax.random.split(key)
    return {"kernel": jax.random.uniform(k1, (cin, cout), minval=-bound, maxval=bound),
            "bias": jax.random.uniform(k2, (cout,), minval=-bound, maxval=bound)}


def _float32_values(array) -> tuple[float, ...]:
    """float32 values as the shortest Python floats that give them back (0.485, not 0.48500001...)."""
    return tuple(float(str(v)) for v in np.asarray(array, np.float32).reshape(-1))


def from_fitted(fitted: FittedNetwork, models: tuple[str, ...], dtype: str = "float32") -> tuple[Network, dict]:
    """`(model, variables)` of a network the protocol fitted (`Evaluator.fit`); `models` names
    each module's zoo model (its source's `model`)."""
    junctions = tuple(s is not None for s in fitted.stitches)
    model = Network(specs=tuple(fitted.specs), models=tuple(models), junctions=junctions,
                    num_classes=int(fitted.head["bias"].shape[0]),
                    mean=_float32_values(fitted.mean), std=_float32_values(fitted.std),
                    input_size=fitted.input_size, dtype=dtype)
    params: dict[str, Any] = {"head": fitted.head}
    batch_stats: dict[str, Any] = {}
    for i, (p, stitch) in enumerate(zip(fitted.params, fitted.stitches)):
        trainable, buffers = split_buffers(p)
        params[f"module{i}"] = trainable
        if buffers:
            batch_stats[f"module{i}"] = buffers
        if stitch is not None:
            params[f"stitch{i}"] = stitch
    variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
    return model, variables


@functools.partial(jax.jit, static_argnames=("model",))
def _eval_logits(model: Network, variables, images):
    return model.apply(variables, images)


def evaluate(model: Network, variables: dict, split: Split, batch_size: int) -> tuple[int, int]:
    """(correct, total) of the model in evaluation mode on a split, in batches of `batch_size`
    (the last one padded: `protocol.count_correct`, as the protocol scores)."""
    return count_correct(lambda x, dtype: _eval_logits(model, variables, x), split, batch_size)
