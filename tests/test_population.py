"""Fused population evaluation: equals one-by-one evaluation, shards across devices, compiles
once per search, and splits a chunk that runs out of device memory."""

import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modulenet_jax.data import protocol_split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.protocol import Protocol, gated, numerics
from modulenet_jax.population import (PopulationEvaluator, batch_carry, by_group, chunk_presence, fit_modules,
                                      group_fits, group_logits, inference_fits, network_logits, reached_slots,
                                      structure_order, slot_gate, when_reached)
from modulenet_jax.space import Architecture, SearchSpace
from modulenet_jax.zoo.layers import divisor_at_most

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = Protocol(fit_images=96, stitch_images=48, batch_size=40, head_steps=15)
# For the tests about something else than the head: the fused chunk with the closed-form ridge head
# compiles quicker than with the L-BFGS head (no line search in the program).
QUICK = Protocol(**{**PROTOCOL.__dict__, "head": "ridge"})


def population_setup(kb, dataset, granularity="block", protocol=PROTOCOL, n=6, seed=0):
    """(space, fit split, `n` random networks, validation split) for population tests."""
    space = SearchSpace(kb, granularity)
    fit = protocol_split(dataset, "train", protocol.fit_images, seed=0)
    rng = np.random.default_rng(seed)
    archs = [space.decode(space.sample(rng)) for _ in range(n)] + [Architecture.of_source(kb, s) for s in kb.sources]
    return space, fit, archs, protocol_split(dataset, "val")


# Protocol variants both drivers must agree on (fields not named keep PROTOCOL's values).
VARIANTS = {
    "logistic+stitch+recalibrate": {},
    "ridge+stitch+source": {"head": "ridge", "bn": "source"},
    "logistic+plain+source": {"stitch": False, "bn": "source"},
    "ridge+plain+recalibrate": {"head": "ridge", "stitch": False},
    "logistic+stitch+from_junction": {"bn": "from_junction"},
    "tuned-stitches+ridge+source": {"stitch_steps": 2, "head": "ridge", "bn": "source", "stitch_images": 32},
}


def _both_paths(kb, dataset, protocol, chunk=4, group=None, carry=None, grouped_layout=False, extra=()):
    space, fit, archs, val = population_setup(kb, dataset, protocol=protocol, n=4)
    archs += list(extra)
    loop = Evaluator(kb, protocol, fit)
    one_by_one = [loop.evaluate(a, val) for a in archs]
    pe = PopulationEvaluator(space, protocol, fit, chunk_size=chunk, evaluator=loop, group=group, carry=carry,
                             grouped_layout=grouped_layout)
    return pe.evaluate(archs, val), one_by_one, [pe.slots(a) for a in archs]


# One ResNet-8-deep block per stage: no network reaches a stage's second slot of the block
# space's layout (depth 2 per stage). The second has a junction at stages 1 and 2, none at 3.
SHALLOW = (("cifar_resnet8/stem", "cifar_resnet8/stage1.block0", "cifar_resnet8/stage2.block0",
            "cifar_resnet8/stage3.block0"),
           ("cifar_resnet8/stem", "cifar_resnet14/stage1.block0", "cifar_resnet8/stage2.block0",
            "cifar_resnet8/stage3.block0"))

# How the fused program may run a chunk, each once, across the protocol variants (every variant
# at least once; one compiled program per case). `group`: None, the whole chunk as one vmap (a
# GPU's default); 1, each genotype alone (a CPU's); 2 of a chunk of 4, groups one after another.
# `carry` 2: the validation split's two batches moved through the network together. `shallow`:
# chunks of 2 that hold the two SHALLOW networks and ResNet-8 (`structure_order` puts them
# first), so whole chunks (group None) or single genotypes (group 1) skip slots and stitches.
# `grouped_layout`: the genotypes inside the channel axis instead of a vmap (`score_group`).
CASES = {
    "recalibrate, whole chunk, shallow": dict(variant="logistic+stitch+recalibrate", shallow=True),
    "ridge+stitch+source, groups of 2": dict(variant="ridge+stitch+source", group=2),
    "logistic+plain+source, whole chunk": dict(variant="logistic+plain+source"),
    "ridge+plain+recalibrate, batches carried": dict(variant="ridge+plain+recalibrate", carry=2),
    "from_junction, alone, batches carried, shallow": dict(variant="logistic+stitch+from_junction", group=1,
                                                           carry=2, shallow=True),
    "tuned stitches, whole chunk, shallow": dict(variant="tuned-stitches+ridge+source", shallow=True),
    "tuned stitches, alone, shallow": dict(variant="tuned-stitches+ridge+source", group=1, shallow=True),
    # convolution groups packed up to 64 channels (the two genotypes' 16- and 32-channel convolutions
    # as one group each); unpacked, the grouped layout counts what PyTorch counts (`tests/test_bench.py`)
    "from_junction, grouped layout, packed, shallow": dict(variant="logistic+stitch+from_junction", grouped_layout=64,
                                                           shallow=True),
}


