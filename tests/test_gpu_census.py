"""`benchmarks/gpu_census.py` reads optimized HLO: kernels counted as often as they run, their
bytes and the convolutions' FLOPs right on known programs; `score_lowered`'s program (what the
census compiles for a GPU) counts what `score_fitted` counts; without the CUDA plugin, one line."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from modulenet_jax.benchmarks import gpu_census, throughput
from modulenet_jax.data import fit_split, protocol_split
from modulenet_jax.population import PHASES, PopulationEvaluator, on_mesh, reached_scope
from modulenet_jax.protocol import Protocol
from modulenet_jax.space import SearchSpace

# quick to compile: no stitch, the ridge head
QUICK = Protocol(fit_images=64, stitch_images=32, batch_size=32, stitch=False, head="ridge", bn="source")

# A cuDNN convolution line as XLA's H200 compile of W1 writes it (8 genotypes grouped, bf16).
GPU_MODULE = """HloModule jit_score, is_scheduled=true

ENTRY %main.2 (x.1: bf16[500,32,32,128], w.1: bf16[128,3,3,16]) -> bf16[500,32,32,128] {
  %x.1 = bf16[500,32,32,128]{3,2,1,0} parameter(0)
  %w.1 = bf16[128,3,3,16]{3,2,1,0} parameter(1)
  %cudnn-conv.95 = (bf16[500,32,32,128]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %w.1), window={size=3x3 pad=1_1x1_1}, \
dim_labels=b01f_o01i->b01f, feature_group_count=8, custom_call_target="__cudnn$convForward"
  ROOT %get-tuple-element.3 = bf16[500,32,32,128]{3,2,1,0} get-tuple-element(%cudnn-conv.95), index=0
}
"""


# A slice fusion (the element converted, then sliced: computed for the slice only) and an in-place
# update of a carried buffer, as XLA's GPU programs hold them.
SLICED_MODULE = """HloModule jit_sliced, is_scheduled=true

%fused_slice (param_0: bf16[1000,16]) -> f32[1,16] {
  %param_0 = bf16[1000,16]{1,0} parameter(0)
  %convert.1 = f32[1000,16]{1,0} convert(%param_0)
  ROOT %slice.1 = f32[1,16]{1,0} slice(%convert.1), slice={[0:1], [0:16]}
}

%fused_update (param_0.1: f32[100,4], param_1: f32[4], param_2: s32[]) -> f32[100,4] {
  %param_0.1 = f32[100,4]{1,0} parameter(0)
  %param_1 = f32[4]{0} parameter(1)
  %bitcast.1 = f32[1,4]{1,0} bitcast(%param_1)
  %param_2 = s32[] parameter(2)
  %constant.1 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = f32[100,4]{1,0} dynamic-update-slice(%param_0.1, %bitcast.1, %param_2, %constant.1)
}

