"""Evaluating a whole population of genotypes as one compiled program (the accelerator path).

Every network of a staged space has the same skeleton: a stem, then per stage a first slot
and up to D-1 further slots. Candidate modules of one slot share their shapes, so their
params are stacked into a *bank* and each genotype gathers its module by index. Slots past a
network's depth are computed and masked out (`where(active, y, x)`), junction stitches are
solved everywhere and used only at junctions (`where(junction, stitch(x), x)`); both masks
are exact, so one program serves every genotype of the space and `vmap` runs a population
chunk at once. Chunks have a fixed size (the last one padded), so a search compiles once.
The population axis is sharded over `jax.devices()`; a chunk that runs out of device memory
is split in half and retried.

`evaluate.Evaluator` is the per-module path of the same protocol (best on a CPU, where
vmapping over different kernels is slow); both count the same correct predictions.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from modulenet_jax.assemble import apply_stitch, fit_linear_map, preprocess
from modulenet_jax.data import Split
from modulenet_jax.evaluate import Evaluation, Evaluator, Protocol, fit_logistic_head, fit_ridge_head
from modulenet_jax.space import Architecture, SearchSpace
from modulenet_jax.zoo.registry import get_op

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory")


class FusionError(ValueError):
    """A space whose candidates of one slot differ in shape or op: it cannot be fused."""


def _stack(trees):
    first = jax.tree_util.tree_structure(trees[0])
    for t in trees[1:]:
        if jax.tree_util.tree_structure(t) != first:
            raise FusionError("candidates of one slot have different param structures")
    shapes = [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(trees[0])]
    for t in trees[1:]:
        if [tuple(np.shape(leaf)) for leaf in jax.tree_util.tree_leaves(t)] != shapes:
            raise FusionError("candidates of one slot have different param shapes")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The static skeleton of the fused program: the op of each slot kind and stage depths."""

    stem_op: tuple
    first_ops: tuple
    other_ops: tuple  # None where a stage has a single slot
    depths: tuple[int, ...]

    @property
    def num_slots(self) -> int:
        return 1 + sum(self.depths)


def _op_key(records) -> tuple:
    keys = {(r.spec.op, r.spec.static) for r in records}
    if len(keys) != 1:
        raise FusionError(f"candidates of one slot use different ops: {sorted(keys)}")
    return keys.pop()


def _run_op(key, params, x, calibrate):
    op, static = key
    return get_op(op)(params, x, calibrate=calibrate, **dict(static))


def _take(bank, i):
    return jax.tree_util.tree_map(lambda a: a[i], bank)


def _slot_fit(key, bank, targets, i, active, junction, x, protocol: Protocol):
    """Fit one slot on the fit activations: stitch (used at a junction), BN statistics."""
    params = _take(bank, i)
    stitch = None
    x_in = x
    if protocol.stitch:
        stitch = fit_linear_map(x[:protocol.stitch_images], targets[i], protocol.stitch_ridge)
        x_in = jnp.where(junction, apply_stitch(stitch, x), x)
    y, used = _run_op(key, params, x_in, protocol.bn == "recalibrate")
    return (y if active is None else jnp.where(active, y, x)), (stitch, used)


def _slot_apply(key, stitch, used, active, junction, x, protocol: Protocol):
    x_in = x if stitch is None else jnp.where(junction, apply_stitch(stitch, x), x)
    y, _ = _run_op(key, used, x_in, False)
    return y if active is None else jnp.where(active, y, x)


def _stitch_pass(layout: Layout, protocol: Protocol, banks, slots, x, recalibrate: bool):
    """Runs the fitting images through every slot, solving stitches (and BN statistics)."""
    idx, active, junction = slots
    x, stem_used = _run_op(layout.stem_op, _take(banks["stem"], idx[0]), x, recalibrate)
    state = {"stem": stem_used, "stages": []}
    k = 1
    for s, depth in enumerate(layout.depths):
        b = banks["stages"][s]
        # a stage's first slot is always active (depth >= 1) and may change the shape
        x, first = _slot_fit(layout.first_ops[s], b["first"], b["first_targets"], idx[k], None, junction[k],
                             x, protocol)
        stage = {"first": first}
        if depth > 1:
            def body(x, sl, s=s, b=b):
                i, a, j = sl
                return _slot_fit(layout.other_ops[s], b["other"], b["other_targets"], i, a, j, x, protocol)

            x, stage["other"] = jax.lax.scan(body, x, (idx[k + 1:k + depth], active[k + 1:k + depth],
                                                       junction[k + 1:k + depth]))
        state["stages"].append(stage)
        k += depth
    return x, state