@pytest.mark.parametrize("case", CASES)
def test_population_equals_one_by_one(tiny_kb, tiny_dataset, case):
    """The fused program and the per-module path are two drivers of one protocol: in fp32 they
    count exactly the same correct predictions, for every head, stitch and BN setting, and however
    the fused program runs a chunk (`CASES`): in groups (`by_group`: each group skipping what none
    of its genotypes needs, `chunk_presence`), with scored batches carried together, in the grouped
    layout (stitches used or not per genotype: its masks and conditionals), for fitted and tuned
    stitches. (The bench's fused fixture checks the scoring of fitted networks alone,
    `score_fitted`, against PyTorch.)"""
    how = dict(CASES[case])
    protocol = Protocol(**{**PROTOCOL.__dict__, **VARIANTS[how.pop("variant")]})
    shallow = how.pop("shallow", False)
    fused, one_by_one, slots = _both_paths(tiny_kb, tiny_dataset, protocol, chunk=2 if shallow else 4,
                                           extra=[Architecture(m) for m in SHALLOW] if shallow else (), **how)
    assert fused == one_by_one
    if shallow:  # the first chunk reaches no stage's second slot and has no junction
        first = [slots[i] for i in structure_order(slots)[:2]]
        assert not any(active[2::2].any() or junction.any() for _, active, junction in first)


def test_the_cases_cover_every_variant_and_way_of_running_a_chunk():
    assert {c["variant"] for c in CASES.values()} == set(VARIANTS)
    for key, values in (("group", {None, 1, 2}), ("carry", {None, 2}), ("grouped_layout", {False, 64})):
        assert {c.get(key, None if key != "grouped_layout" else False) for c in CASES.values()} == values, key
    assert {c.get("group") for c in CASES.values() if c.get("shallow")} == {None, 1}


def test_the_forward_pass_alone_counts_the_same_with_batches_carried(tiny_kb, tiny_dataset):
    """`score_fitted` (W1's program: published modules, identity stitches at junctions) counts the
    same with scored batches carried together as one at a time, each network as its own head."""
    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset, n=4)
    heads = [tiny_kb.module_params(f"{tiny_kb.record(a.modules[-1]).source}/head")["fc"] for a in archs]
    heads = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *heads)
    counts = []
    for carry in (1, 2):
        pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=len(archs), group=1, carry=carry)
        counts.append(pe.score_fitted(pe.stacked_slots(archs), pe.published_fits(archs), heads, pe.device_split(val)))
    assert counts[0].tolist() == counts[1].tolist() and counts[0].sum() > 0


def test_groups_divide_each_devices_share_of_the_chunk(tiny_kb, tiny_dataset):
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset, n=0)
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=12, group=8)
    assert [pe.group_of(n) for n in (12, 6, 3)] == [4, 2, 1]
    pe.group = None
    assert pe.group_of(12) == 12
    with pytest.raises(ValueError, match="positive"):
        PopulationEvaluator(space, PROTOCOL, fit, chunk_size=4, group=0)
    with pytest.raises(ValueError, match="groups of 4"):
        by_group(PROTOCOL, 4, lambda s, present: s, (np.zeros((6, 7)),) * 3)


@pytest.mark.parametrize("n,limit,multiple,size", [(64, 57, 1, 32), (256, 57, 1, 52), (256, 57, 8, 56), (12, 57, 1, 12),
                                                  (12, 8, 1, 6), (100, 50, 8, 40), (1, 57, 8, 8), (7, 3, 4, 4)])
def test_balanced_chunks_cover_the_population_with_the_least_padding(n, limit, multiple, size):
    from modulenet_jax.population import balanced_chunk

    """Equal chunks, a multiple of the devices times the group, within the memory's limit."""
    assert balanced_chunk(n, limit, multiple) == size
    assert size % multiple == 0 and size <= max(limit, multiple)


@pytest.mark.parametrize("carry, num_batches, k", [(8, 10, 5), (8, 2, 2), (8, 7, 7), (4, 7, 1), (1, 10, 1)])
def test_the_batches_carried_divide_the_split(carry, num_batches, k):
    assert divisor_at_most(num_batches, carry) == k


