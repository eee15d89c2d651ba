"""Evaluating an architecture without tuning its convolutions, and the search objectives.

The protocol fits only cheap parts on train images, in forward order: a stitch at every
junction (least squares towards the activations the next module saw in its own source),
optionally the BatchNorm statistics, and a classifier head on the pooled features. Then it
counts correct predictions on a held-out split. Conv weights are never changed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from modulenet_jax.assemble import (FittedNetwork, _head, _pool, fit_linear_map, fit_stitch, preprocess,
                                    run_module, stitch_cost)
from modulenet_jax.data import Split
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.prefix import PrefixSchedule
from modulenet_jax.space import Architecture
from modulenet_jax.tune import tune_stitches

BN_MODES = ("source", "recalibrate")
HEADS = ("ridge", "logistic")
OBJECTIVES = ("error", "params", "flops")
PREFIX_MEMORY_MB = 2048  # default bound on the shared-prefix states `Evaluator.evaluate_iter` keeps


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How a candidate is scored. Every field is a setting of the config's `protocol` block.

    - `stitch`: fit a 1x1 stitch at every junction (False: modules meet as they are);
    - `stitch_images`: how many fit images the stitches are solved on (<= `fit_images`);
    - `stitch_ridge`: relative ridge penalty of the stitch solves;
    - `bn`: `source` keeps each module's published BatchNorm statistics, `recalibrate`
      replaces them, module by module, with the statistics of the fit images;
    - `head`: `ridge` (closed form) or `logistic` (L-BFGS, `head_steps` iterations,
      L2 penalty `head_l2` on standardised features);
    - `fit_images`: train images used for BatchNorm and the head (the stitches use the first
      `stitch_images` of them);
    - `batch_size`: images per compiled call when scoring;
    - `stitch_steps`: after the least-squares fits, Adam steps (learning rate `stitch_lr`) on
      the stitches and the head together, on the cross-entropy of the first `stitch_images`
      fit images, every module param frozen (see `tune.py`); 0 (the default) keeps the
      closed-form fits;
    - `input_size`: resize the (normalised) images to this size before the first module, for
      sources trained at another resolution (e.g. torchvision's 224 px models on 32 px
      CIFAR); None (the default) feeds them as they are.
    """

    stitch: bool = True
    stitch_images: int = 512
    stitch_ridge: float = 1e-3
    bn: str = "recalibrate"
    head: str = "logistic"
    head_l2: float = 1e-3
    head_ridge: float = 1e-3
    head_steps: int = 100
    fit_images: int = 2048
    batch_size: int = 500
    dtype: str = "float32"
    stitch_steps: int = 0
    stitch_lr: float = 1e-3
    input_size: int | None = None

    def __post_init__(self):
        if self.bn not in BN_MODES:
            raise ValueError(f"protocol.bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.head not in HEADS:
            raise ValueError(f"protocol.head must be one of {HEADS}, got {self.head!r}")
        if not 0 < self.stitch_images <= self.fit_images:
            raise ValueError(f"protocol.stitch_images must be in 1..fit_images ({self.fit_images}), "
                             f"got {self.stitch_images}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"protocol.dtype must be float32 or bfloat16, got {self.dtype!r}")
        if self.batch_size < 1 or self.head_steps < 1:
            raise ValueError("protocol.batch_size and protocol.head_steps must be positive")
        if self.stitch_steps < 0 or not self.stitch_lr > 0:
            raise ValueError(f"protocol.stitch_steps must be >= 0 and protocol.stitch_lr > 0, got "
                             f"{self.stitch_steps} and {self.stitch_lr}")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError(f"protocol.input_size must be None or positive, got {self.input_size}")

    @property
    def jnp_dtype(self):
        return jnp.float32 if self.dtype == "float32" else jnp.bfloat16


class EvaluationError(RuntimeError):
    """An evaluation that produced non-finite values (a NaN fitness is never reported)."""


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """A scored architecture: correct predictions of `total`, and its costs."""

    correct: int
    total: int
    params: int
    flops: int
    junctions: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy

    def objectives(self, names=("error", "params")) -> np.ndarray:
        values = {"error": self.error, "params": float(self.params), "flops": float(self.flops)}
        for n in names:
            if n not in values:
                raise ValueError(f"unknown objective {n!r}; choose from {OBJECTIVES}")
        return np.array([values[n] for n in names], np.float64)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "accuracy": self.accuracy}


def fit_ridge_head(features, labels, num_classes: int, ridge: float):
    """Least-squares classifier on one-hot targets: `{"kernel": (C, K), "bias": (K,)}`."""
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


@jax.jit
def _count_correct(logits, labels, valid):
    return jnp.sum((jnp.argmax(logits, axis=-1) == labels) & valid)


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree))