ENTRY %main (x: bf16[1000,16], buf: f32[100,4], v: f32[4], i: s32[]) -> (f32[1,16], f32[100,4]) {
  %x = bf16[1000,16]{1,0} parameter(0)
  %buf = f32[100,4]{1,0} parameter(1)
  %v = f32[4]{0} parameter(2)
  %i = s32[] parameter(3)
  %loop_slice_fusion = f32[1,16]{1,0} fusion(%x), kind=kLoop, calls=%fused_slice
  %loop_dynamic_update_slice_fusion = f32[100,4]{1,0} fusion(%buf, %v, %i), kind=kLoop, calls=%fused_update
  ROOT %tuple = (f32[1,16]{1,0}, f32[100,4]{1,0}) tuple(%loop_slice_fusion, %loop_dynamic_update_slice_fusion)
}
"""


def test_a_slice_moves_what_it_keeps_and_an_in_place_update_what_it_writes():
    rows = {r["kernel"]: r["bytes"] for r in gpu_census.census(SLICED_MODULE)}
    assert rows["fusion:loop_slice_fusion"] == 16 * 2 + 16 * 4  # 16 bf16 read (of 16,000), 16 f32 written
    assert rows["fusion:loop_dynamic_update_slice_fusion"] == 4 * 4 + 4 + 4 * 4  # update and index in, update out


def test_a_loop_counts_its_body_trip_count_times_its_condition_where_unknown_and_a_conditional_its_true_branch():
    x = jnp.zeros(1000)
    looped = jax.jit(lambda x: lax.fori_loop(0, 5, lambda i, x: jnp.sin(x) * 2, x)).lower(x).compile().as_text()
    rows = {r["kernel"]: r for r in gpu_census.census(looped)}
    body = [r for r in rows.values() if r["bytes"] == 5 * 2 * 4000]  # f32[1000] in and out, five times
    assert len(body) == 1 and body[0]["runs"] == 5, rows
    assert not any("compare" in k for k in rows), rows  # the trip count is known: no condition runs
    searched = jax.jit(lambda x: lax.while_loop(lambda x: x.sum() < 10.0, lambda x: x + 1, x))
    searched = searched.lower(x).compile().as_text()
    rows = gpu_census.census(searched)
    condition = [r for r in rows if r["runs"] == 2]  # x summed and compared: once true, once false
    assert sum(r["bytes"] for r in condition) >= 2 * 4000 and {r["runs"] for r in rows} == {1, 2}, rows
    branched = jax.jit(lambda p, x: lax.cond(p, lambda x: jnp.sin(x) * 3, lambda x: jnp.cos(x[:10]).sum() * x,
                                             x)).lower(True, x).compile().as_text()
    rows = gpu_census.census(branched)
    assert any(r["bytes"] == 2 * 4000 for r in rows), rows  # the true branch: x in, sin(x) * 3 out
    assert not any("reduce" in r["kernel"] for r in rows), rows  # the false branch's sum is not counted


def test_a_loop_over_the_slots_a_chunk_reaches_counts_the_trips_it_is_told():
    """XLA does not know how many slots a chunk reaches (`population.walk`'s loop, under its
    `reached_scope`): the census counts its body as often as `trips` says, other loops as before."""
    def reached(x, n):
        with jax.named_scope(reached_scope(1)):
            return lax.fori_loop(0, n, lambda i, x: jnp.sin(x) * 2, x)

    for program, x in ((reached, jnp.zeros(1000)), (jax.vmap(reached, in_axes=(0, None)), jnp.zeros((1, 1000)))):
        text = jax.jit(program).lower(x, 3).compile().as_text()

        def body_runs(trips, text=text):
            rows = gpu_census.census(text, trips=trips)
            return [r["runs"] for r in rows if r["runs"] and r["bytes"] == r["runs"] * 2 * 4000]  # f32[1000] in, out

        assert body_runs(None) == [1] and body_runs({reached_scope(0): 9}) == [1]
        assert body_runs({reached_scope(1): 7}) == [7] and body_runs({reached_scope(1): 0}) == []


def test_every_instruction_that_can_run_has_the_phase_of_its_scope_or_of_what_runs_it():
    """`instruction_phases`: an op takes the named scope in its op name, else (a loop's condition,
    a copy XLA adds) the phase of the loop, conditional or call it runs in; both branches of a
    conditional and a loop's condition are read (a profile sees whichever ran)."""
    def program(p, x):
        with jax.named_scope("fit_pass"):
            x = lax.fori_loop(0, 3, lambda i, x: jnp.sin(x) * 2, x)
        with jax.named_scope("score"):
            x = lax.cond(p, lambda x: jnp.cos(x) * 3, lambda x: jnp.exp(x[:10]).sum() * x, x)
        return x * 5

    compiled = jax.jit(program).lower(True, jnp.zeros(1000)).compile().as_text()
    module, phases = gpu_census.instruction_phases(compiled, PHASES)
    assert module == compiled.split()[1].rstrip(",") and module.startswith("jit_program")
    comps, entry = gpu_census.computations(compiled)
    ran = {m.group(1): (comp, m.group(3)) for comp, m, _, _ in gpu_census.instructions(comps, entry, every_branch=True)}
    assert set(phases) == set(ran)
    whiles = [name for name, (_, op) in ran.items() if op == "while"]
    conditionals = [name for name, (_, op) in ran.items() if op == "conditional"]
    assert [phases[w] for w in whiles] == ["fit_pass"] and [phases[c] for c in conditionals] == ["score"]
    by_computation = collections.defaultdict(set)
    for name, (comp, op) in ran.items():
        by_computation[comp].add(phases[name])
    assert {p for comp, ps in by_computation.items() if comp != entry for p in ps} == {"fit_pass", "score"}
    reduce_ops = [name for name, (comp, op) in ran.items() if "reduce" in name or op == "reduce"]
    assert reduce_ops and all(phases[n] == "score" for n in reduce_ops)  # the false branch's sum
    assert "other" in {phases[name] for name, (comp, _) in ran.items() if comp == entry}  # x * 5