def test_batches_are_carried_on_a_gpu_only():
    """On a GPU as many batches as hold twice the fit images (the device session's 5,000
    validation images then go as 2 x 5 batches of 500); one at a time on a CPU or TPU."""
    protocol = Protocol(fit_images=2048, stitch_images=512, batch_size=500)
    assert batch_carry(protocol, "gpu") == 8 and divisor_at_most(10, 8) == 5
    assert batch_carry(protocol, "cpu") == batch_carry(protocol, "tpu") == 1
    assert batch_carry(Protocol(fit_images=100, stitch_images=50, batch_size=500), "gpu") == 1


def test_a_wide_group_carries_fewer_batches(tiny_kb, tiny_dataset, monkeypatch):
    """The batches a group carries take at most a quarter of the free memory: one genotype keeps
    the whole carry, a vmap over many genotypes is cut to fewer batches (never below one). Free
    memory is measured once, when the evaluator is made: the carry is a static argument of the
    compiled program, so a later measurement could recompile it."""
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset, n=1)
    evaluator = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=8, carry=8)
    one_batch = 2 * PROTOCOL.batch_size * evaluator.widest_output() * 4  # in and out, fp32, one genotype
    monkeypatch.setattr(PopulationEvaluator, "free_bytes", lambda self: 4 * 16 * one_batch)
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=8, carry=8, evaluator=evaluator.evaluator)
    assert (pe.carry_for(1), pe.carry_for(4), pe.carry_for(8), pe.carry_for(64)) == (8, 4, 2, 1)
    monkeypatch.setattr(PopulationEvaluator, "free_bytes", lambda self: pytest.fail("measured again"))  # once, at start
    assert pe.carry_for(64) == 1
    monkeypatch.setattr(PopulationEvaluator, "free_bytes", lambda self: None)  # a device that does not say
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=8, carry=8, evaluator=evaluator.evaluator)
    assert pe.carry_for(64) == 8


def test_a_search_population_is_not_padded_to_what_memory_holds(tiny_kb, tiny_dataset, monkeypatch):
    """With the chunk from memory (57 here), a population of 12 runs as one chunk of 12, 64 as two
    of 32 (in whole groups of 8 where asked); a chunk size given is kept as it is."""
    monkeypatch.setattr(PopulationEvaluator, "chunk_from_memory", lambda self: 57)
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset)
    one = jax.devices()[:1]
    assert PopulationEvaluator(space, PROTOCOL, fit, devices=one, largest=12).chunk_size == 12
    assert PopulationEvaluator(space, PROTOCOL, fit, devices=one, largest=64, group=8).chunk_size == 32
    assert PopulationEvaluator(space, PROTOCOL, fit, devices=one).chunk_size == 57
    assert PopulationEvaluator(space, PROTOCOL, fit, chunk_size=20, devices=one, largest=12).chunk_size == 20


def test_chunk_presence_names_the_slots_and_stitches_a_chunk_skips(tiny_kb, tiny_dataset):
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset, n=0)
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=2)
    slots = pe.stacked_slots([Architecture(m) for m in SHALLOW])
    some_active, some_junction = (np.asarray(v) for v in chunk_presence(PROTOCOL, slots))
    # slots: stem, (first, other) per stage
    assert some_active.tolist() == [True, True, False, True, False, True, False]
    assert some_junction.tolist() == [False, True, False, True, False, False, False]
    assert chunk_presence(Protocol(**{**PROTOCOL.__dict__, "stitch": False}), slots)[1] is None
    assert structure_order([pe.slots(Architecture.of_source(tiny_kb, s)) for s in ("cifar_resnet14",
                                                                                    "cifar_resnet8")]) == [1, 0]


def test_a_slot_runs_only_what_its_chunk_needs():
    """`when_reached` runs a slot's module only where some genotype of the chunk reaches it (a
    stage's first slot always), and the slot's `slot_gate` makes its stitch only where some
    genotype has a junction there (the stem never gates): the branches not taken are not
    executed, which is the point."""
    x = jnp.arange(4.0)
    ran = []

    def traced(name, value):
        jax.debug.callback(lambda: ran.append(name))
        return value

    module = jax.jit(lambda kind, active: when_reached(kind, (active, None), lambda: traced("module", 2 * x),
                                                       lambda: x), static_argnums=0)
    stitch = jax.jit(lambda kind, junction: gated(slot_gate(kind, (True, junction)),
                                                lambda: traced("stitch", x + 1), lambda: x), static_argnums=0)
    for run, kind, flag, out, runs in ((module, "other", False, x, []), (module, "other", True, 2 * x, ["module"]),
                                       (module, "first", False, 2 * x, ["module"]),
                                       (stitch, "other", False, x, []), (stitch, "first", True, x + 1, ["stitch"]),
                                       (stitch, "stem", False, x + 1, ["stitch"])):
        ran.clear()
        y = run(kind, jnp.bool_(flag))
        jax.effects_barrier()
        assert np.array_equal(y, out) and ran == runs, (kind, flag, ran)


