"""The fused driver of the evaluation protocol: a whole population chunk as one program.

Every network of a staged space has the same skeleton: a stem, then per stage a first slot and
up to D-1 further slots. Candidate modules of one slot share their shapes, so their params are
stacked into a *bank* and each genotype gathers its module by index. Slots past a network's
depth pass their input through (`active`), and a stitch is used only at a junction (`junction`);
both are exact masks, so one program serves every genotype of the space. A chunk runs in groups
(`by_group`): the genotypes of a group side by side (`vmap`, whose convolutions become grouped
ones), the groups one after another (`lax.map`); a group of one runs plain convolutions; with
`grouped_layout` a group is fitted and scored with its genotypes inside the channel axis instead
of vmapped (`fit_modules` with `groups`, `score_group`, `grouped.py`: no transposes around each
convolution). What no genotype of a group needs is not computed (`chunk_presence`, outside the
vmap): the fit pass runs a stage's slots in a loop over those the group reaches (`walk`'s
`reached`), the scoring skips a slot none reaches by a conditional on the group, and a
conditional skips a stitch where none has a junction; populations are chunked by structure so
that chunks share depths and junctions. Scoring runs each fitted module in its inference form,
BatchNorm folded into the convolution (`protocol.folded`), and on a GPU moves several batches
through a slot together (`batch_carry`: each conditional there waits for the device). Chunks
have a fixed size (the last one padded), so a search compiles once. Each of `jax.devices()` runs
its share of a chunk (`over_devices`); a chunk that runs out of device memory is split in half
and retried.

The protocol itself (stitch solves, BatchNorm statistics, head, tuning, scoring) is
`protocol.py`'s, scanned over the slots here; `evaluate.Evaluator` is the per-module driver
of the same functions (with the prefixes a generation shares computed once), and both count
the same correct predictions (checked on real networks by `benchmarks/driver_agreement.py`; where XLA
contracts differently, to float rounding: README, How it works).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from modulenet_jax import grouped, protocol as core
from modulenet_jax.data import Split
from modulenet_jax.evaluate import Evaluation, Evaluator
from modulenet_jax.protocol import EvaluationError, ModuleFit, Protocol
from modulenet_jax.space import Architecture, SearchSpace
from modulenet_jax.zoo.layers import divisor_at_most

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
    def ops(self) -> tuple:
        """Every op the program runs (stem, each stage's first and other slots)."""
        return (self.stem_op, *self.first_ops, *(op for op in self.other_ops if op))

    @property
    def num_slots(self) -> int:
        return 1 + sum(self.depths)

    def per_slot(self, vectors) -> dict:
        """Per-slot vectors (a pytree of arrays over `num_slots`) cut into the program's
        structure: `{"stem": v[0], "stages": [{"first": v[k], "other": v[k+1:k+depth]}, ...]}`."""
        stages, k = [], 1
        for depth in self.depths:
            stage = {"first": jax.tree_util.tree_map(lambda v: v[k], vectors)}
            if depth > 1:
                stage["other"] = jax.tree_util.tree_map(lambda v: v[k + 1:k + depth], vectors)
            stages.append(stage)
            k += depth
        return {"stem": jax.tree_util.tree_map(lambda v: v[0], vectors), "stages": stages}


def _op_key(records) -> tuple:
    keys = {(r.spec.op, r.spec.static) for r in records}
    if len(keys) != 1:
        raise FusionError(f"candidates of one slot use different ops: {sorted(keys)}")
    return keys.pop()


def _take(bank, i):
    return jax.tree_util.tree_map(lambda a: a[i], bank)


def walk(layout: Layout, per_slot: dict, carry, visit: Callable, reached: Callable | None = None):
    """`visit(op, slot, data, carry) -> (carry, out)` over every slot in forward order: the
    stem, then per stage its first slot and a `lax.scan` over the others. `slot` names the
    slot kind ("stem", "first", "other") with its stage; `per_slot` holds each slot's data in
    `Layout.per_slot`'s structure, and the outputs come back in that structure.

    With `reached(stage, like) -> (count, outputs)`, a stage's other slots run in a loop over
    the first `count` only (those the chunk reaches: a prefix, as a network's depth makes it), the
    rest keeping `outputs` (every slot's, stacked; `like`: their shapes). No conditional per slot
    then: on a GPU a conditional's result is a buffer of its own, copied into the loop's carry on
    every slot (the fit pass's activations, 120 GB per W2 call on an H200, `gpu_census.py`)."""
    carry, stem = visit(layout.stem_op, ("stem", 0), per_slot["stem"], carry)
    stages = []
    for s, depth in enumerate(layout.depths):
        data = per_slot["stages"][s]
        carry, first = visit(layout.first_ops[s], ("first", s), data["first"], carry)
        stage = {"first": first}
        if depth > 1:
            def body(c, d, s=s):
                return visit(layout.other_ops[s], ("other", s), d, c)

            if reached is None:
                carry, stage["other"] = jax.lax.scan(body, carry, data["other"])
            else:
                count, outputs = reached(s, jax.eval_shape(lambda c: jax.lax.scan(body, c, data["other"])[1], carry))

                def one(j, state, body=body, data=data["other"]):
                    c, outs = state
                    c, out = body(c, jax.tree_util.tree_map(lambda a: a[j], data))
                    return c, jax.tree_util.tree_map(lambda o, v: o.at[j].set(v), outs, out)

                with jax.named_scope(reached_scope(s)):
                    carry, stage["other"] = jax.lax.fori_loop(0, count, one, (carry, outputs))
        stages.append(stage)
    return carry, {"stem": stem, "stages": stages}


def reached_scope(stage: int) -> str:
    """The named scope of a stage's loop over its reached slots (`walk`), in the compiled program's op
    names: XLA does not know its trip count, `benchmarks/gpu_census.py` is told it (`reached_slots`)."""
    return f"reached_slots_stage{stage}"


def reached_slots(layout: Layout, protocol: Protocol, slots) -> dict[str, int]:
    """How many of each stage's other slots the chunk `slots` (stacked) reaches, by `reached_scope`."""
    some_active = np.asarray(chunk_presence(protocol, slots)[0])
    stages = layout.per_slot(some_active)["stages"]
    return {reached_scope(s): int(np.sum(stage["other"])) for s, stage in enumerate(stages) if "other" in stage}


def _bank(banks, kind: str, stage: int):
    return banks["stem"] if kind == "stem" else banks["stages"][stage][kind]


def slot_masks(kind: str, active, junction):
    """The stem reads the image (never a junction); the stem and a stage's first slot are
    always active (a first slot may change the shape, so it has no pass-through)."""
    return (active if kind == "other" else None), (False if kind == "stem" else junction)


def chunk_presence(protocol: Protocol, slots):
    """What the chunk needs, per slot: `(some_active, some_junction)`, boolean vectors over the
    layout's slots (`slots` stacked over the chunk; `some_junction` None without stitches).
    Computed outside the vmap, they are the chunk's, not a genotype's: `when_reached` (and in the
    fit pass `walk`'s `reached`) skips a slot no genotype reaches, and the slot's `slot_gate` a
    stitch where none has a junction."""
    _, active, junction = slots
    return jnp.any(active, axis=0), (jnp.any(junction, axis=0) if protocol.stitch else None)


def slot_gate(kind: str, present):
    """The slot's `protocol.stitch_gate` from its `chunk_presence` (None: no gate; the stem,
    never at a junction, has none)."""
    return None if present is None or kind == "stem" else core.stitch_gate(present[1])


def when_reached(kind: str, present, run: Callable, skip: Callable):
    """`run()` (the slot's module) where some genotype of the chunk reaches the slot, `skip()`
    (the input passed through) where none does: exactly what the masks give there, a stitch the
    skip does not make coming back as zeros, as a masked unused stitch does. `present` = this
    slot's `chunk_presence` (None: run everything); the stem and a stage's first slot are
    always reached."""
    if present is None or kind != "other":
        return run()
    return jax.lax.cond(present[0], run, lambda: filled(skip(), jax.eval_shape(run)))


def filled(out, like):
    """What a skipped slot gives (`out`) in the shapes and dtypes of what running it gives
    (`like`): a stitch it does not make (None) as zeros, as a masked unused stitch holds."""
    def one(o, shape):
        if o is None:
            return core.zeros_of(shape)
        return jnp.broadcast_to(jnp.asarray(o, shape.dtype), shape.shape)

    return jax.tree_util.tree_map(one, out, like, is_leaf=lambda n: n is None)


def fit_modules(layout: Layout, protocol: Protocol, banks, slots, images, present=None, groups: int | None = None,
                width: int = 0):
    """One genotype's modules through the protocol on the fit images, slot by slot: `(state,
    fits)`, the state after the last slot and the `ModuleFit` of every slot in
    `Layout.per_slot`'s structure. `slots` = (idx, active, junction), each a vector over the
    layout's slots; `present`: the chunk's `chunk_presence` (a stage's further slots then run in
    a loop over those the chunk reaches, `walk`'s `reached`; None: every slot runs in full).
    With `groups`, `slots` are stacked over a group of that many genotypes, fitted together in
    the grouped layout (`grouped.fit_module`, convolution groups packed up to `width` channels):
    the state in that layout, fits stacked."""
    idx = slots[0]
    mean, std = banks["mean"][idx[..., 0]], banks["std"][idx[..., 0]]
    hooks, begin = {}, core.start
    if groups is not None:
        hooks = {"fit": functools.partial(grouped.fit_module, groups=groups, width=width),
                 "apply": lambda op, fit, x, junction, active, gate=None: grouped.apply_fitted(
                     op, fit, x, groups, junction, active, gate=gate, width=width),
                 "fold": lambda op, fit: jax.vmap(functools.partial(core.folded, op))(fit)}
        begin = functools.partial(core.start, prepare=group_inputs)

    def visit(op, slot, data, state):
        (i, active, junction), here = data
        bank = _bank(banks, *slot)
        active, junction = slot_masks(slot[0], active, junction)
        target = None if bank["targets"] is None else bank["targets"][i]
        params = _take(bank["params"], i)

        return core.step(protocol, op, params, state, target, junction, active, gate=slot_gate(slot[0], here),
                         **hooks)

    per_slot = layout.per_slot((tuple(jnp.moveaxis(jnp.asarray(m), -1, 0) for m in slots), present))

    def reached(stage, like):
        (i, _, _), here = per_slot["stages"][stage]["other"]
        skipped = ModuleFit(_take(banks["stages"][stage]["other"]["params"], i), None)  # published, no stitch
        return jnp.sum(here[0], dtype=jnp.int32), filled(skipped, like)

    return walk(layout, per_slot, begin(protocol, images, mean, std), visit, None if present is None else reached)


def tune_network(layout: Layout, protocol: Protocol, banks, slots, fits, head, images, labels, present=None):
    """`(fits, head)` of one fitted genotype after the protocol's Adam steps on its stitches
    and head (`protocol.tune`), on the first `stitch_images` fit images."""
    idx = slots[0]
    x = core.prepare(protocol, images[:protocol.stitch_images], banks["mean"][idx[0]], banks["std"][idx[0]])
    return core.tune(protocol, functools.partial(network_logits, layout, slots, present=present), fits, head, x,
                     labels[:protocol.stitch_images])


def network_logits(layout: Layout, slots, fits, head, x, present=None):
    """Logits of a fitted genotype (`fits` in `Layout.per_slot`'s structure, as fitted or
    `inference_fits`) on preprocessed images `x`, one batch, or a tuple of batches that move
    through the network together, slot by slot, so that the chunk's conditionals at a slot run
    once for all of them (logits: a tuple too)."""
    def visit(op, slot, data, x):
        (fit, active, junction), here = data
        active, junction = slot_masks(slot[0], active, junction)

        def run():
            return core.apply_fitted(op, fit, x, junction, active, gate=slot_gate(slot[0], here))

        return when_reached(slot[0], here, run, lambda: x), None

    x, _ = walk(layout, _slot_data(layout, fits, slots[1:], present), x, visit)
    logits = tuple(core.head_logits(head, core.pool(xb)) for xb in (x if isinstance(x, tuple) else (x,)))
    return logits if isinstance(x, tuple) else logits[0]


def _slot_data(layout: Layout, fits, masks, present):
    """What the scoring walks over: per slot `((fit, active, junction), present)` in
    `Layout.per_slot`'s structure, from `fits` (that structure), `masks` = (active, junction)
    (slots on the first axis) and the chunk's `present`."""
    m = layout.per_slot((tuple(masks), present))
    return {"stem": ((fits["stem"],) + m["stem"][0], m["stem"][1]),
            "stages": [{k: ((f[k],) + ms[k][0], ms[k][1]) for k in ms} for f, ms in zip(fits["stages"], m["stages"])]}


def inference_fits(layout: Layout, fits):
    """`fits` (`Layout.per_slot`'s structure) in their inference form (`protocol.folded`)."""
    return walk(layout, fits, None, lambda op, slot, fit, carry: (carry, core.folded(op, fit)))[1]


def batch_carry(protocol: Protocol, platform: str) -> int:
    """The most scored batches that move through the network together on `platform`
    (`score_network`'s `carry`). On a GPU every conditional copies its predicate to the host
    and waits for the device (XLA's `ConditionalThunk`), so a conditional per slot and per batch
    left the device idle between batches: there as many batches as hold twice the fit images,
    whose pass the chunk's memory is sized for. Elsewhere one: a CPU or TPU decides a
    conditional without that wait, and on a CPU carrying only enlarges the working set."""
    return max(1, 2 * protocol.fit_images // protocol.batch_size) if platform == "gpu" else 1


def score_network(layout: Layout, protocol: Protocol, banks, slots, fits, head, images, labels, valid, present=None,
                  carry: int = 1):
    """(correct predictions, all logits finite) over a split held on the device in
    `pad_batches` form, through the fitted network (in its inference form), as many batches at a
    time as divide them, at most `carry` (`batch_carry`)."""
    mean, std = banks["mean"][slots[0][0]], banks["std"][slots[0][0]]
    fits = inference_fits(layout, fits)
    k = divisor_at_most(len(images), carry)

    def together(batches):
        x, y, v = batches
        x = tuple(core.prepare(protocol, x[j], mean, std) for j in range(k))
        logits = jnp.stack(network_logits(layout, slots, fits, head, x, present))
        return jax.vmap(core.score_logits)(logits, y, v)

    split = jax.tree_util.tree_map(lambda a: a.reshape((len(a) // k, k) + a.shape[1:]), (images, labels, valid))
    with core.numerics(protocol):
        hits, finite = jax.lax.map(together, split)
    return jnp.sum(hits), jnp.all(finite)


def group_fits(layout: Layout, fits):
    """A group's fits (`Layout.per_slot`'s structure, stacked over the group) in their inference
    form, each stage's other slots on the first axis (the group's inside), as `walk` scans them."""
    return other_slots_swapped(jax.vmap(lambda f: inference_fits(layout, f))(fits))


def other_slots_swapped(fits):
    """A group's fits (`Layout.per_slot`'s structure) with the first two axes of each stage's
    other slots swapped: genotype first (stacked over the group) <-> slot first (as `walk`
    scans them)."""
    def swapped(tree):
        return jax.tree_util.tree_map(lambda a: jnp.swapaxes(a, 0, 1), tree)

    return {"stem": fits["stem"], "stages": [{k: swapped(v) if k == "other" else v for k, v in stage.items()}
                                             for stage in fits["stages"]]}


def group_inputs(protocol: Protocol, images, mean, std):
    """A batch of uint8 images as a group's first input: preprocessed with each genotype's
    normalisation (`mean`, `std`: `[P, 3]`), in the grouped layout `[batch, h, w, P·3]`."""
    return grouped.to_grouped(jax.vmap(lambda m, s: core.prepare(protocol, images, m, s))(mean, std))


def per_genotype_features(features, groups: int):
    """Pooled features in the grouped layout, `[n, P·C]`, per genotype: `[P, n, C]`."""
    return features.reshape(features.shape[0], groups, -1).swapaxes(0, 1)


def group_head_logits(heads, x):
    """Each genotype's head (stacked) on its pooled features of `x` (grouped layout):
    `[P, batch, classes]`."""
    P = jax.tree_util.tree_leaves(heads)[0].shape[0]
    return jax.vmap(core.head_logits)(heads, per_genotype_features(core.pool(x), P))


def group_logits(layout: Layout, slots, fits, heads, xs, present, width: int = 0):
    """`network_logits` of a whole group at once in the grouped layout (`grouped.py`): `slots`
    and `heads` stacked over the group, `fits` as `group_fits` gives them, `xs` a tuple of
    batches `[batch, h, w, P·C]` moving through the network together; logits
    `[P, batch, classes]` per batch (convolution groups packed up to `width` channels). The
    chunk's conditionals (`present`) are the group's, as in the vmapped program."""
    P = slots[0].shape[0]

    def visit(op, slot, data, xs):
        (fit, active, junction), here = data
        active, junction = slot_masks(slot[0], active, junction)

        def run():
            return grouped.apply_fitted(op, fit, xs, P, junction, active, gate=slot_gate(slot[0], here), width=width)

        return when_reached(slot[0], here, run, lambda: xs), None

    xs, _ = walk(layout, _slot_data(layout, fits, [m.T for m in slots[1:]], present), xs, visit)
    return tuple(group_head_logits(heads, x) for x in xs)


def score_group(layout: Layout, protocol: Protocol, banks, slots, fits, heads, images, labels, valid, present=None,
                carry: int = 1, width: int = 0):
    """`score_network` for every genotype of a group at once, in the grouped layout: per
    genotype (correct predictions, all logits finite), `[P]` each."""
    mean, std = banks["mean"][slots[0][:, 0]], banks["std"][slots[0][:, 0]]
    fits = group_fits(layout, fits)
    k = divisor_at_most(len(images), carry)

    def together(batches):
        x, y, v = batches
        xs = tuple(group_inputs(protocol, x[j], mean, std) for j in range(k))
        logits = group_logits(layout, slots, fits, heads, xs, present, width)
        logits = jnp.stack(logits, axis=1)  # [P, k, batch, classes]
        return jax.vmap(jax.vmap(core.score_logits), in_axes=(0, None, None))(logits, y, v)

    split = jax.tree_util.tree_map(lambda a: a.reshape((len(a) // k, k) + a.shape[1:]), (images, labels, valid))
    with core.numerics(protocol):
        hits, finite = jax.lax.map(together, split)
    return jnp.sum(hits, axis=(0, 2)), jnp.all(finite, axis=(0, 2))


def by_group(protocol: Protocol, group: int, one: Callable, slots, *rest, many: Callable | None = None):
    """`one(slots, *rest, present=...)` for every genotype of a chunk (`slots` and `rest` stacked
    over it): `group` genotypes side by side (vmapped), the groups one after another
    (`lax.map`), each group skipping what none of its genotypes needs (its `chunk_presence`).
    `group` 1 runs each genotype alone, with plain convolutions and exactly its own slots and
    stitches; the whole chunk is one vmap, whose convolutions are grouped over genotypes.
    `many(slots, *rest, present=...)`, where given, runs a group of several at once instead of
    the vmap of `one` (`score_group`: the grouped layout)."""
    n = len(slots[0])
    if n % group:
        raise ValueError(f"a chunk of {n} genotypes cannot run in groups of {group}")

    def together(args):
        s, r = args
        present = chunk_presence(protocol, s)
        if many is not None:
            return many(s, *r, present=present)
        return jax.vmap(lambda s, r: one(s, *r, present=present))(s, r)

    if group == 1:
        def alone(args):
            s, r = args
            return one(s, *r, present=chunk_presence(protocol, jax.tree_util.tree_map(lambda a: a[None], s)))

        return jax.lax.map(alone, (slots, rest))
    if group == n:
        return together((slots, rest))
    split = jax.tree_util.tree_map(lambda a: a.reshape((n // group, group) + a.shape[1:]), (slots, rest))
    return jax.tree_util.tree_map(lambda a: a.reshape((n,) + a.shape[2:]), jax.lax.map(together, split))


def over_devices(mesh: Mesh, local: Callable, per_genotype, shared):
    """`local(per_genotype, shared)` on each device's share of the population axis
    (`shard_map`): `per_genotype` is split over the mesh's `pop` axis, `shared` replicated.
    Devices do not communicate, so the replication check (`check_vma`, which asks every
    conditional's branches to agree on it) is off."""
    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec("pop"), PartitionSpec()),
                         out_specs=PartitionSpec("pop"), check_vma=False)(per_genotype, shared)


# The protocol's phases in `evaluate_chunk`, as named scopes: in the compiled program's op names, by
# which a profile or `benchmarks/gpu_census.py` tells their kernels apart.
PHASES = ("fit_pass", "heads", "tune", "score")


def fit_chunk(layout: Layout, protocol: Protocol, group: int, banks, slots, images, grouped_layout: int = 0):
    """The first phase for every genotype of a chunk (`by_group`): `(fits, features)`, its
    modules fitted on the fit images and the head's pooled features of them (with
    `grouped_layout`, a group's fitted together in the grouped layout: `PopulationEvaluator`)."""
    def fit(slots, present):
        state, fits = fit_modules(layout, protocol, banks, slots, images, present)
        return fits, core.head_features(protocol, state, len(images))

    def fit_all(slots, present):
        P = slots[0].shape[0]
        state, fits = fit_modules(layout, protocol, banks, slots, images, present, groups=P, width=grouped_layout)
        return other_slots_swapped(fits), per_genotype_features(core.head_features(protocol, state, len(images)), P)
    return by_group(protocol, group, fit, slots, many=fit_all if grouped_layout else None)


def fit_heads(protocol: Protocol, num_classes: int, features, labels):
    """Every genotype's head at once (vmapped over the chunk, whatever its groups: L-BFGS's many
    small steps run once for all)."""
    return jax.vmap(lambda f: core.fit_head(protocol, f, labels, num_classes))(features)


def evaluate_chunk(layout: Layout, protocol: Protocol, num_classes: int, group: int, banks, slots, fit_x, fit_y,
                   images, labels, valid, carry: int = 1, grouped_layout: int = 0):
    """`(correct, finite)` of every genotype of a chunk (one device's share) through the whole
    protocol, phase by phase (each under its `PHASES` name): `fit_chunk`, `fit_heads`, the optional
    tuning and the scoring (`by_group`, `carry` batches at a time at most; with `grouped_layout`, a
    group's fit pass and scoring in the grouped layout)."""
    with jax.named_scope(PHASES[0]):
        fits, features = fit_chunk(layout, protocol, group, banks, slots, fit_x, grouped_layout)
    with jax.named_scope(PHASES[1]):
        heads = fit_heads(protocol, num_classes, features, fit_y)
    if protocol.stitch_steps:
        def tune(slots, fits, head, present):
            return tune_network(layout, protocol, banks, slots, fits, head, fit_x, fit_y, present)

        with jax.named_scope(PHASES[2]):
            fits, heads = by_group(protocol, group, tune, slots, fits, heads)

    def score(slots, fits, head, present):
        correct, finite = score_network(layout, protocol, banks, slots, fits, head, images, labels, valid, present,
                                        carry)
        return correct, finite & core.fit_is_finite(fits, head)

    def score_all(slots, fits, heads, present):
        correct, finite = score_group(layout, protocol, banks, slots, fits, heads, images, labels, valid, present,
                                      carry, grouped_layout)
        return correct, finite & jax.vmap(core.fit_is_finite)(fits, heads)
    with jax.named_scope(PHASES[3]):
        return by_group(protocol, group, score, slots, fits, heads, many=score_all if grouped_layout else None)


@functools.partial(jax.jit, static_argnames=("layout", "protocol", "num_classes", "group", "carry", "mesh",
                                             "grouped_layout"))
def _evaluate_chunk(layout, protocol, num_classes, group, carry, mesh, grouped_layout, banks, slots, fit_x, fit_y,
                    images, labels, valid):
    def local(slots, shared):
        banks, fit_x, fit_y, images, labels, valid = shared
        return evaluate_chunk(layout, protocol, num_classes, group, banks, slots, fit_x, fit_y, images, labels, valid,
                              carry, grouped_layout)
    return over_devices(mesh, local, slots, (banks, fit_x, fit_y, images, labels, valid))


@functools.partial(jax.jit, static_argnames=("layout", "protocol", "group", "carry", "mesh", "grouped_layout"))
def _score_chunk(layout, protocol, group, carry, mesh, grouped_layout, banks, slots, fits, heads, images, labels,
                 valid):
    def local(per_genotype, shared):
        banks, images, labels, valid = shared

        def one(slots, fits, head, present):
            return score_network(layout, protocol, banks, slots, fits, head, images, labels, valid, present, carry)

        def many(slots, fits, heads, present):
            return score_group(layout, protocol, banks, slots, fits, heads, images, labels, valid, present, carry,
                               grouped_layout)
        return by_group(protocol, group, one, *per_genotype, many=many if grouped_layout else None)
    return over_devices(mesh, local, (slots, fits, heads), (banks, images, labels, valid))


def population_mesh(devices) -> Mesh:
    """The 1-D mesh a population chunk is sharded over, genotype by genotype."""
    return Mesh(np.array(devices), ("pop",))


def mesh_sharding(mesh: Mesh, axis_sharded: bool) -> NamedSharding:
    """The first axis sharded over the mesh's `pop` axis, or replicated."""
    return NamedSharding(mesh, PartitionSpec("pop") if axis_sharded else PartitionSpec())


def on_mesh(mesh: Mesh, array, axis_sharded: bool):
    """`array` on the mesh's devices: its first axis sharded over them, or replicated."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, mesh_sharding(mesh, axis_sharded), lambda index: array[index])


def spec_on_mesh(mesh: Mesh, axis_sharded: bool) -> Callable:
    """`on_mesh` of an array's shape and dtype alone (a `jax.ShapeDtypeStruct`): what lowering
    needs, for a mesh of compile-only devices too."""
    sharding = mesh_sharding(mesh, axis_sharded)
    return lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), sharding=sharding)


def gathered(*arrays) -> tuple:
    """Results sharded over the mesh, whole on every process (an all-gather where there are several)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        arrays = multihost_utils.process_allgather(arrays, tiled=True)
    return tuple(np.asarray(jax.device_get(a)) for a in arrays)


def padded(chunk: list, size: int) -> list:
    """`chunk` with its last item repeated up to `size`: every chunk program has one shape."""
    return chunk + chunk[-1:] * (size - len(chunk))


def balanced_chunk(n: int, limit: int, multiple: int = 1) -> int:
    """The chunk size for `n` genotypes when at most `limit` fit in one call: the fewest chunks
    of equal size (a multiple of `multiple`: the devices times the group) within `limit`, so the
    last is not mostly padding (64 genotypes under a limit of 57 run as 2 x 32, not 57 + 7
    padded to 57; a population of 12 is not padded to 57)."""
    limit = max(limit, multiple)
    chunks = math.ceil(n / limit)
    while True:
        size = math.ceil(math.ceil(n / chunks) / multiple) * multiple
        if size <= limit:
            return size
        chunks += 1


def choose_strategy(strategy: str) -> str:
    """`auto`: the fused population program on accelerators, one call per module on a CPU
    (measured as fast as the fused program one genotype at a time, and it shares the module
    prefixes of a generation)."""
    if strategy == "auto":
        return "loop" if jax.devices()[0].platform == "cpu" else "fused"
    return strategy


def default_group(platform: str) -> int | None:
    """`PopulationEvaluator.group` for a platform: one genotype at a time on a CPU (measured: a
    genotype alone, with plain convolutions and its own branches, runs faster than vmapped
    ones), the device's whole share of the chunk elsewhere (None; measured on an H200: W1 bf16
    at P = 64 ran 218,640 genotype-images/s as one vmap, 206,264 eight at a time, 128,854 one
    at a time, `benchmarks/results/nvidia-h200-speed.md`)."""
    return 1 if platform == "cpu" else None


def structure_order(slots: Sequence[tuple]) -> list[int]:
    """Indices of networks (`PopulationEvaluator.slots` each) ordered by structure: by the
    number of slots they reach, then which, then where their junctions are."""
    return sorted(range(len(slots)), key=lambda i: (int(slots[i][1].sum()), slots[i][1].tolist(),
                                                    slots[i][2].tolist()))


class PopulationEvaluator:
    """Scores populations of a staged space in fixed-size, vmapped, sharded chunks.

    `chunk_size` genotypes run per compiled call (None: chosen from the device's free memory and,
    given `largest`, the most networks one `evaluate` is asked for, a search's population: cut
    to `balanced_chunk`, so a population of 12 is not padded to what the memory would hold);
    on each device `group` of them side by side, the groups one after another (`by_group`;
    None: all of the device's share, one vmap; `default_group` says what suits a platform);
    scored batches move through a network `carry` at a time at most (None: `batch_carry`);
    `grouped_layout`: a group of several genotypes is fitted and scored in the grouped layout
    (`fit_modules` with `groups`, `score_group`; ops of `grouped.GROUPED_OPS` only) instead of
    vmapped (the heads and any tuning stay vmapped: they run on pooled features and stitches);
    a number W > 1 instead of True besides packs neighbouring genotypes' convolutions into groups
    of up to W channels (`layers.packing`: a group of 16-channel convolutions at W = 64 runs them
    4 at a time, their kernels block-diagonal, 4 times the multiplications in groups 4 times as
    wide; the same sums, to the summation order).
    `devices` defaults to `jax.devices()`. The per-module `Evaluator`
    it wraps supplies the stitch targets, the normalisation and the costs.
    """

    def __init__(self, space: SearchSpace, protocol: Protocol, fit: Split, chunk_size: int | None = None,
                 devices: Sequence[Any] | None = None, evaluator: Evaluator | None = None,
                 group: int | None = None, largest: int | None = None, carry: int | None = None,
                 grouped_layout: bool | int = False):
        self.space = space
        self.kb = space.kb
        self.protocol = protocol
        self.evaluator = evaluator or Evaluator(space.kb, protocol, fit)
        self.devices = list(devices or jax.devices())
        self.mesh = population_mesh(self.devices)
        self.layout, self.banks, self.pools = self._build_banks()
        if group is not None and group < 1:
            raise ValueError(f"group must be a positive number of genotypes, got {group}")
        self.group = group
        if not isinstance(grouped_layout, int) or grouped_layout < 0:  # a bool is an int
            raise ValueError(f"grouped_layout must be True, False or the channels a packed convolution group may "
                             f"have, got {grouped_layout!r}")
        if grouped_layout and self.without_grouped_form():
            raise FusionError(f"grouped_layout: no grouped form of {self.without_grouped_form()} "
                              "(`grouped.GROUPED_OPS` has the CIFAR ResNet ops); score this space with "
                              "grouped_layout=False")
        self.grouped_layout = grouped_layout
        self.carry = carry or batch_carry(protocol, self.devices[0].platform)
        # measured once, before any chunk runs: the chunk size and the carry it gives are static
        # arguments of the compiled programs, which a later measurement could change
        self.free_memory = self.free_bytes() if chunk_size is None or self.carry > 1 else None
        self.chunk_size = chunk_size or self.chunk_from_memory()
        if chunk_size is None and largest is not None:
            self.chunk_size = self.chunk_for(largest, self.chunk_size)
        self.chunk_size = max(len(self.devices), -(-self.chunk_size // len(self.devices)) * len(self.devices))

    def without_grouped_form(self) -> list[str]:
        """The space's ops that `grouped_layout` cannot run (none: it can score this space)."""
        return grouped.missing(self.layout.ops)

    # -- banks ------------------------------------------------------------------------------

    def _bank(self, records) -> dict:
        """The stacked params of a slot's candidates and (with stitches) their stitch targets."""
        targets = None
        if self.protocol.stitch:
            targets = jnp.stack([self.evaluator.source_inputs(r.source)[r.spec.name] for r in records])
        return {"params": _stack([self.kb.module_params(r.id) for r in records]), "targets": targets}

    def _build_banks(self):
        space = self.space
        stems = space.stems
        norms = [self.evaluator.normalisation(r.source) for r in stems]
        banks = {"stem": {"params": _stack([self.kb.module_params(r.id) for r in stems]), "targets": None},
                 "mean": jnp.stack([m for m, _ in norms]), "std": jnp.stack([s for _, s in norms]), "stages": []}
        first_ops, other_ops, depths, pools = [], [], [], {"stem": [r.id for r in stems]}
        for s in range(1, space.num_stages + 1):
            first, other = space.first_choices[s], space.other_choices[s]
            depth = space.depth_range[s][1]
            stage = {"first": self._bank(first)}
            first_ops.append(_op_key(first))
            if depth > 1:
                # stage 1 of a plain ResNet has no transition: its first and further slots share one pool
                same = [r.id for r in other] == [r.id for r in first]
                stage["other"] = stage["first"] if same else self._bank(other)
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
        idx[0], active[0] = self.pools["stem"].index(arch.modules[0]), True
        stage_of = [self.kb.record(m).spec.stage for m in arch.modules]
        junctions = arch.junctions(self.kb)
        k = 1
        for s, depth in zip(range(1, self.space.num_stages + 1), self.layout.depths):
            members = [i for i, st in enumerate(stage_of) if st == s]
            if not 1 <= len(members) <= depth:
                raise ValueError(f"{arch.describe()}: stage {s} has {len(members)} blocks; the layout holds 1..{depth}")
            first, other = self.pools[s]
            for p, i in enumerate(members):
                pool = first if p == 0 else other
                if arch.modules[i] not in pool:
                    raise ValueError(f"{arch.modules[i]} cannot sit at position {p} of stage {s}")
                idx[k + p], active[k + p], junction[k + p] = pool.index(arch.modules[i]), True, junctions[i]
            k += depth
        return idx, active, junction

    def stacked_slots(self, archs: Sequence[Architecture]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`slots` of many networks, stacked on a leading population axis."""
        per = [self.slots(a) for a in archs]
        return tuple(np.stack([p[j] for p in per]) for j in range(3))

    def published_fits(self, archs: Sequence[Architecture]):
        """Per network, every slot's module with its published params and an identity stitch
        (used only at the network's junctions), in the program's structure, stacked over
        `archs`: a fitted state for timing the forward pass alone (`score_fitted`)."""
        def identity(width: int, n: int | None = None):
            eye = {"kernel": jnp.eye(width), "bias": jnp.zeros((width,))}
            return eye if n is None else jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), eye)

        def one(arch):
            per = self.layout.per_slot(self.slots(arch)[0])
            out = {"stem": ModuleFit(_take(self.banks["stem"]["params"], per["stem"]), None), "stages": []}
            for s, (bank, data) in enumerate(zip(self.banks["stages"], per["stages"]), start=1):
                first, other = self.pools[s]
                stage = {"first": ModuleFit(_take(bank["first"]["params"], data["first"]),
                                            identity(self.kb.record(first[0]).spec.in_channels))}
                if "other" in data:
                    stage["other"] = ModuleFit(_take(bank["other"]["params"], data["other"]),
                                               identity(self.kb.record(other[0]).spec.in_channels, len(data["other"])))
                out["stages"].append(stage)
            return out

        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[one(a) for a in archs])

    # -- chunks ------------------------------------------------------------------------------

    def widest_output(self) -> int:
        """Elements of the largest module output of one image."""
        return max(r.spec.out_channels * r.output_resolution ** 2 for r in self.kb.records if r.spec.kind != "head")

    def _scored_batch_bytes(self) -> int:
        """Bytes of one scored batch at the widest module output, in the activations' dtype."""
        return self.protocol.batch_size * self.widest_output() * jnp.dtype(self.protocol.jnp_dtype).itemsize

    def _per_genotype_bytes(self) -> int:
        live = 8  # activations alive at once in a block: input, stitched input, two convs, BN, targets
        fit = self.protocol.fit_images * self.widest_output() * 4 * live  # the fit pass, or the head's feature batches
        return fit + self._scored_batch_bytes() * (live + 2 * (self.carry - 1))  # and batches carried in and out

    def free_bytes(self) -> int | None:
        """Free memory of this process's first device (None where the device does not say)."""
        device = next((d for d in self.devices if d.process_index == jax.process_index()), self.devices[0])
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if not stats or "bytes_limit" not in stats:
            return None
        return stats["bytes_limit"] - stats.get("bytes_in_use", 0)

    def chunk_from_memory(self) -> int:
        """Genotypes per chunk that fill half the free memory (eight per device where it does not say)."""
        free = self.free_memory
        if free is None:
            return 8 * len(self.devices)
        return int(max(1, min(256, 0.5 * free // self._per_genotype_bytes())) * len(self.devices))

    def carry_for(self, group: int) -> int:
        """`carry` for groups of `group` genotypes side by side: cut so that the batches such a
        group carries through a slot, in and out, take at most a quarter of the device's free
        memory (a whole chunk as one vmap carries every genotype's batches; it has few
        conditionals to save)."""
        if self.free_memory is None:
            return self.carry
        return max(1, min(self.carry, int(0.25 * self.free_memory // (2 * group * self._scored_batch_bytes()))))

    def device_split(self, split: Split) -> tuple:
        """A split on the devices (replicated) in `protocol.pad_batches` form: images, labels, valid."""
        return tuple(on_mesh(self.mesh, a, False)
                     for a in core.pad_batches(self.protocol.batch_size, split.images, split.labels))

    def chunk_for(self, n: int, limit: int) -> int:
        """`balanced_chunk` of `n` networks under `limit`, a multiple of the devices and, where
        `n` fills whole groups on every device, of the group."""
        devices = len(self.devices)
        whole_groups = self.group is not None and n >= self.group * devices
        return balanced_chunk(n, limit, devices * (self.group if whole_groups else 1))

    def group_of(self, chunk: int) -> int:
        """Genotypes side by side on a device for a chunk of `chunk`: `group` (None: all of the
        device's share), cut to a divisor of that share."""
        local = chunk // len(self.devices)
        return local if self.group is None else math.gcd(local, self.group)

    def _chunk_args(self, slots, fit_x, fit_y, scored) -> tuple:
        """`_evaluate_chunk`'s arguments for one chunk (stacked `slots`, `fit_on_mesh`, `device_split`)."""
        group = self.group_of(len(slots[0]))
        slots = tuple(on_mesh(self.mesh, a, True) for a in slots)
        return (self.layout, self.protocol, self.evaluator.num_classes, group, self.carry_for(group), self.mesh,
                self.grouped_layout, self.banks, slots, fit_x, fit_y, *scored)

    def fit_on_mesh(self) -> tuple:
        """The fit images and labels on the mesh, as every chunk takes them."""
        return tuple(on_mesh(self.mesh, np.asarray(a), False)
                     for a in (self.evaluator.fit_images, self.evaluator.fit_labels))

    def run_chunk(self, slots, fit_x, fit_y, scored):
        """One chunk through the whole protocol on the devices: (correct counts, all finite)."""
        return gathered(*_evaluate_chunk(*self._chunk_args(slots, fit_x, fit_y, scored)))

    def chunk_lowered(self, archs: Sequence[Architecture], split: Split):
        """The program `evaluate` runs on a chunk of `archs` (padded as it pads one) and `split`,
        lowered from the arguments it passes: compiled after `evaluate` ran it, JAX's in-memory cache
        gives back the executable that ran (a profile reads which phase each of its ops is in)."""
        chunk = padded(list(archs[:self.chunk_size]), self.chunk_size)
        args = self._chunk_args(self.stacked_slots(chunk), *self.fit_on_mesh(), self.device_split(split))
        return _evaluate_chunk.trace(*args).lower()

    def score_fitted(self, slots, fits, heads, scored) -> np.ndarray:
        """Correct predictions of already fitted networks (`published_fits`-shaped `fits`,
        stacked `heads`) on a `device_split`: the forward pass alone, one program."""
        group = self.group_of(len(slots[0]))
        slots = tuple(on_mesh(self.mesh, a, True) for a in slots)
        correct, finite = gathered(*_score_chunk(self.layout, self.protocol, group, self.carry_for(group),
                                                 self.mesh, self.grouped_layout, self.banks, slots, fits, heads,
                                                 *scored))
        if not finite.all():
            raise EvaluationError("non-finite logits")
        return correct

    def score_lowered(self, slots, fits, heads, scored, mesh: Mesh, platform: str, carry: int):
        """`score_fitted`'s program on `mesh` (a 1-D `pop` mesh, of compile-only devices too) with
        `carry` batches at a time, lowered for `platform` ("cuda") from the arguments' shapes alone:
        what XLA makes of it for a GPU can be read (`.compile().as_text()`) on a machine without
        one (`benchmarks/gpu_census.py`)."""
        per_genotype = jax.tree_util.tree_map(spec_on_mesh(mesh, True), (tuple(slots), fits, heads))
        banks, scored = jax.tree_util.tree_map(spec_on_mesh(mesh, False), (self.banks, tuple(scored)))
        traced = _score_chunk.trace(self.layout, self.protocol, self.group_of(len(slots[0])), carry, mesh,
                                    self.grouped_layout, banks, *per_genotype, *scored)
        return traced.lower(lowering_platforms=(platform,))

    def evaluate_lowered(self, slots, scored, mesh: Mesh, platform: str, carry: int):
        """`run_chunk`'s program (the whole protocol of a chunk: fit pass, heads, scoring), lowered
        as `score_lowered` lowers the scoring's."""
        slots = jax.tree_util.tree_map(spec_on_mesh(mesh, True), tuple(slots))
        shared = (self.banks, np.asarray(self.evaluator.fit_images), np.asarray(self.evaluator.fit_labels),
                  *scored)
        banks, fit_x, fit_y, *scored = jax.tree_util.tree_map(spec_on_mesh(mesh, False), shared)
        traced = _evaluate_chunk.trace(self.layout, self.protocol, self.evaluator.num_classes,
                                       self.group_of(len(slots[0])), carry, mesh, self.grouped_layout, banks, slots,
                                       fit_x, fit_y, *scored)
        return traced.lower(lowering_platforms=(platform,))

    def evaluate(self, archs: Sequence[Architecture], split: Split) -> list[Evaluation]:
        """Evaluations of many networks (same order), chunk by chunk.

        The networks are chunked in `structure_order`, so that a chunk's networks tend to share
        their depths and junctions and the chunk skips the slots and stitches none of them uses
        (`chunk_presence`); each network's evaluation does not depend on its chunk."""
        order = structure_order([self.slots(a) for a in archs])
        out: list[Evaluation | None] = [None] * len(archs)
        for i, evaluation in zip(order, self._evaluate([archs[i] for i in order], split)):
            out[i] = evaluation
        return out

    def _evaluate(self, archs: Sequence[Architecture], split: Split) -> list[Evaluation]:
        slots = [self.slots(a) for a in archs]
        fit_x, fit_y = self.fit_on_mesh()
        scored = self.device_split(split)
        correct = np.zeros(len(archs), np.int64)
        start = 0
        while start < len(archs):
            chunk = slots[start:start + self.chunk_size]
            pad = self.chunk_size - len(chunk)
            chunk = padded(chunk, self.chunk_size)
            stacked = tuple(np.stack([c[j] for c in chunk]) for j in range(3))
            try:
                c, ok = self.run_chunk(stacked, fit_x, fit_y, scored)
            except Exception as e:  # noqa: BLE001 - only device OOM is handled, the rest re-raised
                if not any(m in str(e) for m in OOM_MARKERS) or self.chunk_size <= len(self.devices):
                    raise
                self.chunk_size = max(len(self.devices), self.chunk_size // 2 // len(self.devices) * len(self.devices))
                continue
            n = self.chunk_size - pad
            if not ok[:n].all():
                bad = [archs[start + i].describe() for i in np.flatnonzero(~ok[:n])]
                raise EvaluationError(f"non-finite values while evaluating {bad[0]} (and {len(bad) - 1} more)")
            correct[start:start + n] = c[:n]
            start += n
        out = []
        for arch, c in zip(archs, correct):
            params, flops = self.evaluator.cost(arch)
            out.append(Evaluation(int(c), len(split), params, flops, arch.num_junctions(self.kb)))
        return out