@dataclasses.dataclass(frozen=True)
class _State:
    """The protocol part-way through a network: the activations after its first modules and
    what was fitted for those modules."""

    fit: jax.Array  # every fit image with BN recalibration, else the stitch images
    features: tuple  # without recalibration: every fit image, in batches (the head's features)
    scored: tuple  # the split being scored, in fixed-size batches (empty: scored afterwards)
    params: tuple = ()
    stitches: tuple = ()


class Evaluator:
    """Scores architectures of one knowledge base under one protocol, on one fit split, one
    compiled call per module; many at once (`evaluate_many`) share their common module prefixes.

    The activations each source model produces on the stitch images (the stitches' targets)
    are computed once per source and kept on the device.
    """

    def __init__(self, kb: KnowledgeBase, protocol: Protocol, fit: Split,
                 prefix_memory: int | None = PREFIX_MEMORY_MB << 20):
        if len(fit) < protocol.fit_images:
            raise ValueError(f"the fit split has {len(fit)} images, the protocol needs {protocol.fit_images}")
        if protocol.input_size is not None and kb.input_size not in (None, protocol.input_size):
            raise ValueError(f"protocol.input_size is {protocol.input_size} but the knowledge base was cut at "
                             f"{kb.input_size} px (its resolutions and FLOPs are for that size)")
        self.kb = kb
        self.protocol = protocol
        self.num_classes = fit.num_classes
        self.fit_images = jnp.asarray(fit.images[:protocol.fit_images])
        self.fit_labels = jnp.asarray(fit.labels[:protocol.fit_images])
        self._targets: dict[str, dict[str, jax.Array]] = {}
        self.prefix_memory = prefix_memory  # bytes of shared-prefix states `evaluate_iter` may keep (None: any)

    def _normalisation(self, source: str):
        model = self.kb.source_model(source)
        return jnp.asarray(model.mean, jnp.float32), jnp.asarray(model.std, jnp.float32)

    def source_inputs(self, source: str) -> dict[str, jax.Array]:
        """{module name: the input it receives inside `source`} on the stitch images."""
        if source not in self._targets:
            mean, std = self._normalisation(source)
            x = preprocess(self.fit_images[:self.protocol.stitch_images], mean, std, self.protocol.jnp_dtype,
                           self.protocol.input_size)
            inputs = {}
            for rec in self.kb.modules_of(source):
                inputs[rec.spec.name] = x
                if rec.spec.kind == "head":
                    break
                x, _ = run_module(rec.spec, self.kb.module_params(rec.id), x)
            self._targets[source] = inputs
        return self._targets[source]

    def cost(self, arch: Architecture) -> tuple[int, int]:
        """(parameters, FLOPs) of the architecture with its stitches and fitted head."""
        params = flops = 0
        recs = [self.kb.record(m) for m in arch.modules]
        for prev, rec, junction in zip([None] + recs, recs, arch.junctions(self.kb)):
            params += rec.params_count
            flops += rec.flops
            if junction and self.protocol.stitch:
                p, f = stitch_cost(prev.spec.out_channels, rec.spec.in_channels, rec.input_resolution)
                params, flops = params + p, flops + f
        last = self.kb.record(arch.modules[-1])
        params += last.spec.out_channels * self.num_classes + self.num_classes
        flops += 2 * last.spec.out_channels * self.num_classes
        return params, flops

    def _check(self, arch: Architecture) -> None:
        kinds = [self.kb.record(m).spec.kind for m in arch.modules]
        if kinds[0] != "stem" or any(k != "block" for k in kinds[1:]):
            raise ValueError(f"an architecture is a stem followed by blocks, got {arch.modules}")

    def _start(self, arch: Architecture, batches) -> _State:
        """The state before the first module: the fit images (and `batches`) preprocessed."""
        p = self.protocol
        mean, std = self._normalisation(self.kb.record(arch.modules[0]).source)

        def prep(images):
            return preprocess(images, mean, std, p.jnp_dtype, p.input_size)

        scored = tuple(prep(jnp.asarray(images)) for images, _, _ in batches)
        if p.bn == "recalibrate":
            return _State(prep(self.fit_images), (), scored)
        return _State(prep(self.fit_images[:p.stitch_images]),
                      tuple(prep(self.fit_images[i:i + p.batch_size]) for i in range(0, len(self.fit_images), p.batch_size)),
                      scored)

    def _step(self, state: _State, module_id: str, junction: bool) -> _State:
        """One module further: its stitch (at a junction), BatchNorm statistics, and forward."""
        p = self.protocol
        rec = self.kb.record(module_id)
        stitch = None
        if junction and p.stitch:
            target = self.source_inputs(rec.source)[rec.spec.name]
            stitch = fit_stitch(state.fit[:p.stitch_images], target, p.stitch_ridge)
        x, used = run_module(rec.spec, self.kb.module_params(module_id), state.fit, stitch,
                             calibrate=p.bn == "recalibrate")

        def forward(batch):
            return run_module(rec.spec, used, batch, stitch)[0]

        return _State(x, tuple(map(forward, state.features)), tuple(map(forward, state.scored)),
                      state.params + (used,), state.stitches + (stitch,))

    def _finish(self, arch: Architecture, state: _State) -> FittedNetwork:
        """The head on the fit images' features (and the stitches tuned, if the protocol says so)."""
        p = self.protocol
        mean, std = self._normalisation(self.kb.record(arch.modules[0]).source)
        net = FittedNetwork(tuple(self.kb.record(m).spec for m in arch.modules), state.params, state.stitches, None,
                            mean, std, p.input_size)
        if p.bn == "recalibrate":
            features = jnp.mean(state.fit.astype(jnp.float32), axis=(1, 2))
        else:
            features = jnp.concatenate([_pool(x) for x in state.features])
        if p.head == "ridge":
            head = fit_ridge_head(features, self.fit_labels, self.num_classes, p.head_ridge)
        else:
            head = fit_logistic_head(features, self.fit_labels, self.num_classes, p.head_l2, p.head_steps)
        if p.stitch_steps and any(s is not None for s in state.stitches):
            inputs = preprocess(self.fit_images[:p.stitch_images], mean, std, p.jnp_dtype, p.input_size)
            tuned, head, _ = tune_stitches(net.specs, net.params, net.stitches, head, inputs,
                                           self.fit_labels[:p.stitch_images], p.stitch_steps, p.stitch_lr)
            net = dataclasses.replace(net, stitches=tuple(tuned))
        fitted = dataclasses.replace(net, head=head)
        if not _all_finite((fitted.stitches, head)):
            raise EvaluationError(f"fitting {arch.describe()} produced non-finite values")
        return fitted

    def fit(self, arch: Architecture) -> FittedNetwork:
        """Fits stitches, BatchNorm statistics (if the protocol says so) and the head."""
        self._check(arch)
        state = self._start(arch, ())
        for module_id, junction in zip(arch.modules, arch.junctions(self.kb)):
            state = self._step(state, module_id, junction)
        return self._finish(arch, state)

    def score(self, fitted: FittedNetwork, split: Split) -> tuple[int, int]:
        """(correct, total) of a fitted network on a split, in fixed-size batches."""
        return count_correct(fitted.logits, split, self.protocol.batch_size, self.protocol.jnp_dtype)

    def evaluate_iter(self, archs: Sequence[Architecture], split: Split) -> Iterator[tuple[int, Evaluation]]:
        """Yields `(index, evaluation)` for every architecture, in `PrefixSchedule` order: a module
        prefix several of them share is fitted and run (on the fit images and on `split`) once.

        Each evaluation is exactly what evaluating that architecture alone gives: a shared prefix
        is the same computation on the same inputs. Memory: the states of the prefixes a later
        network resumes from (activations of the fit images and of `split` at those depths), at
        most `prefix_memory` bytes; a state that does not fit is not kept, and the network that
        would have resumed from it recomputes from a shallower one."""
        for arch in archs:
            self._check(arch)
        p = self.protocol
        # tuned stitches change the whole network after fitting, so the split is then scored afterwards
        batches = _batches(split, p.batch_size) if p.stitch_steps == 0 else []
        schedule = PrefixSchedule.of([a.modules for a in archs])
        saved: dict[int, _State] = {}
        for i, resume, keep in zip(schedule.order, schedule.resume, schedule.keep):
            arch = archs[i]
            junctions = arch.junctions(self.kb)
            start = max((d for d in saved if d <= resume), default=0)
            state = saved[start] if start else self._start(arch, batches)
            for depth in range(start, len(arch.modules)):
                state = self._step(state, arch.modules[depth], junctions[depth])
                if depth + 1 in keep and self._fits(saved, state):
                    saved[depth + 1] = state
            saved = {d: s for d, s in saved.items() if d in keep}
            fitted = self._finish(arch, state)
            if batches:
                correct = sum(_correct_in_batch(fitted.head, x, labels, valid) for x, (_, labels, valid)
                              in zip(state.scored, batches))
                total = len(split)
            else:
                correct, total = self.score(fitted, split)
            params, flops = self.cost(arch)
            yield i, Evaluation(correct, total, params, flops, arch.num_junctions(self.kb))

    def _fits(self, saved: dict, state: _State) -> bool:
        if self.prefix_memory is None:
            return True
        used = sum(_state_bytes(s) for s in saved.values())
        return used + _state_bytes(state) <= self.prefix_memory

    def evaluate_many(self, archs: Sequence[Architecture], split: Split) -> list[Evaluation]:
        """`evaluate_iter`'s evaluations in the order of `archs`."""
        out: list[Evaluation | None] = [None] * len(archs)
        for i, ev in self.evaluate_iter(archs, split):
            out[i] = ev
        return out

    def evaluate(self, arch: Architecture, split: Split) -> Evaluation:
        return self.evaluate_many([arch], split)[0]