@pytest.mark.parametrize("variant", ["logistic+stitch+from_junction", "ridge+stitch+source"])
def test_a_group_fitted_in_the_grouped_layout_equals_its_genotypes_fitted_side_by_side(tiny_kb, tiny_dataset, variant):
    """The fit pass in the grouped layout (`fit_modules` with `groups`: stitches solved on each
    genotype's channels, BatchNorm statistics per channel, recalibrated where each genotype's
    junctions say) gives each genotype the fits and head features the vmapped fit pass gives it,
    to fp32 rounding (the statistics' and the stitches' sums run in another order; a stitch, a
    least-squares solve, enlarges that by its Gram matrix's condition): with recalibration on
    the whole fit pass, and with published statistics and the head's feature batches."""
    from modulenet_jax.population import fit_chunk

    protocol = Protocol(**{**PROTOCOL.__dict__, **VARIANTS[variant]})
    space, fit, archs, _ = population_setup(tiny_kb, tiny_dataset, protocol=protocol, n=3)
    pe = PopulationEvaluator(space, protocol, fit, chunk_size=4)
    slots = tuple(jnp.asarray(a) for a in pe.stacked_slots(archs[:3] + [Architecture(SHALLOW[1])]))
    assert slots[2].any(axis=1).sum() >= 2 and not slots[1].all()  # junctions and skipped slots in the group
    run = jax.jit(fit_chunk, static_argnames=("layout", "protocol", "group", "grouped_layout"))
    grouped, side_by_side = (run(pe.layout, protocol, 4, pe.banks, slots, jnp.asarray(pe.evaluator.fit_images),
                                 grouped_layout=g) for g in (True, False))
    assert jax.tree_util.tree_structure(grouped) == jax.tree_util.tree_structure(side_by_side)
    for (path, g), v in zip(jax.tree_util.tree_leaves_with_path(grouped), jax.tree_util.tree_leaves(side_by_side)):
        tol = 2e-4 * np.abs(v).max() if ".stitch" in jax.tree_util.keystr(path) else 2e-5
        np.testing.assert_allclose(np.asarray(g), np.asarray(v), rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


def test_the_grouped_layout_transposes_only_its_input_and_its_features(tiny_kb, tiny_dataset):
    """What the grouped layout is for: in the lowered programs of a chunk, the vmapped form
    transposes activations around every convolution (between `[P, batch, h, w, C]` and the
    grouped convolution's `[batch, h, w, P·C]`); the grouped form, scoring, only the input
    images into the layout and the pooled features out of it (its stitches are grouped 1x1
    convolutions), and fitting besides only each junction's stitch images into the solve."""
    import re

    from modulenet_jax.population import fit_chunk, score_group, score_network

    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset, n=4)
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=4)
    slots = tuple(jnp.asarray(a) for a in pe.stacked_slots(archs[:4]))
    fits, present = pe.published_fits(archs[:4]), chunk_presence(PROTOCOL, slots)
    heads = {"kernel": jnp.zeros((4, 64, 10)), "bias": jnp.zeros((4, 10))}
    images, labels, valid = pe.device_split(val)
    B, N, S = PROTOCOL.batch_size, PROTOCOL.fit_images, PROTOCOL.stitch_images

    def vmapped():
        return jax.vmap(lambda s, f, h: score_network(pe.layout, PROTOCOL, pe.banks, s, f, h, images, labels, valid,
                                                      present))(slots, fits, heads)

    def grouped():
        return score_group(pe.layout, PROTOCOL, pe.banks, slots, fits, heads, images, labels, valid, present)

    def fitted(grouped_layout):
        return lambda: fit_chunk(pe.layout, PROTOCOL, 4, pe.banks, slots, jnp.asarray(pe.evaluator.fit_images),
                                 grouped_layout)

    def activation_transposes(f, batches):  # transposes of batches' activations, their rows flattened or not
        text = jax.jit(f).lower().as_text()
        operands = re.findall(r"stablehlo\.transpose %\S+, dims = \[[^\]]*\] : \(tensor<([^>]*)>", text)
        rows = {b * side * side for b in batches for side in (1, 8, 16, 32)}
        return ([o for o in operands if rows & {int(d) for d in o.split("x")[:-1]}],
                len(re.findall(r"stablehlo\.convolution.*\(tensor<[^>]*>, tensor<3x3x", text)))

    moved, convolutions = activation_transposes(grouped, [B])
    assert moved == [f"4x{B}x32x32x3xf32", f"{B}x4x64xf32"]
    moved, vmapped_convolutions = activation_transposes(vmapped, [B])
    assert vmapped_convolutions == convolutions and len(moved) >= 2 * convolutions, (len(moved), convolutions)
    moved, convolutions = activation_transposes(fitted(True), [N, S])
    solves = activation_transposes(fitted(True), [S])[0]  # the stitch images in the least-squares solves
    assert sorted(m for m in moved if m not in solves) == [f"4x{N}x32x32x3xf32", f"{N}x4x64xf32"] and solves
    moved, vmapped_convolutions = activation_transposes(fitted(False), [N, S])
    assert vmapped_convolutions == convolutions and len(moved) >= 2 * convolutions, (len(moved), convolutions)