# A command buffer as XLA's GPU compiler writes one: consecutive kernels moved into a computation
# of their own, run by a call without an op name (a profile shows one event for it).
COMMAND_BUFFER_MODULE = """HloModule jit__evaluate_chunk, is_scheduled=true

%fused_add (param_0: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  ROOT %add.1 = f32[4]{0} add(%param_0, %param_0)
}

%command_buffer (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  %loop_add_fusion.1 = f32[4]{0} fusion(%p0), kind=kLoop, calls=%fused_add, \
metadata={op_name="jit(_evaluate_chunk)/fit_pass/add"}
  ROOT %loop_add_fusion.2 = f32[4]{0} fusion(%loop_add_fusion.1), kind=kLoop, calls=%fused_add, \
metadata={op_name="jit(_evaluate_chunk)/fit_pass/while/body/add"}
}

%command_buffer.1 (p1: f32[4]) -> f32[4] {
  %p1 = f32[4]{0} parameter(0)
  %loop_add_fusion.3 = f32[4]{0} fusion(%p1), kind=kLoop, calls=%fused_add, \
metadata={op_name="jit(_evaluate_chunk)/fit_pass/add"}
  ROOT %loop_add_fusion.4 = f32[4]{0} fusion(%loop_add_fusion.3), kind=kLoop, calls=%fused_add, \
metadata={op_name="jit(_evaluate_chunk)/score/add"}
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %call.4 = f32[4]{0} call(%x), to_apply=%command_buffer
  ROOT %call.5 = f32[4]{0} call(%call.4), to_apply=%command_buffer.1
}
"""


def test_a_command_buffer_has_the_phase_of_the_kernels_it_runs():
    module, phases = gpu_census.instruction_phases(COMMAND_BUFFER_MODULE, PHASES)
    assert module == "jit__evaluate_chunk"
    assert phases == {"call.4": "fit_pass", "command_buffer": "fit_pass", "loop_add_fusion.1": "fit_pass",
                      "loop_add_fusion.2": "fit_pass", "call.5": "other", "loop_add_fusion.3": "fit_pass",
                      "loop_add_fusion.4": "score"}  # a buffer of two phases keeps the phase around it


def test_a_cudnn_convolution_counts_its_bytes_and_flops():
    row, = gpu_census.census(GPU_MODULE)
    out = 500 * 32 * 32 * 128
    moved = 2 * (2 * out + 128 * 9 * 16)
    assert row == {"kernel": "__cudnn$convForward", "runs": 1, "bytes": moved, "flops": 2 * out * 9 * 16,
                   "phases": {"other": moved}}  # each output: 3x3 x 16 channels of its group
    s = gpu_census.summary([row], 4000, bandwidth=1e12, peak=1e15)
    assert s["cudnn_share"] == 1 and s["convolutions"] == {"__cudnn$convForward": 1}
    assert s["hbm_bound"] == pytest.approx(4000 * 1e12 / row["bytes"])
    assert s["roofline"] == pytest.approx(4000 / max(row["bytes"] / 1e12, row["flops"] / 1e15))
    with pytest.raises(ValueError, match="no ENTRY"):
        gpu_census.census("HloModule nothing\n")