def batched(fn, arrays, batch_size: int):
    """`fn` over fixed-size batches of `arrays` (axis 0) with `lax.map`; the last batch is padded
    by repeating the last row, and the padded outputs are cut off again."""
    n = arrays[0].shape[0]
    nb = -(-n // batch_size)
    pad = nb * batch_size - n
    def prep(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape((nb, batch_size) + a.shape[1:])
    out = jax.lax.map(fn, tuple(prep(a) for a in arrays))
    return jax.tree_util.tree_map(lambda o: o.reshape((nb * batch_size,) + o.shape[2:])[:n], out)


def fit_network(layout: Layout, protocol: Protocol, num_classes: int, banks, slots, images, labels):
    """One genotype: fit stitches, BN statistics and head on the fit images; returns the fitted state.

    `slots` = (idx, active, junction), each a vector over the layout's slots. As in
    `Evaluator.fit`: stitches are solved on the first `stitch_images`; with BN recalibration
    every fit image passes every slot at once, otherwise the head's features are computed in
    batches with the fitted stitches.
    """
    idx = slots[0]
    mean, std = banks["mean"][idx[0]], banks["std"][idx[0]]
    recalibrate = protocol.bn == "recalibrate"
    first = images if recalibrate else images[:protocol.stitch_images]
    x, state = _stitch_pass(layout, protocol, banks, slots, preprocess(first, mean, std, protocol.jnp_dtype, protocol.input_size),
                            recalibrate)
    if recalibrate:
        features = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    else:
        features = batched(lambda b: network_features(layout, protocol, banks, slots, state, b[0]), (images,),
                           protocol.batch_size)
    if protocol.head == "ridge":
        state["head"] = fit_ridge_head(features, labels, num_classes, protocol.head_ridge)
    else:
        state["head"] = fit_logistic_head(features, labels, num_classes, protocol.head_l2, protocol.head_steps)
    return state


def network_features(layout: Layout, protocol: Protocol, banks, slots, state, images):
    """Pooled features of images through a fitted network (stitches, BN statistics)."""
    idx, active, junction = slots
    x = preprocess(images, banks["mean"][idx[0]], banks["std"][idx[0]], protocol.jnp_dtype, protocol.input_size)
    x, _ = _run_op(layout.stem_op, state["stem"], x, False)
    k = 1
    for s, depth in enumerate(layout.depths):
        st, used = state["stages"][s]["first"]
        x = _slot_apply(layout.first_ops[s], st, used, None, junction[k], x, protocol)
        if depth > 1:
            def body(x, sl, s=s):
                (st, used), a, j = sl
                return _slot_apply(layout.other_ops[s], st, used, a, j, x, protocol), None

            x, _ = jax.lax.scan(body, x, (state["stages"][s]["other"], active[k + 1:k + depth],
                                          junction[k + 1:k + depth]))
        k += depth
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def count_correct(layout, protocol, banks, slots, state, images, labels):
    """(correct predictions, all logits finite) over a split held on the device."""
    def one(batch):
        x, y = batch
        f = network_features(layout, protocol, banks, slots, state, x)
        logits = jnp.dot(f, state["head"]["kernel"], precision=jax.lax.Precision.HIGHEST) + state["head"]["bias"]
        return jnp.argmax(logits, -1) == y, jnp.all(jnp.isfinite(logits), axis=-1)

    hits, finite = batched(one, (images, labels), protocol.batch_size)
    return jnp.sum(hits), jnp.all(finite)


@functools.partial(jax.jit, static_argnames=("layout", "protocol", "num_classes"))
def _evaluate_chunk(layout, protocol, num_classes, banks, slots, fit_x, fit_y, val_x, val_y):
    def one(slots):
        state = fit_network(layout, protocol, num_classes, banks, slots, fit_x, fit_y)
        correct, finite = count_correct(layout, protocol, banks, slots, state, val_x, val_y)
        ok = finite & jnp.all(jnp.array([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(state)]))
        return correct, ok
    return jax.vmap(one)(slots)


@functools.partial(jax.jit, static_argnames=("layout", "protocol"))
def _forward_chunk(layout, protocol, banks, slots, states, val_x, val_y):
    def one(slots, state):
        return count_correct(layout, protocol, banks, slots, state, val_x, val_y)[0]
    return jax.vmap(one)(slots, states)


class PopulationEvaluator:
    """Scores populations of a staged space in fixed-size, vmapped, sharded chunks.

    `chunk_size` genotypes run per compiled call (None: chosen from the device's free memory);
    `devices` defaults to `jax.devices()`. The per-module `Evaluator` it wraps supplies the
    stitch targets, the costs and the split handling, so both paths share one protocol.
    """

    def __init__(self, space: SearchSpace, protocol: Protocol, fit: Split, chunk_size: int | None = None,
                 devices: Sequence[Any] | None = None, evaluator: Evaluator | None = None):
        if protocol.stitch_steps:
            raise ValueError("the fused population path fits stitches in closed form only; "
                             "protocol.stitch_steps > 0 needs evaluate.Evaluator")
        self.space = space
        self.kb = space.kb
        self.protocol = protocol
        self.evaluator = evaluator or Evaluator(space.kb, protocol, fit)
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), ("pop",))
        self.layout, self.banks, self._pools = self._build_banks()
        self.chunk_size = chunk_size or self._chunk_from_memory()
        self.chunk_size = max(len(self.devices), -(-self.chunk_size // len(self.devices)) * len(self.devices))
        self._run_chunk: Callable = self._evaluate_chunk_on_device

    # -- banks ------------------------------------------------------------------------------

    def _build_banks(self):
        kb, space = self.kb, self.space
        stems = space.stems
        targets_of = lambda recs: jnp.stack([self.evaluator.source_inputs(r.source)[r.spec.name] for r in recs])
        banks = {"stem": _stack([kb.module_params(r.id) for r in stems]),
                 "mean": jnp.stack([self.evaluator._normalisation(r.source)[0] for r in stems]),
                 "std": jnp.stack([self.evaluator._normalisation(r.source)[1] for r in stems]),
                 "stages": []}
        first_ops, other_ops, depths, pools = [], [], [], {"stem": [r.id for r in stems]}
        for s in range(1, space.num_stages + 1):
            first, other = space.first_choices[s], space.other_choices[s]
            depth = space.depth_range[s][1]
            stage = {"first": _stack([kb.module_params(r.id) for r in first]), "first_targets": targets_of(first)}
            # stage 1 of a plain ResNet has no transition: its first and further slots share one pool
            first_ops.append(_op_key(first))
            if depth > 1:
                same = [r.id for r in other] == [r.id for r in first]
                stage["other"] = stage["first"] if same else _stack([kb.module_params(r.id) for r in other])
                stage["other_targets"] = stage["first_targets"] if same else targets_of(other)
                other_ops.append(_op_key(other))
            else:
                other_ops.append(None)
            banks["stages"].append(stage)
            depths.append(depth)
            pools[s] = ([r.id for r in first], [r.id for r in other])
        layout = Layout(_op_key(stems), tuple(first_ops), tuple(other_ops), tuple(depths))
        return layout, banks, pools

    def slots(self, arch: Architecture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(index, active, junction) of every slot of the layout for one network."""
        n = self.layout.num_slots
        idx, active, junction = np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, bool)
        idx[0], active[0] = self._pools["stem"].index(arch.modules[0]), True
        stage_of = [self.kb.record(m).spec.stage for m in arch.modules]
        junctions = arch.junctions(self.kb)
        k = 1
        for s, depth in zip(range(1, self.space.num_stages + 1), self.layout.depths):
            members = [i for i, st in enumerate(stage_of) if st == s]
            if not 1 <= len(members) <= depth:
                raise ValueError(f"{arch.describe()}: stage {s} has {len(members)} blocks; the layout holds 1..{depth}")
            first, other = self._pools[s]
            for p, i in enumerate(members):
                pool = first if p == 0 else other
                if arch.modules[i] not in pool:
                    raise ValueError(f"{arch.modules[i]} cannot sit at position {p} of stage {s}")
                idx[k + p], active[k + p], junction[k + p] = pool.index(arch.modules[i]), True, junctions[i]
            k += depth
        return idx, active, junction

    # -- chunks ------------------------------------------------------------------------------

    def _per_genotype_bytes(self) -> int:
        p = self.protocol
        itemsize = 2 if p.dtype == "bfloat16" else 4
        widest = max(r.spec.out_channels * r.output_resolution ** 2 for r in self.kb.records if r.spec.kind != "head")
        live = 8  # activations alive at once in a block: input, stitched input, two convs, BN, targets
        fitting = p.fit_images if p.bn == "recalibrate" else p.stitch_images
        fit = fitting * widest * 4 * live
        val = p.batch_size * widest * itemsize * live
        return fit + val

    def _chunk_from_memory(self) -> int:
        stats = self.devices[0].memory_stats() if hasattr(self.devices[0], "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return 8 * len(self.devices)
        free = stats["bytes_limit"] - stats.get("bytes_in_use", 0)
        per = self._per_genotype_bytes()
        return int(max(1, min(256, 0.5 * free // per)) * len(self.devices))

    def _sharded(self, array, axis_sharded: bool):
        spec = PartitionSpec("pop") if axis_sharded else PartitionSpec()
        sharding = NamedSharding(self.mesh, spec)
        array = np.asarray(array)
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    def _evaluate_chunk_on_device(self, slots, fit_x, fit_y, val_x, val_y):
        slots = tuple(self._sharded(a, True) for a in slots)
        correct, ok = _evaluate_chunk(self.layout, self.protocol, self.evaluator.num_classes, self.banks, slots,
                                      fit_x, fit_y, val_x, val_y)
        if jax.process_count() > 1:  # results sharded over hosts: every process gets all of them
            from jax.experimental import multihost_utils

            correct, ok = multihost_utils.process_allgather((correct, ok), tiled=True)
        return np.asarray(jax.device_get(correct)), np.asarray(jax.device_get(ok))

    def _device_split(self, split: Split):
        return self._sharded(split.images, False), self._sharded(split.labels, False)

    def evaluate(self, archs: Sequence[Architecture], split: Split) -> list[Evaluation]:
        """Evaluations of many networks (same order), chunk by chunk."""
        slots = [self.slots(a) for a in archs]
        fit_x = self._sharded(np.asarray(self.evaluator.fit_images), False)
        fit_y = self._sharded(np.asarray(self.evaluator.fit_labels), False)
        val_x, val_y = self._device_split(split)
        correct = np.zeros(len(archs), np.int64)
        start = 0
        while start < len(archs):
            chunk = slots[start:start + self.chunk_size]
            pad = self.chunk_size - len(chunk)
            chunk = chunk + [chunk[-1]] * pad
            stacked = tuple(np.stack([c[j] for c in chunk]) for j in range(3))
            try:
                c, ok = self._run_chunk(stacked, fit_x, fit_y, val_x, val_y)
            except Exception as e:  # noqa: BLE001 - only device OOM is handled, the rest re-raised
                if not any(m in str(e) for m in OOM_MARKERS) or self.chunk_size <= len(self.devices):
                    raise
                self.chunk_size = max(len(self.devices), self.chunk_size // 2 // len(self.devices) * len(self.devices))
                continue
            n = self.chunk_size - pad
            if not ok[:n].all():
                bad = [archs[start + i].describe() for i in np.flatnonzero(~ok[:n])]
                from modulenet_jax.evaluate import EvaluationError

                raise EvaluationError(f"non-finite values while evaluating {bad[0]} (and {len(bad) - 1} more)")
            correct[start:start + n] = c[:n]
            start += n
        out = []
        for arch, c in zip(archs, correct):
            params, flops = self.evaluator.cost(arch)
            out.append(Evaluation(int(c), len(split), params, flops, arch.num_junctions(self.kb)))
        return out