def test_the_grouped_layout_needs_a_grouped_form_of_every_op(tiny_kb, tiny_dataset, monkeypatch):
    from modulenet_jax import grouped
    from modulenet_jax.population import FusionError

    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset, n=0)
    monkeypatch.setattr(grouped, "GROUPED_OPS", grouped.GROUPED_OPS - {"cifar_resnet.basic_block"})
    with pytest.raises(FusionError, match=r"no grouped form of \['cifar_resnet.basic_block'\]"):
        PopulationEvaluator(space, PROTOCOL, fit, chunk_size=2, grouped_layout=True)
    with pytest.raises(ValueError, match="True, False or the channels a packed convolution group may have"):
        PopulationEvaluator(space, PROTOCOL, fit, chunk_size=2, grouped_layout=-64)


def test_population_equals_one_by_one_with_resized_inputs(tiny_dataset):
    """`protocol.input_size`: 32 px images resized to the 40 px the sources were cut at, on both paths."""
    from modulenet_jax.knowledge import KnowledgeBase
    from tests.conftest import random_models

    kb = KnowledgeBase.build(random_models(), input_size=40)
    fused, one_by_one, _ = _both_paths(kb, tiny_dataset, Protocol(**{**QUICK.__dict__, "input_size": 40}))
    assert fused == one_by_one
    assert kb.record(kb.modules_of("cifar_resnet8")[0].id).input_resolution == 40


def test_the_fit_pass_runs_the_slots_its_chunk_reaches_and_no_further(tiny_dataset):
    """Three slots a stage (ResNet-20's): the fit pass runs a stage's further slots in a loop over the
    prefix its chunk reaches (`walk`'s `reached`), none, one of two or both, and counts what the
    per-module path counts; the slots past it keep the published params and no stitch."""
    from modulenet_jax.knowledge import KnowledgeBase
    from tests.conftest import random_models

    kb = KnowledgeBase.build(random_models((8, 20)))
    r8, r20 = "cifar_resnet8/", "cifar_resnet20/"
    blocks = [[f"stage{s}.block{i}" for i in range(3)] for s in (1, 2, 3)]
    two_deep = Architecture((r20 + "stem", *(r20 + b for stage in blocks for b in stage[:2])))
    mixed = Architecture((r8 + "stem", r20 + blocks[0][0], r20 + blocks[0][1], r8 + blocks[1][0],
                          *(r20 + b for b in blocks[2])))
    archs = [Architecture.of_source(kb, "cifar_resnet8"), two_deep, mixed, Architecture.of_source(kb, "cifar_resnet20")]
    space, fit, _, val = population_setup(kb, tiny_dataset, protocol=QUICK, n=0)
    loop = Evaluator(kb, QUICK, fit)
    pe = PopulationEvaluator(space, QUICK, fit, chunk_size=2, evaluator=loop)
    slots = [pe.slots(a) for a in archs]
    chunks = [[slots[i] for i in structure_order(slots)[k:k + 2]] for k in (0, 2)]
    reached = [reached_slots(pe.layout, QUICK, tuple(np.stack(m) for m in zip(*c))) for c in chunks]
    assert [list(r.values()) for r in reached] == [[1, 0, 2], [2, 2, 2]], reached  # of 2 per stage
    assert pe.evaluate(archs, val) == [loop.evaluate(a, val) for a in archs]
    first = tuple(np.stack(m) for m in zip(*chunks[0]))
    present, images = chunk_presence(QUICK, first), jnp.asarray(pe.evaluator.fit_images)
    _, fitted = jax.jit(jax.vmap(lambda s: fit_modules(pe.layout, QUICK, pe.banks, s, images, present)))(first)
    last = fitted["stages"][0]["other"]  # [genotype, slot]: the second further slot, reached by none
    idx = pe.layout.per_slot(first[0].T)["stages"][0]["other"][1]  # its module, per genotype
    published = jax.tree_util.tree_map(lambda a: a[idx], pe.banks["stages"][0]["other"]["params"])
    assert all(np.array_equal(a[:, 1], b) for a, b in zip(jax.tree_util.tree_leaves(last.params),
                                                          jax.tree_util.tree_leaves(published)))
    assert not any(np.any(a[:, 1]) for a in jax.tree_util.tree_leaves(last.stitch))


