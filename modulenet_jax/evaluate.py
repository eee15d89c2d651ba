"""The per-module driver of the evaluation protocol, and the search objectives.

`Evaluator` runs the protocol of `protocol.py` (stitches, BatchNorm statistics, head, scoring)
one compiled call per module: the CPU's driver (measured as fast as the fused program run one
genotype at a time, and it shares prefixes).
Given many networks it walks the `PrefixSchedule`, so a module prefix several of them share
is fitted and run once. `population.PopulationEvaluator` is the other driver of the same
protocol (fused, vmapped: accelerators); both count the same correct predictions (checked on real
networks by `benchmarks/driver_agreement.py`; where XLA contracts differently, to float rounding:
README, How it works).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax import protocol as core
from modulenet_jax.assemble import preprocess, run_module, stitch_cost
from modulenet_jax.zoo import op_of
from modulenet_jax.data import Split
from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.prefix import PrefixSchedule
from modulenet_jax.protocol import EvaluationError, FittedNetwork, Protocol, count_correct
from modulenet_jax.space import Architecture

OBJECTIVES = ("error", "params", "flops")
PREFIX_MEMORY_MB = 2048  # default bound on the shared-prefix states `Evaluator.evaluate_iter` keeps


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


@functools.partial(jax.jit, static_argnames=("protocol", "ops", "junctions"))
def _tune_chain(protocol: Protocol, ops: tuple, junctions: tuple, fits, head, x, labels):
    return core.tune(protocol, functools.partial(core.chain_logits, ops, junctions), fits, head, x, labels)


class Evaluator:
    """Scores architectures of one knowledge base under one protocol, on one fit split, one
    compiled call per module; many at once (`evaluate_many`) share their common module prefixes.

    The activations each source model produces on the stitch images (the stitches' targets)
    are computed once per source and kept on the device.
    """

    def __init__(self, kb: KnowledgeBase, protocol: Protocol, fit: Split,
                 prefix_memory: int | None = PREFIX_MEMORY_MB << 20):
        if len(fit) < protocol.fit_images:
            raise UserError(f"the fit split has {len(fit)} images, the protocol needs {protocol.fit_images}; "
                            f"lower protocol.fit_images")
        if protocol.input_size is not None and kb.input_size not in (None, protocol.input_size):
            raise UserError(f"protocol.input_size is {protocol.input_size} but the knowledge base was cut at "
                            f"{kb.input_size} px (its resolutions and FLOPs are for that size); set "
                            f"protocol.input_size={kb.input_size} or rebuild the knowledge base at that size")
        self.kb = kb
        self.protocol = protocol
        self.num_classes = fit.num_classes
        self.fit_images = jax.device_put(fit.images[:protocol.fit_images])
        self.fit_labels = jax.device_put(fit.labels[:protocol.fit_images])
        self._targets: dict[str, dict[str, jax.Array]] = {}
        self.prefix_memory = prefix_memory  # bytes of shared-prefix states `evaluate_iter` may keep (None: any)

    def normalisation(self, source: str) -> tuple[jax.Array, jax.Array]:
        """(mean, std) a source's images are normalised with."""
        model = self.kb.source_model(source)
        return jnp.asarray(model.mean, jnp.float32), jnp.asarray(model.std, jnp.float32)

    def source_inputs(self, source: str) -> dict[str, jax.Array]:
        """{module name: the input it receives inside `source`} on the stitch images (cached)."""
        if source not in self._targets:
            self._targets[source] = core.source_inputs(self.protocol, self.kb, source, self.fit_images)
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

    def check(self, arch: Architecture) -> None:
        """Raises `UserError` unless the architecture is a stem followed by blocks of this base that fit."""
        arch.check(self.kb, self.protocol.stitch)

    def start(self, arch: Architecture, scored=()) -> core.State:
        """The protocol's state before the first module (`scored`: uint8 batches carried along)."""
        mean, std = self.normalisation(self.kb.record(arch.modules[0]).source)
        return core.start(self.protocol, self.fit_images, mean, std, tuple(jnp.asarray(b) for b in scored))

    def step(self, state: core.State, module_id: str, junction: bool) -> tuple[core.State, core.ModuleFit]:
        """One module further (`protocol.step` with its compiled parts)."""
        rec = self.kb.record(module_id)
        target = self.source_inputs(rec.source)[rec.spec.name] if junction and self.protocol.stitch else None
        return core.step(self.protocol, op_of(rec.spec), self.kb.module_params(module_id), state, target, junction,
                         fit=core.compiled_fit_module, apply=core.compiled_apply_fitted,
                         fold=core.compiled_folded)

    def finish(self, arch: Architecture, state: core.State, fits: Sequence[core.ModuleFit]) -> FittedNetwork:
        """The head on the fit images' features (and the stitches tuned, if the protocol says so)."""
        p = self.protocol
        mean, std = self.normalisation(self.kb.record(arch.modules[0]).source)
        specs = tuple(self.kb.record(m).spec for m in arch.modules)
        fits = tuple(fits)
        head = core.finish(p, state, self.fit_labels, self.num_classes)
        if p.stitch_steps:  # every network, as the fused program: one without stitches tunes its head
            x = core.prepare(p, self.fit_images[:p.stitch_images], mean, std)
            fits, head = _tune_chain(p, tuple(op_of(s) for s in specs), tuple(f.stitch is not None for f in fits),
                                     fits, head, x, self.fit_labels[:p.stitch_images])
        if not bool(core.fit_is_finite(fits, head)):
            raise EvaluationError(f"fitting {arch.describe()} produced non-finite values")
        return FittedNetwork(specs, tuple(f.params for f in fits), tuple(f.stitch for f in fits), head, mean, std,
                             p.input_size)

    def fit(self, arch: Architecture) -> FittedNetwork:
        """Fits stitches, BatchNorm statistics (if the protocol says so) and the head."""
        self.check(arch)
        state, fits = self.start(arch), []
        for module_id, junction in zip(arch.modules, arch.junctions(self.kb)):
            state, module_fit = self.step(state, module_id, junction)
            fits.append(module_fit)
        return self.finish(arch, state, fits)

    def score(self, fitted: FittedNetwork, split: Split) -> tuple[int, int]:
        """(correct, total) of a fitted network on a split, in fixed-size batches."""
        with core.numerics(self.protocol):
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
            self.check(arch)
        p = self.protocol
        # tuned stitches change the whole network after fitting, so the split is then scored afterwards
        images, labels, valid = core.pad_batches(p.batch_size, split.images, split.labels)
        scored = images if p.stitch_steps == 0 else ()
        schedule = PrefixSchedule.of([a.modules for a in archs])
        saved: dict[int, tuple[core.State, tuple]] = {}
        for i, resume, keep in zip(schedule.order, schedule.resume, schedule.keep):
            arch = archs[i]
            junctions = arch.junctions(self.kb)
            start = max((d for d in saved if d <= resume), default=0)
            state, fits = saved[start] if start else (self.start(arch, scored), ())
            for depth in range(start, len(arch.modules)):
                state, module_fit = self.step(state, arch.modules[depth], junctions[depth])
                fits += (module_fit,)
                if depth + 1 in keep and self._fits(saved, state):
                    saved[depth + 1] = (state, fits)
            saved = {d: s for d, s in saved.items() if d in keep}
            fitted = self.finish(arch, state, fits)
            if len(scored):
                correct = 0
                for x, y, v in zip(state.scored, labels, valid):
                    c, finite = core.compiled_score_batch(fitted.head, x, jnp.asarray(y), jnp.asarray(v))
                    if not bool(finite):
                        raise EvaluationError(f"non-finite logits scoring {arch.describe()}")
                    correct += int(c)
                total = len(split)
            else:
                correct, total = self.score(fitted, split)
            params, flops = self.cost(arch)
            yield i, Evaluation(correct, total, params, flops, arch.num_junctions(self.kb))

    def _fits(self, saved: dict, state: core.State) -> bool:
        if self.prefix_memory is None:
            return True
        used = sum(state_bytes(s) for s, _ in saved.values())
        return used + state_bytes(state) <= self.prefix_memory

    def evaluate_many(self, archs: Sequence[Architecture], split: Split) -> list[Evaluation]:
        """`evaluate_iter`'s evaluations in the order of `archs`."""
        out: list[Evaluation | None] = [None] * len(archs)
        for i, ev in self.evaluate_iter(archs, split):
            out[i] = ev
        return out

    def evaluate(self, arch: Architecture, split: Split) -> Evaluation:
        return self.evaluate_many([arch], split)[0]


def state_bytes(state: core.State) -> int:
    """Bytes of a state's activations (its fitted params are small and shared): what
    `Evaluator.prefix_memory` counts."""
    return sum(x.nbytes for x in jax.tree_util.tree_leaves((state.fit, state.features, state.scored)))


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