def test_the_lowered_scoring_program_counts_what_score_fitted_counts(tiny_kb, tiny_dataset):
    bench = throughput.Bench(tiny_kb, tiny_dataset, QUICK, "block", 32, 0, "fused", None, log=lambda m: None)
    pe, scored = bench.w1_fused("float32")
    slots, fits, heads = bench.w1_fitted(pe, throughput.w1_networks(tiny_kb, 2, 0))
    compiled = pe.score_lowered(slots, fits, heads, scored, pe.mesh, "cpu", pe.carry).compile()
    per_genotype = jax.tree_util.tree_map(lambda a: on_mesh(pe.mesh, a, True), (tuple(slots), fits, heads))
    correct, finite = compiled(pe.banks, *per_genotype, *scored)
    assert bool(np.all(finite))
    np.testing.assert_array_equal(np.asarray(correct), pe.score_fitted(slots, fits, heads, scored))


def test_the_lowered_protocol_program_counts_what_a_chunk_run_counts(tiny_kb, tiny_dataset):

    space = SearchSpace(tiny_kb, "block")
    pe = PopulationEvaluator(space, QUICK, fit_split(tiny_dataset, QUICK, 0), chunk_size=2)
    slots = pe.stacked_slots(throughput.w2_networks(space, 2, 0))
    scored = pe.device_split(protocol_split(tiny_dataset, "val", 32))
    # op names, which the census reads phases from, are not part of the persistent cache's key: a
    # program cached before they changed would come back with its old ones
    keyed = jax.config.jax_compilation_cache_include_metadata_in_key
    jax.config.update("jax_compilation_cache_include_metadata_in_key", True)
    try:
        compiled = pe.evaluate_lowered(slots, scored, pe.mesh, "cpu", pe.carry).compile()
    finally:
        jax.config.update("jax_compilation_cache_include_metadata_in_key", keyed)
    fit_x, fit_y = (on_mesh(pe.mesh, np.asarray(a), False) for a in (pe.evaluator.fit_images, pe.evaluator.fit_labels))
    correct, finite = compiled(pe.banks, tuple(on_mesh(pe.mesh, a, True) for a in slots), fit_x, fit_y, *scored)
    expected, expected_finite = pe.run_chunk(slots, fit_x, fit_y, scored)
    np.testing.assert_array_equal(np.asarray(correct), expected)
    np.testing.assert_array_equal(np.asarray(finite), expected_finite)
    # its kernels by the protocol's phase (named scopes in the op names): every byte in one phase,
    # the convolutions in the fit pass and the scoring, none in the heads
    rows = gpu_census.census(compiled.as_text(), PHASES)
    s = gpu_census.summary(rows, 2, bandwidth=1e12, peak=1e15)
    assert sum(s["phases"].values()) == s["bytes"] and {"fit_pass", "heads", "score"} <= set(s["phases"]), s
    convolutions = [r for r in rows if "convolution" in r["kernel"]]
    assert convolutions and all(set(r["phases"]) <= {"fit_pass", "score"} for r in convolutions), rows


def test_without_the_cuda_plugin_it_says_what_to_install(monkeypatch, capsys, tmp_path):
    if gpu_census.cuda_plugin_installed():
        pytest.skip("JAX's CUDA plugin is installed here")
    for name in ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_SKIP_CUDA_CONSTRAINTS_CHECK"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    with pytest.raises(SystemExit) as exit_info:
        gpu_census.main(["--kb", str(tmp_path / "kb.npz"), "--data", str(tmp_path / "d.npz")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'jax[cuda12]==" in err[0], err


def test_a_layout_is_vmapped_grouped_or_grouped_to_a_width(capsys, tmp_path):
    assert [gpu_census.grouped_value(gpu_census.layout_setting(n)) for n in ("vmapped", "grouped", "grouped-w64")] \
        == [False, True, 64]
    with pytest.raises(SystemExit) as exit_info:
        gpu_census.main(["--kb", str(tmp_path / "kb.npz"), "--data", str(tmp_path / "d.npz"), "--layouts", "packed"])
    assert exit_info.value.code == 2 and "a layout is vmapped, grouped or grouped-wW" in capsys.readouterr().err