def test_population_in_bfloat16_stays_close_to_one_by_one(tiny_kb, tiny_dataset):
    """bf16 rounds differently in the two programs (fusion changes where values are rounded to
    bf16): the correct counts may differ, by at most 3 of 64 images per network and 2% of all
    here (random networks near chance: many images sit close to a tie between two classes)."""
    fused, one_by_one, _ = _both_paths(tiny_kb, tiny_dataset, Protocol(**{**QUICK.__dict__, "dtype": "bfloat16"}))
    diffs = [abs(f.correct - o.correct) for f, o in zip(fused, one_by_one)]
    assert max(diffs) <= 3 and sum(diffs) <= 0.02 * 64 * len(diffs), diffs
    assert [(f.params, f.flops) for f in fused] == [(o.params, o.flops) for o in one_by_one]


def test_tensorfloat32_reaches_every_convolution_of_both_drivers(tiny_kb, tiny_dataset, tmp_path):
    """`tensorfloat32` is fp32 with TF32 convolutions: every convolution either driver compiles
    asks for `HIGH` precision (XLA's TF32 on a GPU), none for `HIGHEST` (strict fp32), while the
    stitch solves and the head keep `HIGHEST`; on a CPU, which has no TF32, the two drivers still
    count exactly the same correct predictions."""
    protocol = Protocol(**{**QUICK.__dict__, "dtype": "tensorfloat32", "head_steps": 13})  # lowered here only
    jax.config.update("jax_dump_ir_to", str(tmp_path))
    try:
        fused, one_by_one, _ = _both_paths(tiny_kb, tiny_dataset, protocol)
    finally:
        jax.config.update("jax_dump_ir_to", "")
    assert fused == one_by_one
    programs = [f.read_text() for f in tmp_path.glob("*.mlir")]
    convolutions = [line for text in programs for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convolutions) > 10
    assert all("precision HIGH>" in c and "HIGHEST" not in c for c in convolutions), convolutions[0]
    solves = [line for text in programs for line in text.splitlines()  # the stitches' Gram matrices: sums over
              if "stablehlo.dot_general" in line and "x49152x" in line]  # 48 stitch images x 32 x 32 pixels
    assert solves and all("HIGHEST" in line for line in solves)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "tensorfloat32"])
@pytest.mark.parametrize("grouped_layout", [False, True], ids=["vmap", "grouped layout"])
def test_no_select_over_activations_where_exactness_allows(tiny_kb, tiny_dataset, dtype, grouped_layout):
    """A chunk's fit pass and scoring pass, each slot run for every genotype (no `present`),
    vmapped or in the grouped layout, move a genotype past its depth by a zeroed residual
    (`zoo.zeroed_residual`) and one without a junction through an identity stitch, not by a
    select over the activations (a memory pass of its own on a GPU); only under TF32, where the
    identity stitch would round the input, do the stitched slots select."""
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset, n=0)
    protocol = Protocol(**{**QUICK.__dict__, "dtype": dtype})
    pe = PopulationEvaluator(space, protocol, fit, chunk_size=2)
    archs = [Architecture(m) for m in SHALLOW]  # slots past their depth, a junction at some slots only
    slots, fits = pe.stacked_slots(archs), pe.published_fits(archs)
    head = {"kernel": jnp.zeros((2, 64, 10)), "bias": jnp.zeros((2, 10))}
    n = protocol.batch_size
    images = jnp.zeros((protocol.fit_images, 32, 32, 3), jnp.uint8)

    def fit_pass(slots):
        if grouped_layout:
            return fit_modules(pe.layout, protocol, pe.banks, slots, images, groups=2)
        return jax.vmap(lambda s: fit_modules(pe.layout, protocol, pe.banks, s, images))(slots)

    def scoring(slots, fits, head, x):
        with numerics(protocol):
            if grouped_layout:
                return group_logits(pe.layout, slots, group_fits(pe.layout, fits), head, (x,), None)
            return jax.vmap(lambda s, f, h, x: network_logits(pe.layout, s, inference_fits(pe.layout, f), h, x))(
                slots, fits, head, x)

    x = jnp.zeros((n, 32, 32, 2 * 3) if grouped_layout else (2, n, 32, 32, 3), protocol.jnp_dtype)
    for text in (jax.jit(fit_pass).lower(slots).as_text(), jax.jit(scoring).lower(slots, fits, head, x).as_text()):
        on_activations = [line for line in text.splitlines() if "stablehlo.select" in line and re.search(
            rf"tensor<(\d+x)*({n}|{protocol.fit_images}|{protocol.stitch_images})x\d+x\d+x\d+x", line)]
        assert bool(on_activations) == (dtype == "tensorfloat32"), on_activations