def _state_bytes(state: _State) -> int:
    """Bytes of a state's activations (its fitted params are small and shared)."""
    return sum(x.nbytes for x in jax.tree_util.tree_leaves((state.fit, state.features, state.scored)))


def _batches(split: Split, batch_size: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A split as `(images, labels, valid)` batches of one fixed shape: the last one padded
    with zero images that `valid` masks out, so each module compiles once."""
    out = []
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size]
        labels = split.labels[start:start + batch_size]
        valid = np.ones(batch_size, bool)
        if len(images) < batch_size:
            pad = batch_size - len(images)
            valid[len(images):] = False
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        out.append((images, labels, valid))
    return out


def _correct_in_batch(head, x, labels, valid) -> int:
    """Correct predictions of a head on one batch of last-module activations."""
    return _checked_correct(_head(head, _pool(x)), labels, valid)


def _checked_correct(logits, labels, valid) -> int:
    if not bool(jnp.all(jnp.isfinite(logits))):
        raise EvaluationError("non-finite logits")
    return int(_count_correct(logits, jnp.asarray(labels), jnp.asarray(valid)))


def count_correct(logits_fn, split: Split, batch_size: int, dtype=jnp.float32) -> tuple[int, int]:
    """Runs `logits_fn(images, dtype)` over a split in batches of one fixed shape (the last one
    padded and masked), so each module compiles once; returns (correct, total)."""
    correct = sum(_checked_correct(logits_fn(jnp.asarray(images), dtype), labels, valid)
                  for images, labels, valid in _batches(split, batch_size))
    return correct, len(split)


def published_logits(kb: KnowledgeBase, source: str, input_size: int | None = None):
    """A source model as published (its own BN statistics and head), as a logits function
    (images resized to `input_size` first, if given)."""
    model = kb.source_model(source)
    params = kb.params[source]
    mean, std = jnp.asarray(model.mean, jnp.float32), jnp.asarray(model.std, jnp.float32)

    def logits(images, dtype=jnp.float32):
        x = preprocess(images, mean, std, dtype, input_size)
        for spec in model.modules:
            x, _ = run_module(spec, params[spec.name], x)
        return x

    return logits


def evaluate_published(kb: KnowledgeBase, source: str, split: Split, batch_size: int = 500,
                       dtype=jnp.float32, input_size: int | None = None) -> tuple[int, int]:
    """(correct, total) of a source model as published on a split."""
    return count_correct(published_logits(kb, source, input_size), split, batch_size, dtype)


