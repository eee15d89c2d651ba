"""The evaluation protocol, defined once: pure functions over a state pytree.

A candidate network is scored without tuning its convolutions. Module by module, in forward
order (`step`): at a junction a 1x1 stitch is solved by ridge least squares towards the input
the module saw in its own source (`source_inputs`), BatchNorm statistics are recalibrated on
the fit images (or kept as published), and the fit activations, the head's feature batches
and any scored batches move one module on. Then `finish` fits the classifier head on pooled
features (and `tune` optionally trains the stitches and the head by a few Adam steps), and
`score_batch` counts correct predictions of a held-out batch.

In optax's `(init, update)` spirit: `start` makes the `State`, `step` updates it. Two drivers
run these same functions: `evaluate.Evaluator` (one compiled call per op, walking the
shared-prefix schedule; CPUs) and `population.PopulationEvaluator` (the step scanned over
slots and vmapped over a population chunk; accelerators). A protocol variant written here
reaches both.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax.assemble import fit_linear_map, head_logits, pool, preprocess, run_module, stitched
from modulenet_jax.errors import UserError
from modulenet_jax.heads import fit_logistic_head, fit_ridge_head
from modulenet_jax.tune import tune_stitches
from modulenet_jax.zoo import fold_batch_norms, op_of, run_op, zeroed_residual
from modulenet_jax.zoo.layers import ACTIVATION_DTYPES, numerics as layer_numerics

BN_MODES = ("source", "recalibrate", "from_junction")
HEADS = ("ridge", "logistic")
DTYPES = tuple(ACTIVATION_DTYPES)


class EvaluationError(RuntimeError):
    """An evaluation that produced non-finite values (a NaN fitness is never reported)."""


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a candidate is scored. Every field is a setting of the config's `protocol` block.

    - `stitch`: fit a 1x1 stitch at every junction (False: modules meet as they are);
    - `stitch_images`: how many fit images the stitches are solved on (<= `fit_images`);
    - `stitch_ridge`: relative ridge penalty of the stitch solves;
    - `bn`: `source` keeps each module's published BatchNorm statistics, `recalibrate`
      replaces them, module by module, with the statistics of the fit images, and
      `from_junction` keeps them up to the first junction (where the activations are exactly
      the source's) and recalibrates from it on (a source network keeps all of its own);
    - `head`: `ridge` (closed form, penalty `head_ridge`) or `logistic` (L-BFGS, `head_steps`
      iterations, L2 penalty `head_l2` on standardised features);
    - `fit_images`: train images used for BatchNorm and the head (the stitches use the first
      `stitch_images` of them);
    - `batch_size`: images per compiled call when scoring (and for the head's features
      without recalibration);
    - `dtype`: `float32` (strict: `Precision.HIGHEST`), `tensorfloat32` (fp32 activations,
      convolutions in TF32 where the GPU has it, as PyTorch runs fp32 convolutions by default;
      fp32 on a CPU), or `bfloat16` convolutions and products with fp32 accumulation (stitch
      solves, BN statistics and the head stay in fp32 in every case);
    - `stitch_steps`: after the least-squares fits, Adam steps (learning rate `stitch_lr`) on
      the stitches and the head together, on the cross-entropy of the first `stitch_images`
      fit images, every module param frozen (see `tune.py`); in every network alike (one
      without a junction tunes its head alone); 0 (the default) keeps the closed-form fits
      (on the CIFAR ResNets tuning lowered accuracy at every rate measured: the README's protocol
      section; 1e-4, the default rate, least);
    - `input_size`: resize the (normalised) images to this size before the first module, for
      sources trained at another resolution (e.g. torchvision's 224 px models on 32 px
      CIFAR); None (the default) feeds them as they are.
    """

    stitch: bool = True
    stitch_images: int = 512
    stitch_ridge: float = 1e-3
    bn: str = "from_junction"
    head: str = "logistic"
    head_l2: float = 1e-3
    head_ridge: float = 1e-3
    head_steps: int = 100
    fit_images: int = 2048
    batch_size: int = 500
    dtype: str = "float32"
    stitch_steps: int = 0
    stitch_lr: float = 1e-4
    input_size: int | None = None

    def __post_init__(self):
        if self.bn not in BN_MODES:
            raise UserError(f"protocol.bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.head not in HEADS:
            raise UserError(f"protocol.head must be one of {HEADS}, got {self.head!r}")
        if self.stitch_images < 1:
            raise UserError(f"protocol.stitch_images must be positive, got {self.stitch_images}")
        if self.stitch_images > self.fit_images:
            raise UserError(f"protocol.stitch_images ({self.stitch_images}) must be at most protocol.fit_images "
                            f"({self.fit_images}); lower it or raise protocol.fit_images")
        if self.dtype not in DTYPES:
            raise UserError(f"protocol.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.batch_size < 1 or self.head_steps < 1:
            raise UserError("protocol.batch_size and protocol.head_steps must be positive")
        if self.stitch_steps < 0 or not self.stitch_lr > 0:
            raise UserError(f"protocol.stitch_steps must be >= 0 and protocol.stitch_lr > 0, got "
                             f"{self.stitch_steps} and {self.stitch_lr}")
        if min(self.stitch_ridge, self.head_l2, self.head_ridge) < 0:
            raise UserError(f"protocol.stitch_ridge, protocol.head_l2 and protocol.head_ridge must be >= 0, got "
                            f"{self.stitch_ridge}, {self.head_l2} and {self.head_ridge}")
        if self.input_size is not None and self.input_size < 1:
            raise UserError(f"protocol.input_size must be None or positive, got {self.input_size}")

    @property
    def jnp_dtype(self):
        """The activations' dtype."""
        return ACTIVATION_DTYPES[self.dtype]

    @property
    def fit_pass_all(self) -> bool:
        """Does the fit pass carry every fit image (BN statistics may be recalibrated), or only
        the stitch images (the head's features then come from separate batches)?"""
        return self.bn != "source"

    def calibrates(self, mixed):
        """Are a module's BN statistics recalibrated, given whether a junction lies at or before
        it (`mixed`: a bool, or a boolean array inside the fused program)?"""
        return {"source": False, "recalibrate": True, "from_junction": mixed}[self.bn]


def inert_fields(protocols) -> tuple[str, ...]:
    """The fields that change no result of any of `protocols` (dicts of `Protocol` fields): the
    stitches' learning rate where none of them tunes its stitches. Saved work that differs from the
    current settings only there may resume (a folder made before that default changed)."""
    return ("stitch_lr",) if all(p.get("stitch_steps", Protocol.stitch_steps) == 0 for p in protocols) else ()


def numerics(protocol: Protocol):
    """The scope in which the protocol's convolutions run at its precision (`zoo.layers.numerics`
    of its dtype). Entered by the protocol's functions that run modules and by the drivers
    around their scoring."""
    return layer_numerics(protocol.dtype)


class ModuleFit(NamedTuple):
    """What the protocol fitted for one module: its params as used (BatchNorm statistics
    recalibrated or as published) and the junction stitch before it (None: no stitch)."""

    params: Any
    stitch: Any


class State(NamedTuple):
    """The protocol part-way through a network: activations after its first modules.

    `fit`: the fit pass, what stitches and BN statistics are fitted on (every fit image when
    BN statistics may be recalibrated, else the first `stitch_images`); `features`: with the
    published statistics throughout, every fit image in fixed-size batches (the head's
    features); `scored`: batches of a split carried along to be scored at the end (empty: the
    driver scores afterwards); `mixed`: does a junction lie before (a bool, or a boolean array
    inside the fused program)."""

    fit: jax.Array
    features: tuple = ()
    scored: tuple = ()
    mixed: Any = False


def prepare(protocol: Protocol, images, mean, std):
    """uint8 images -> the first module's input: normalised, resized, in the protocol's dtype."""
    return preprocess(images, mean, std, protocol.jnp_dtype, protocol.input_size)


def pad_batches(batch_size: int, *arrays):
    """`arrays` (same length on axis 0) as fixed-size batches `(nb, batch_size, ...)`, the last
    one padded with zeros, and `valid` `(nb, batch_size)` marking the real rows: every batch
    has one shape, so each program compiles once. numpy in, numpy out; jax in, jax out."""
    n = len(arrays[0])
    nb = max(1, -(-n // batch_size))
    pad = nb * batch_size - n
    xp = np if all(isinstance(a, np.ndarray) for a in arrays) else jnp

    def one(a):
        if pad:
            a = xp.concatenate([a, xp.zeros((pad,) + a.shape[1:], a.dtype)])
        return a.reshape((nb, batch_size) + a.shape[1:])

    return (*map(one, arrays), (xp.arange(nb * batch_size) < n).reshape(nb, batch_size))


def source_inputs(protocol: Protocol, kb, source: str, fit_images) -> dict:
    """{module name: the input it receives inside `source`} on the stitch images: the targets
    of the stitches (B in `fit_linear_map`)."""
    model = kb.source_model(source)
    x = prepare(protocol, fit_images[:protocol.stitch_images], jnp.asarray(model.mean, jnp.float32),
                jnp.asarray(model.std, jnp.float32))
    inputs = {}
    with numerics(protocol):
        for rec in kb.modules_of(source):
            inputs[rec.spec.name] = x
            if rec.spec.kind == "head":
                break
            x, _ = run_module(rec.spec, kb.module_params(rec.id), x)
    return inputs


def start(protocol: Protocol, fit_images, mean, std, scored=(), *, prepare=prepare) -> State:
    """The state before the first module: the fit pass, the head's feature batches (without
    recalibration) and the scored batches (`scored`: uint8 batches), preprocessed (by
    `prepare`: the fused program's grouped layout passes its own, `population.group_inputs`)."""
    if protocol.fit_pass_all:
        return State(prepare(protocol, fit_images, mean, std), (), tuple(prepare(protocol, b, mean, std) for b in scored))
    batches = pad_batches(protocol.batch_size, fit_images)[0]
    return State(prepare(protocol, fit_images[:protocol.stitch_images], mean, std),
                 tuple(prepare(protocol, batches[i], mean, std) for i in range(len(batches))),
                 tuple(prepare(protocol, b, mean, std) for b in scored))


def solve_stitch(protocol: Protocol, x, target):
    """The junction's stitch: ridge least squares from the first `stitch_images` activations
    `x` to the module's source input `target`."""
    return fit_linear_map(x[:protocol.stitch_images], target, protocol.stitch_ridge)


def _masked(y, x, active):
    return y if active is None else jnp.where(active, y, x)


def run_masked(op: tuple, params, x_in, x, active=None, calibrate=False):
    """`run_op` of `op` on `x_in` (the slot's stitched input), `x` given back where `active`
    (one flag per genotype, None: no mask) is False, as for a slot past a genotype's depth: by
    the op's zeroed residual where it declares one (`zoo.zeroed_residual`: no select over the
    activations, on a GPU a memory pass of its own), else by a select. `(y, params used)`."""
    zeroed = None if active is None else zeroed_residual(op[0], params, active)
    y, used = run_op(op, params if zeroed is None else zeroed, x_in, calibrate)
    return (y if zeroed is not None else _masked(y, x, active)), used


def unused_as_zeros(stitch, junction, active=None):
    """A stitch solved inside the fused program, zero where it is not used (no junction, or the
    slot past the network's depth): what a fit holds there does not depend on its input."""
    used = junction if active is None else junction & active
    return jax.tree_util.tree_map(lambda a: jnp.where(used, a, jnp.zeros_like(a)), stitch)


def stitch_gate(some_junction):
    """The fused program's gate on a slot's stitch: made only where `some_junction` (does some
    genotype of the group have a junction at the slot? a boolean array) holds, by a conditional
    around the stitch alone, so the module after it is compiled once. None (no gate) for None."""
    if some_junction is None:
        return None

    def gate(make, without):
        return jax.lax.cond(some_junction, make, without)

    return gate


def gated(gate, make, without):
    """`make()`, or under a `stitch_gate` `without()` where no genotype has a junction at the
    slot: what `make` gives there (its input unstitched, an unused stitch's zeros)."""
    return make() if gate is None else gate(make, without)


def zeros_of(shapes):
    """Zeros of every shape and dtype of a pytree of arrays or `ShapeDtypeStruct`s: what a stitch
    a branch of the fused program does not make holds, as an unused stitch does
    (`unused_as_zeros`)."""
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def fit_stitch(protocol: Protocol, x, target, junction, active=None):
    """The junction's stitch solved on the fit pass `x` (zero where `junction` does not hold)
    and the module's input through it: `(stitched x, stitch)`."""
    stitch = solve_stitch(protocol, x, target)
    if junction is not True:
        stitch = unused_as_zeros(stitch, junction, active)
    return stitched(stitch, x, junction), stitch


def fit_module(protocol: Protocol, op: tuple, params, x, target, junction, active=None, calibrate=False, *,
               gate=None):
    """One module on the fit pass `x`: its stitch (`fit_stitch`, under the fused program's
    `gate`), BatchNorm statistics (recalibrated where `calibrate` holds), and forward.
    `junction`, `active` and `calibrate` are Python bools (None: no mask) when known while
    tracing, or boolean arrays inside the fused program (`active` False: the slot is past the
    network's depth and passes `x` through). Returns `(y, ModuleFit)`."""
    def make():
        return fit_stitch(protocol, x, target, junction, active)

    if protocol.stitch and junction is not False:
        x_in, stitch = gated(gate, make, lambda: (x, zeros_of(jax.eval_shape(make)[1])))
    else:
        x_in, stitch = x, None
    y, params_used = run_masked(op, params, x_in, x, active, calibrate)
    return y, ModuleFit(params_used, stitch)


def folded(op: tuple, fit: ModuleFit) -> ModuleFit:
    """A fitted module for inference: its BatchNorms folded into their convs
    (`zoo.fold_batch_norms`). Every batch the protocol moves forward after fitting a module
    (scored batches, the head's feature batches, the fitted network's logits) runs this form,
    in both drivers."""
    return ModuleFit(fold_batch_norms(*op, fit.params), fit.stitch)


def apply_fitted(op: tuple, fit: ModuleFit, x, junction=True, active=None, *, gate=None):
    """One fitted module on a batch, or on a tuple of batches moving through it together: its
    stitch (at a junction; under the fused program's `gate`, one conditional for all the
    batches) and forward. (`fit` as fitted, or `folded`: the same function; `zoo.apply_module`
    is a raw module, without a fit.) Past a genotype's depth (`active` False) the input passes
    through (`run_masked`)."""
    xs = x if isinstance(x, tuple) else (x,)
    xs_in = gated(gate, lambda: tuple(stitched(fit.stitch, b, junction) for b in xs), lambda: xs)
    ys = tuple(run_masked(op, fit.params, b_in, b, active)[0] for b_in, b in zip(xs_in, xs))
    return ys if isinstance(x, tuple) else ys[0]


def step(protocol: Protocol, op: tuple, params, state: State, target, junction, active=None, *,
         fit=fit_module, apply=apply_fitted, fold=folded, gate=None) -> tuple[State, ModuleFit]:
    """One module further: fit it on the fit pass, then move every carried batch through it
    (`folded`: the fitted module's inference form).

    `fit`/`apply`/`fold` default to `fit_module`/`apply_fitted`/`folded`; the per-module driver
    passes their compiled forms so that each compiles once per op and is reused for every batch.
    The fused program passes its slot's `gate` (`stitch_gate`): then the carried batches move
    together, their stitches under one conditional."""
    mixed = _or(state.mixed, junction)
    gated_by = {} if gate is None else {"gate": gate}
    with numerics(protocol):
        y, module_fit = fit(protocol, op, params, state.fit, target, junction, active, protocol.calibrates(mixed),
                            **gated_by)
        batches = state.features + state.scored
        if not batches:
            return State(y, (), (), mixed), module_fit
        inference = fold(op, module_fit)
        if gate is None:
            moved = tuple(apply(op, inference, x, junction, active) for x in batches)
        else:
            moved = apply(op, inference, batches, junction, active, gate=gate)
        n = len(state.features)
        return State(y, moved[:n], moved[n:], mixed), module_fit


def _or(a, b):
    """`a or b` for Python bools, elementwise for arrays (inside the fused program)."""
    if isinstance(a, bool) and isinstance(b, bool):
        return a or b
    return jnp.logical_or(a, b)


def head_features(protocol: Protocol, state: State, n: int):
    """Pooled features of the `n` fit images after the last module: the fit pass itself when it
    carries every fit image, else the feature batches (padding cut off)."""
    if protocol.fit_pass_all:
        return pool(state.fit)
    return jnp.concatenate([pool(x) for x in state.features])[:n]


def fit_head(protocol: Protocol, features, labels, num_classes: int):
    """The classifier head on pooled features, as the protocol says (ridge or logistic)."""
    if protocol.head == "ridge":
        return fit_ridge_head(features, labels, num_classes, protocol.head_ridge)
    return fit_logistic_head(features, labels, num_classes, protocol.head_l2, protocol.head_steps)


def finish(protocol: Protocol, state: State, labels, num_classes: int):
    """The head fitted on the state's features of the fit images."""
    return fit_head(protocol, head_features(protocol, state, len(labels)), labels, num_classes)


def _is_fit(node) -> bool:
    return isinstance(node, ModuleFit)


def tune(protocol: Protocol, network_logits, fits, head, x, labels):
    """`(fits, head)` after `protocol.stitch_steps` Adam steps on the stitches and the head
    (every module param frozen), on `x`: the preprocessed first `stitch_images` fit images.

    `fits` is any pytree of `ModuleFit`s and `network_logits(fits, head, x)` the driver's
    forward through them, so both drivers tune through the same `tune_stitches`."""
    params = jax.tree_util.tree_map(lambda f: f.params, fits, is_leaf=_is_fit)
    stitches = jax.tree_util.tree_map(lambda f: f.stitch, fits, is_leaf=_is_fit)

    def forward(params, stitches, head, x):
        joined = jax.tree_util.tree_map(lambda f, p, s: ModuleFit(p, s), fits, params, stitches, is_leaf=_is_fit)
        return network_logits(joined, head, x)

    with numerics(protocol):
        stitches, head, _ = tune_stitches(forward, params, stitches, head, x, labels, protocol.stitch_steps,
                                          protocol.stitch_lr)
    tuned = jax.tree_util.tree_map(lambda f, s: ModuleFit(f.params, s), fits, stitches, is_leaf=_is_fit)
    return tuned, head


def fit_is_finite(fits, head):
    """Are the head and every stitch finite? (A NaN fitness is never reported.)"""
    stitches = [f.stitch for f in jax.tree_util.tree_leaves(fits, is_leaf=_is_fit) if f.stitch is not None]
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves((stitches, head))]))


def score_logits(logits, labels, valid):
    """(correct predictions among the `valid` rows, are their logits finite)."""
    hits = (jnp.argmax(logits, axis=-1) == labels) & valid
    finite = jnp.all(jnp.isfinite(logits) | ~valid[:, None])
    return jnp.sum(hits), finite


def score_batch(head, x, labels, valid):
    """`score_logits` of the head on the last module's activations `x`."""
    return score_logits(head_logits(head, pool(x)), labels, valid)


def chain_logits(ops: tuple, junctions: tuple, fits, head, x):
    """Logits of a network given as a chain of fitted modules (the per-module form; `fits` as
    fitted or `folded`)."""
    for op, junction, fit in zip(ops, junctions, fits):
        x = apply_fitted(op, fit, x, junction)
    return head_logits(head, pool(x))


def fit_settings(protocol: Protocol) -> Protocol:
    """The protocol as far as `fit_module` reads it (the stitch, its images and ridge, and the
    dtype, whose numerics the module runs in), every other field at its default: the static key
    of `compiled_fit_module`, so protocols that differ only in the head, BatchNorm mode (passed
    as `calibrate`), scoring batch or tuning share its programs."""
    return Protocol(stitch=protocol.stitch, stitch_images=protocol.stitch_images, stitch_ridge=protocol.stitch_ridge,
                    dtype=protocol.dtype, fit_images=max(protocol.stitch_images, Protocol.fit_images))


def compiled_fit_module(protocol: Protocol, op: tuple, params, x, target, junction, active=None, calibrate=False):
    """`fit_module`, compiled once per op and `fit_settings(protocol)`."""
    return _jitted_fit_module(fit_settings(protocol), op, params, x, target, junction, active, calibrate)


# The compiled forms the per-module driver calls: each compiles once per op (and, for the fit,
# its fit settings) and is reused for every network and batch of that shape.
_jitted_fit_module = jax.jit(fit_module, static_argnames=("protocol", "op", "junction", "calibrate"))
compiled_apply_fitted = jax.jit(apply_fitted, static_argnames=("op", "junction"))
compiled_folded = jax.jit(folded, static_argnames=("op",))
compiled_score_batch = jax.jit(score_batch)
_score_logits = jax.jit(score_logits)


@dataclasses.dataclass(frozen=True)
class FittedNetwork:
    """An architecture with everything the protocol fitted: per-module params (BN statistics
    recalibrated or as published), stitches (None where there is no junction) and the head;
    `input_size` is the size images are resized to first (None: kept as they are)."""

    specs: tuple
    params: tuple
    stitches: tuple
    head: Any
    mean: Any
    std: Any
    input_size: int | None = None

    @property
    def fits(self) -> tuple[ModuleFit, ...]:
        return tuple(ModuleFit(p, s) for p, s in zip(self.params, self.stitches))

    @functools.cached_property
    def inference_fits(self) -> tuple[ModuleFit, ...]:
        """`fits` in their inference form (`folded`), made once."""
        return tuple(compiled_folded(op_of(spec), fit) for spec, fit in zip(self.specs, self.fits))

    def features(self, images, dtype=jnp.float32):
        """Pooled features of uint8 images, one compiled call per module."""
        x = preprocess(images, self.mean, self.std, dtype, self.input_size)
        for spec, fit in zip(self.specs, self.inference_fits):
            x = compiled_apply_fitted(op_of(spec), fit, x, fit.stitch is not None)
        return pool(x)

    def logits(self, images, dtype=jnp.float32):
        return head_logits(self.head, self.features(images, dtype))


def count_correct(logits_fn, split, batch_size: int, dtype=jnp.float32) -> tuple[int, int]:
    """`logits_fn(images, dtype)` over a split in fixed-size batches (`pad_batches`); returns
    (correct, total). Raises `EvaluationError` on non-finite logits."""
    images, labels, valid = pad_batches(batch_size, split.images, split.labels)
    correct = 0
    for i in range(len(images)):
        c, finite = _score_logits(logits_fn(jnp.asarray(images[i]), dtype), jnp.asarray(labels[i]),
                                  jnp.asarray(valid[i]))
        if not bool(finite):
            raise EvaluationError("non-finite logits")
        correct += int(c)
    return correct, len(split)