def test_slots_encode_depth_and_junctions(tiny_kb, tiny_dataset):
    space, fit, archs, _ = population_setup(tiny_kb, tiny_dataset, "run")
    pe = PopulationEvaluator(space, PROTOCOL, fit, chunk_size=2)
    assert pe.layout.depths == (2, 2, 2) and pe.layout.num_slots == 7
    idx, active, junction = pe.slots(Architecture.of_source(tiny_kb, "cifar_resnet8"))
    assert active.tolist() == [True, True, False, True, False, True, False]
    assert not junction.any()
    g = space.encode_source("cifar_resnet14")
    g[0] = 0
    _, active, junction = pe.slots(space.decode(g))
    assert active.all() and junction.tolist() == [False, True] + [False] * 5


def test_no_recompilation_across_generations(tiny_kb, tiny_dataset):
    # a protocol no other test lowers; the ridge head's program does not read head_steps, so XLA's
    # compiled program is the one_device_counts fixture's (from the persistent cache, when that ran first)
    protocol = Protocol(**{**QUICK.__dict__, "head_steps": 11})
    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset, n=10, protocol=protocol)
    pe = PopulationEvaluator(space, protocol, fit, chunk_size=4)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        # lowering to a new program happens on every compile, also when the persistent cache has it
        lambda event, *a, **k: compiles.append(event) if event == "/jax/core/compile/jaxpr_to_mlir_module_duration"
        else None)
    pe.evaluate(archs[:5], val)  # "generation 1": 5 networks -> two chunks of 4 (the last padded)
    first = len(compiles)
    assert first >= 1
    pe.evaluate(archs[5:], val)  # "generation 2": other networks, other depths, other junctions
    assert len(compiles) == first


def test_out_of_memory_splits_the_chunk(tiny_kb, tiny_dataset):
    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset)
    expected = PopulationEvaluator(space, QUICK, fit, chunk_size=2).evaluate(archs, val)  # what the split runs
    pe = PopulationEvaluator(space, QUICK, fit, chunk_size=8)
    real, sizes = pe.run_chunk, []

    def capped(slots, *data):  # a device that only fits chunks of 2
        sizes.append(len(slots[0]))
        if len(slots[0]) > 2:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123456 bytes")
        return real(slots, *data)

    pe.run_chunk = capped
    assert pe.evaluate(archs, val) == expected
    assert sizes[:3] == [8, 4, 2] and pe.chunk_size == 2
    pe.run_chunk = lambda *a: (_ for _ in ()).throw(RuntimeError("INVALID_ARGUMENT: something else"))
    with pytest.raises(RuntimeError, match="something else"):
        pe.evaluate(archs, val)


def test_a_chunk_lowered_is_the_program_evaluate_ran(tiny_kb, tiny_dataset):
    """`chunk_lowered` lowers what `evaluate` passes its chunk program: compiled after an
    evaluation, the executable comes from JAX's in-memory cache, which holds only that very
    program (no request reaches the persistent cache, nothing is compiled): what a device
    profile reads its ops' phases from, for free."""
    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset, protocol=QUICK, n=2)
    pe = PopulationEvaluator(space, QUICK, fit, chunk_size=4)
    pe.evaluate(archs[:3], val)  # one chunk, padded to 4
    seen = [[]]  # compilation-cache and compile events, per compile below

    def listener(event, *args, **kwargs):
        if "compilation_cache" in event or "backend_compile" in event:
            seen[-1].append(event)

    jax.monitoring.register_event_listener(listener)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        text = pe.chunk_lowered(archs[:3], val).compile().as_text()
        seen.append([])  # a control: a program never run in this process (a new function)
        jax.jit(lambda x: x * 3 + 1).lower(np.float32(1)).compile()
    finally:
        jax.monitoring.unregister_event_listener(listener)
        jax.monitoring.unregister_event_duration_listener(listener)
    assert seen[0] == [] and "/jax/compilation_cache/compile_requests_use_cache" in seen[1], seen
    assert "jit__evaluate_chunk" in text


@pytest.fixture(scope="module")
def one_device_counts(tiny_kb, tiny_dataset) -> str:
    """Correct counts of the multi-device tests' networks on this process's single device."""
    space, fit, archs, val = population_setup(tiny_kb, tiny_dataset, n=2)
    evs = PopulationEvaluator(space, QUICK, fit, chunk_size=4, devices=jax.devices()[:1]).evaluate(archs, val)
    return "RESULT " + json.dumps([e.correct for e in evs])


# What a subprocess runs first: this process's XLA settings (the compile cache and its own
# device count come in its environment, `_subprocess_env`).
_SUBPROCESS_PRELUDE = """
import json, sys
from modulenet_jax import cpu_runtime
cpu_runtime.configure()
import jax
"""


def _subprocess_env(devices: int) -> dict:
    from tests.conftest import COMPILE_CACHE_ENV

    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
            "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **COMPILE_CACHE_ENV}


_EVALUATE = """
from tests.conftest import random_models
from modulenet_jax.knowledge import KnowledgeBase
from tests.test_population import QUICK, population_setup
from modulenet_jax.population import PopulationEvaluator
import tests.conftest as c
kb = KnowledgeBase.build(random_models())
space, fit, archs, val = population_setup(kb, c.tiny_dataset.__wrapped__(), n=2)
evs = PopulationEvaluator(space, QUICK, fit, chunk_size=4).evaluate(archs, val)
print("RESULT " + json.dumps([e.correct for e in evs]))
"""


def _result(out: str) -> str:
    return [line for line in out.splitlines() if line.startswith("RESULT ")][-1]


@pytest.mark.xdist_group("one_device_counts")  # its fixture computed once
def test_sharded_equals_single_device(one_device_counts):
    """Four forced host devices, one network each, give the same fitness as one device, to the last bit (fp32)."""
    code = _SUBPROCESS_PRELUDE + "assert len(jax.devices()) == 4\n" + _EVALUATE
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_subprocess_env(4), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _result(r.stdout) == one_device_counts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.xdist_group("one_device_counts")  # its fixture computed once
def test_two_processes_equal_one_device(one_device_counts, tmp_path):
    """`jax.distributed` as on several hosts: two processes of two CPU devices each (gloo
    collectives) shard one population chunk over all four devices, and every process gets
    the fitness that one device computes alone, to the last bit (fp32). Process 1 starts its
    work 32 s after process 0, so process 0 waits at the results' gather longer than the 30 s of
    Gloo's rendezvous: `distributed.initialize` made the communicator while the two were in step."""
    code = _SUBPROCESS_PRELUDE + textwrap.dedent("""
        import time
        role, port = sys.argv[1], sys.argv[2]
        from modulenet_jax import distributed
        distributed.initialize(coordinator_address="127.0.0.1:" + port, num_processes=2, process_id=int(role))
        assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
        time.sleep(32 * int(role))
    """) + _EVALUATE
    port = str(_free_port())
    logs = [(tmp_path / f"process{role}.out", tmp_path / f"process{role}.err") for role in "01"]
    procs = [subprocess.Popen([sys.executable, "-u", "-c", code, role, port], cwd=ROOT, env=_subprocess_env(2),
                              text=True, stdout=out.open("w"), stderr=err.open("w"))
             for role, (out, err) in zip("01", logs)]
    codes = [p.wait(timeout=900) for p in procs]
    # each process's log on a failure: one waiting on the other shows only a barrier's timeout
    assert codes == [0, 0], "\n".join(f"process {i} exited {c}:\n{err.read_text()[:3000]}"
                                       for i, (c, (_, err)) in enumerate(zip(codes, logs)))
    assert [_result(out.read_text()) for out, _ in logs] == [one_device_counts] * 2


def test_a_population_smaller_than_a_group_is_not_padded_to_the_group(tiny_kb, tiny_dataset, monkeypatch):
    monkeypatch.setattr(PopulationEvaluator, "chunk_from_memory", lambda self: 57)
    space, fit, _, _ = population_setup(tiny_kb, tiny_dataset)
    one = jax.devices()[:1]
    assert PopulationEvaluator(space, PROTOCOL, fit, devices=one, largest=6, group=8).chunk_size == 6
