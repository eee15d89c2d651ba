"""`modulenet bench`'s machinery on a tiny knowledge base: JAX and the PyTorch baselines must
evaluate the very same networks (same correct counts), and the report must say what it measured."""

import json

import jax
import numpy as np
import pytest

from modulenet_jax.protocol import Protocol
from modulenet_jax.ranking import kendall
from modulenet_jax.space import Architecture

torch = pytest.importorskip("torch")
import types  # noqa: E402

from modulenet_jax.benchmarks import profile_summary, throughput, torch_baseline  # noqa: E402

pytestmark = pytest.mark.xdist_group("bench")  # module fixtures built once (make test: --dist loadgroup)

BENCH_PROTOCOL = Protocol(fit_images=128, stitch_images=64, batch_size=32, head_steps=20)


@pytest.fixture(scope="module")
def report(tiny_kb, tiny_dataset):
    protocol = Protocol(fit_images=128, stitch_images=64, batch_size=32, head_steps=20)
    return throughput.run(tiny_kb, tiny_dataset, protocol, granularity="block", val_size=32,
                          populations=(1, 2), dtypes=("float32", "bfloat16"), workloads=("W1", "W2"),
                          torch_modes=("eager", "compile-network"), torch_fold_modes=("eager",), torch_max_w1=2,
                          torch_max_w2=2, torch_max_network=1, strategy="loop",
                          paired=2, paired_rounds=2, log=lambda m: None)


def _rows(report, **match):
    return [r for r in report["results"] if all(r[k] == v for k, v in match.items())]


@pytest.fixture(scope="module")
def fused_run(tiny_kb, tiny_dataset, tmp_path_factory):
    """The accelerator path (`fused`: the chunk as one vmap, and in the grouped layout), W2 also
    timed phase by phase, on a CPU: the report and the reports checkpointed along the way. (One
    genotype at a time, group 1, is the same call with another group: `test_population` counts
    it against the per-module path, `test_above_groups_until_only_the_fastest_group_runs` times it.)"""
    protocol = Protocol(fit_images=128, stitch_images=64, batch_size=32, head_steps=20)
    checkpoints = []
    # W2's profile reads its ops' phases from the program that ran: as the device session does, op
    # names in the persistent cache's key, so that no program cached before they changed comes back
    keyed = jax.config.jax_compilation_cache_include_metadata_in_key
    jax.config.update("jax_compilation_cache_include_metadata_in_key", True)
    try:
        report = throughput.run(tiny_kb, tiny_dataset, protocol, granularity="block", val_size=32, populations=(2,),
                                dtypes=("float32",), torch_modes=("eager",), torch_max_w1=2, torch_max_w2=2,
                                strategy="fused", phase_population=2, groups=(None,), paired=2, paired_rounds=1,
                                profile_population=2, trace_dir=tmp_path_factory.mktemp("traces"),
                                group_widths=(64,), log=lambda m: None, checkpoint=checkpoints.append)
    finally:
        jax.config.update("jax_compilation_cache_include_metadata_in_key", keyed)
    return report, checkpoints


@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_jax_and_pytorch_count_the_same_correct_predictions(report, workload):
    """Strict fp32 on both sides: every PyTorch row (BatchNorm as it is and folded) counts what JAX counts."""
    impls = ("torch-eager", "torch-eager+fold") if workload == "W1" else ("torch-eager",)
    for population in (1, 2):
        jax_row, = _rows(report, workload=workload, impl="jax-loop", numerics="fp32-strict", population=population)
        for impl in impls:
            torch_row, = _rows(report, workload=workload, impl=impl, numerics="fp32-strict", population=population)
            assert len(jax_row["correct"]) == population == torch_row["networks_timed"]
            assert jax_row["correct"] == torch_row["correct"], impl


def test_whole_networks_compiled_count_what_eager_counts_one_graph_each(report):
    """`torch-compile-network` (W1 only): each network one graph, compiled in the warm-up call and
    reused by the timed one, at most `torch_max_network` networks (a larger population reuses the
    row), counting what JAX counts in strict fp32."""
    rows = _rows(report, impl="torch-compile-network")
    assert {(r["workload"], r["numerics"], r["population"], r["networks_timed"]) for r in rows} == {
        ("W1", "fp32-strict", 1, 1), ("W1", "bf16", 1, 1)}
    assert all(r["compiles"] >= 1 and r["recompiles"] == 0 for r in rows)
    jax_row, = _rows(report, workload="W1", impl="jax-loop", numerics="fp32-strict", population=1)
    assert _rows(report, impl="torch-compile-network", numerics="fp32-strict")[0]["correct"] == jax_row["correct"]


@pytest.mark.parametrize("workload", ["W1", "W2"])
def test_fused_path_counts_what_pytorch_counts_and_times_the_phases(fused_run, workload):
    """Each fused row (the chunk as one vmap, `jax-fused`, and in the grouped layout,
    `jax-grouped`, its convolutions packed too, `-w64`) counts what PyTorch counts, compiled once."""
    fused_report, checkpoints = fused_run
    torch_row, = _rows(fused_report, workload=workload, impl="torch-eager", numerics="fp32-strict", population=2)
    for fused in ("jax-fused", "jax-grouped", "jax-grouped-w64"):  # w64: 16-channel convolutions 2 at a time
        jax_row, = _rows(fused_report, workload=workload, numerics="fp32-strict", population=2,
                         impl=fused if workload == "W1" else f"{fused}/2")
        assert jax_row["correct"] == torch_row["correct"]
        assert jax_row["compiles"] >= 0 and jax_row["recompiles"] == 0  # the timed calls reuse the warm-up's programs
    if workload == "W1":  # the naive vmap probe: a speed reference, not read against PyTorch
        probe, = _rows(fused_report, workload="W1", impl="jax-probe", numerics="fp32-strict", population=2)
        grouped, = _rows(fused_report, workload="W1", impl="jax-probe-grouped", numerics="fp32-strict", population=2)
        assert probe["rate"] > 0 and len(probe["correct"]) == 2 and grouped["correct"] == probe["correct"]
        packed, = _rows(fused_report, workload="W1", impl="jax-probe-grouped-w64", numerics="fp32-strict")
        assert packed["correct"] == probe["correct"] and packed["tflops"] == pytest.approx(
            grouped["tflops"] * grouped["seconds"] / packed["seconds"])  # the networks' own FLOPs, not the zeros'
        assert not [s for s in throughput.speedups(fused_report) if s["impl"].startswith("jax-probe")]
    if workload == "W2":
        phases = {(p["impl"], p["numerics"]): p["seconds"] for p in fused_report["phases"]}
        for impl in ("jax-fused", "torch-eager"):
            assert set(phases[impl, "fp32-strict"]) == {"fit pass", "head", "score"}
        assert torch_row["phases"] == phases["torch-eager", "fp32-strict"]
        assert "W2 by protocol phase" in throughput.markdown(fused_report)
    # after each measurement, the report so far: the last one is the whole report
    assert [len(c["results"]) for c in checkpoints] == sorted(len(c["results"]) for c in checkpoints)
    assert checkpoints[-1]["results"] == fused_report["results"]


def test_rates_flops_and_the_dtype_comparison(report):
    w1, = _rows(report, workload="W1", impl="jax-loop", numerics="fp32-strict", population=2)
    assert w1["unit"] == "genotype-images/s" and w1["rate"] == pytest.approx(2 * 32 / w1["seconds"])
    assert w1["tflops"] > 0
    acc = {(a["workload"], a["population"]): a for a in throughput.dtype_accuracy(report)
           if a["impl"] == "jax-loop"}
    assert set(acc) == {("W1", 1), ("W1", 2), ("W2", 1), ("W2", 2)}
    bf16, = _rows(report, workload="W2", impl="jax-loop", dtype="bfloat16", population=2)
    fp32, = _rows(report, workload="W2", impl="jax-loop", dtype="float32", population=2)
    assert acc["W2", 2]["mean_change"] == pytest.approx(np.mean(bf16["correct"]) - np.mean(fp32["correct"]))
    # the ranking change the W2 target reads (tau >= 0.95): the two dtypes' counts of the same networks
    assert acc["W2", 2]["tau"] == pytest.approx(kendall(fp32["correct"], bf16["correct"]), nan_ok=True)
    assert np.isnan(acc["W2", 1]["tau"]) and "Kendall τ" in throughput.markdown(report)


def test_tensorfloat32_rows_are_read_against_tf32_only(tiny_kb, tiny_dataset):
    """A JAX `tensorfloat32` row is named `fp32-tf32` and read against PyTorch's TF32 rows only:
    on a CPU PyTorch has none (no TF32 there), and JAX counts what strict fp32 counts; the
    dtype table compares it with the strict row of the same networks."""
    protocol = Protocol(fit_images=128, stitch_images=64, batch_size=32, head_steps=20)
    report = throughput.run(tiny_kb, tiny_dataset, protocol, granularity="block", val_size=32, populations=(2,),
                            dtypes=("float32", "tensorfloat32"), workloads=("W1",), torch_modes=("eager",),
                            torch_fold_modes=(), torch_max_w1=2, strategy="loop", log=lambda m: None)
    tf32, = _rows(report, impl="jax-loop", dtype="tensorfloat32")
    strict, = _rows(report, impl="jax-loop", dtype="float32")
    assert tf32["numerics"] == "fp32-tf32" and tf32["correct"] == strict["correct"]
    assert {r["numerics"] for r in report["results"] if r["impl"].startswith("torch")} == {"fp32-strict"}
    assert {s["vs_numerics"] for s in throughput.speedups(report)} == {"fp32-strict"}
    tf32_change, = [a for a in throughput.dtype_accuracy(report) if a["numerics"] == "fp32-tf32"]
    assert tf32_change["mean_change"] == 0 and "| W1 | jax-loop | fp32-tf32 | 2 |" in throughput.markdown(report)


def test_above_groups_until_only_the_fastest_group_runs(tiny_kb, tiny_dataset):
    """Past `groups_until`, a fused row runs only in the group that was fastest at the largest
    population before (per workload and dtype): the costly large points for one curve."""
    protocol = Protocol(fit_images=128, stitch_images=64, batch_size=32, head_steps=20)
    report = throughput.run(tiny_kb, tiny_dataset, protocol, granularity="block", val_size=32, populations=(1, 2),
                            dtypes=("float32",), workloads=("W1",), torch_modes=(), strategy="fused",
                            groups=(None, 1), groups_until=1, log=lambda m: None)
    fused = [r for r in report["results"] if r["impl"].startswith("jax-fused")]
    at_1 = {r["group"]: r["rate"] for r in fused if r["population"] == 1}
    at_2 = [r["group"] for r in fused if r["population"] == 2]
    assert set(at_1) == {None, 1} and at_2 == [max(at_1, key=at_1.get)]


def test_fastest_group_reads_the_largest_population_of_its_own_rows():
    def row(workload, impl, dtype, population, rate, group):
        return throughput.Result(workload, impl, dtype, throughput.NUMERICS[dtype], population, population, 1.0, None,
                                 rate, "genotype-images/s", group=group)

    results = [row("W1", "jax-fused", "bfloat16", 8, 90.0, None), row("W1", "jax-fused-g8", "bfloat16", 8, 80.0, 8),
               row("W1", "jax-fused", "bfloat16", 64, 100.0, None), row("W1", "jax-fused-g8", "bfloat16", 64, 150.0, 8),
               row("W1", "jax-fused-g1", "bfloat16", 8, 500.0, 1),  # faster, but not measured at 64
               row("W1", "jax-fused", "float32", 64, 999.0, None), row("W2", "jax-fused-g1/64", "bfloat16", 64, 9.0, 1),
               row("W1", "torch-eager", "bfloat16", 64, 999.0, None)]
    assert throughput.fastest_group(results, "W1", "bfloat16", (None, 1, 8)) == (8,)
    assert throughput.fastest_group(results, "W2", "bfloat16", (None, 1, 8)) == (1,)
    assert throughput.fastest_group(results, "W2", "float32", (None, 1, 8)) == (None, 1, 8)  # nothing measured yet


def test_targets_read_the_fastest_rows_of_each_numerics():
    """Each throughput target from the rows that decide it: the fastest JAX protocol row (any
    group, any population; never the probe) against the fastest torch.compile row of the same
    numerics (folded or not), W2's Kendall tau from the bf16 and strict counts of the same networks."""
    def row(workload, impl, numerics, population, rate, correct=None):
        return {"workload": workload, "impl": impl, "numerics": numerics, "population": population, "rate": rate,
                "correct": correct, "networks_timed": population}

    results = [row("W1", "jax-fused", "bf16", 64, 4e5), row("W1", "jax-fused-g8", "bf16", 256, 1.2e6),
               row("W1", "jax-probe", "bf16", 256, 9e6), row("W1", "torch-compile", "bf16", 8, 1e5),
               row("W1", "torch-compile+fold", "bf16", 8, 2e5), row("W1", "torch-eager", "bf16", 8, 1e4),
               row("W1", "jax-fused", "fp32-strict", 64, 6e4), row("W1", "torch-compile", "fp32-strict", 8, 3e4),
               row("W2", "jax-fused-g8/64", "bf16", 64, 120.0, [5, 4, 3, 2]),
               row("W2", "jax-fused/64", "fp32-strict", 64, 30.0, [5, 4, 2, 3])]
    met = {t["target"]: t for t in throughput.targets({"results": results})}
    assert met["W1 bf16, genotype-images/s"]["measured"] == 1.2e6 and met["W1 bf16, genotype-images/s"]["met"]
    ratio = met["W1 bf16, JAX / torch.compile"]
    assert ratio["measured"] == pytest.approx(6.0) and ratio["met"] and "torch-compile+fold" in ratio["detail"]
    assert met["W1 fp32-strict, JAX / torch.compile"]["measured"] == pytest.approx(2.0)
    assert met["W1 fp32-strict, JAX / torch.compile"]["met"] is False
    assert met["W1 fp32-tf32, JAX / torch.compile"]["met"] is None  # not measured
    assert met["W2 bf16, genotypes/s"]["met"]
    tau = met["W2 bf16 against fp32-strict, Kendall τ of the counts"]  # other group, same networks
    assert tau["measured"] == pytest.approx(kendall([5, 4, 2, 3], [5, 4, 3, 2])) and tau["met"] is False


def test_speed_session_merges_the_reports_of_several_calls(report, fused_run, tmp_path):
    """Two sessions' reports (say W1 in one device call, W2 in the next) become one report with
    every row, phase, profile and note, written as the session writes its own."""
    import json

    from modulenet_jax.benchmarks import speed_session

    first, second = report, fused_run[0]
    paths = []
    for i, r in enumerate((first, second)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    speed_session.main(["--merge", *map(str, paths), "--out", str(tmp_path / "merged")])
    merged = json.loads((tmp_path / "merged" / "speed.json").read_text())
    assert merged["results"] == first["results"] + second["results"]
    assert merged["phases"] == first["phases"] + second["phases"] and merged["profiles"] == second["profiles"]
    assert merged["seconds"] == pytest.approx(first["seconds"] + second["seconds"], abs=0.1)
    assert "Targets" in (tmp_path / "merged" / "speed.md").read_text()
    with pytest.raises(ValueError, match="different machines"):
        throughput.merge([first, {**second, "device": "NVIDIA H200"}])
    flagged = {**second, "xla_flags": "--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE"}
    with pytest.raises(ValueError, match="different XLA_FLAGS"):
        throughput.merge([first, flagged])
    assert "XLA_FLAGS: `--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE`" in throughput.markdown(flagged)


def test_saved_files_name_the_device(report, tmp_path):
    out = throughput.save(report, tmp_path, "tiny")
    saved = json.loads((out / "tiny.json").read_text())
    assert saved["device"] == throughput.device_name() and saved["device"].startswith("CPU (")
    md = (out / "tiny.md").read_text()
    assert saved["device"] in md and "bf16 and TF32 against fp32-strict" in md and "Targets (set for one H100" in md
    assert (out / "tiny.png").stat().st_size > 0


def test_paired_w1_times_the_same_networks_both_ways(report):
    """The alternating W1 timing: one row per dtype, the same correct counts as the W1 rows
    (it raises if JAX and PyTorch disagree on any network), and its ratio from its own rates."""
    assert [p["dtype"] for p in report["paired"]] == ["float32", "bfloat16"]
    for p in report["paired"]:
        w1, = _rows(report, workload="W1", impl="torch-eager", numerics=p["numerics"], population=2)
        assert p["networks"] == 2 and p["rounds"] == 2 and p["correct"] == w1["correct"]
        assert p["ratio_min"] <= p["ratio_median"] <= p["ratio_max"] and p["jax_rate"] > 0
    md = throughput.markdown(report)
    assert "timed alternately" in md and "| W1 | jax-loop | fp32-strict | 2 |" in md
    assert "| W1 | jax-loop | bf16 | 2 | torch-eager+fold (P=2) | bf16 |" in md  # JAX rows read against same numerics


def test_paired_w1_on_the_fused_path(fused_run):
    """The fused program paired with PyTorch eager network by network counts what PyTorch counts
    (the timing raises otherwise) and says which JAX path it timed."""
    fused_report, _ = fused_run
    p, = fused_report["paired"]
    assert p["impl"] == "jax-fused" and p["networks"] == 2 and p["jax_rate"] > 0
    w1, = _rows(fused_report, workload="W1", impl="torch-eager", numerics="fp32-strict", population=2)
    assert p["correct"] == w1["correct"]
    assert "| jax-fused | fp32-strict | 2 | 1 |" in throughput.markdown(fused_report)


def test_fused_rows_are_profiled(fused_run):
    """At the profile population every fused row's call (the grouped layout's too, packed or
    not), and the grouped probe's, is traced and summarised by op kind."""
    fused_report, _ = fused_run
    titles = sorted(fused_report["profiles"])
    assert titles == sorted([f"{w} {impl} fp32-strict P=2" for w in ("W1", "W2")
                             for impl in ("jax-fused", "jax-grouped", "jax-grouped-w64")]
                            + ["W1 jax-probe-grouped fp32-strict P=2"])
    for summary in fused_report["profiles"].values():
        assert summary["device_seconds"] > 0 and summary["kinds"] and summary["calls"] == 1
        assert abs(sum(k["share"] for k in summary["kinds"]) - 1) < 1e-9
    assert "Device time by op kind" in throughput.markdown(fused_report)
    # W2's time by the protocol's phase, its HLO ops found in the program compiled again
    for title, summary in fused_report["profiles"].items():
        if title.startswith("W1"):
            assert "phases" not in summary
            continue
        phases = summary["phases"]
        assert {"fit_pass", "heads", "score"} <= set(phases) <= {"fit_pass", "heads", "score", "other",
                                                                  "unattributed", "other programs"}, title
        assert sum(phases.values()) == pytest.approx(summary["device_seconds"])
        assert phases.get("unattributed", 0) + phases.get("other programs", 0) < 0.05 * summary["device_seconds"]
    assert "By the protocol's phase" in throughput.markdown(fused_report)


def test_profile_summary_sums_device_time_by_op_kind():
    """Op kinds are names without XLA's instance numbers; device streams win over host events;
    shares add up; kinds past `top` are summed as `other`."""
    from modulenet_jax.benchmarks import profile_summary

    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 0, "args": {"name": "Stream #7(Compute)"}}]
    ops = [("loop_convolution_fusion.12", 300), ("loop_convolution_fusion.3", 100), ("copy.1", 50),
           ("input_reduce_fusion_7", 40), ("transpose.2", 10)]
    events = meta + [{"ph": "X", "pid": 1, "tid": 0, "name": n, "ts": 0, "dur": d} for n, d in ops]
    events.append({"ph": "X", "pid": 2, "tid": 0, "name": "host-side", "ts": 0, "dur": 10_000,
                   "args": {"hlo_op": "convolution.1"}})
    s = profile_summary.summarize(events, top=2)
    assert s["source"] == "device streams" and s["events"] == 5
    assert abs(s["device_seconds"] - 500e-6) < 1e-12
    assert [(k["kind"], k["count"]) for k in s["kinds"]] == [("loop_convolution_fusion", 2), ("copy", 1),
                                                             ("other (2 kinds)", 2)]
    assert [round(k["share"], 2) for k in s["kinds"]] == [0.8, 0.1, 0.1]
    host = profile_summary.summarize(events[1:3] + events[-1:])  # no device process: the HLO-op host events
    assert host["source"] == "host events of HLO ops" and host["kinds"][0]["kind"] == "convolution"
    assert "| `copy` | 0.050 | 10.0% | 1 |" in profile_summary.markdown({"W1": s})


def test_profile_summary_splits_device_time_by_phase():
    """With the phase of each HLO op of a module, each event's time goes to its op's phase; an op
    the module lacks is unattributed, an event of another module another program's."""
    from modulenet_jax.benchmarks import profile_summary

    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "Stream #13(Compute)"}}]

    def kernel(op, dur, module="jit__evaluate_chunk"):
        return {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": dur, "name": "k", "args": {"hlo_op": op,
                                                                                         "hlo_module": module}}

    events = meta + [kernel("cudnn-conv.3", 300), kernel("loop_add_fusion.2", 100), kernel("cudnn-conv.9", 50),
                     kernel("fusion.7", 40), kernel("fusion.1", 10, "jit_gathered"),
                     {"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 5, "name": "MemcpyD2H"}]
    ops = ("jit__evaluate_chunk", {"cudnn-conv.3": "fit_pass", "loop_add_fusion.2": "fit_pass",
                                   "cudnn-conv.9": "score", "fusion.1": "score"})
    s = profile_summary.summarize(events, op_phases=ops)
    assert s["phases"] == pytest.approx({"fit_pass": 400e-6, "score": 50e-6, "unattributed": 45e-6,
                                         "other programs": 10e-6})
    assert list(s["phases"]) == ["fit_pass", "score", "unattributed", "other programs"]  # largest first
    assert "phases" not in profile_summary.summarize(events)
    assert "fit pass 0.400 ms (79%), score 0.050 ms (10%)" in profile_summary.markdown({"W2": s})


def test_profile_summary_counts_a_gpus_stream_lines_once():
    """A GPU's trace repeats its kernels' time on derived `XLA Ops` and `XLA Modules` lines: only
    the stream lines count (kernels named by their HLO op), control flow never (it encloses its
    body); a device with no stream line (a TPU) counts its `XLA Ops` line."""
    from modulenet_jax.benchmarks import profile_summary

    def thread(tid, name):
        return {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid, "args": {"name": name}}

    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
            thread(1, "Stream #13(Compute)"), thread(2, "Stream #14(MemcpyD2H)"), thread(3, "XLA Ops"),
            thread(4, "XLA Modules")]
    kernels = [{"ph": "X", "pid": 1, "tid": 1, "ts": 0, "dur": 300, "name": "sm90_xmma_fprop_implicit_gemm",
                "args": {"hlo_op": "cudnn-conv.3"}},
               {"ph": "X", "pid": 1, "tid": 1, "ts": 300, "dur": 100, "name": "loop_add_fusion_2",
                "args": {"hlo_op": "loop_add_fusion.2"}},
               {"ph": "X", "pid": 1, "tid": 2, "ts": 400, "dur": 100, "name": "MemcpyD2H"}]
    derived = [{"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 300, "name": "cudnn-conv.3"},
               {"ph": "X", "pid": 1, "tid": 3, "ts": 300, "dur": 100, "name": "loop_add_fusion.2"},
               {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 400, "name": "while.1"},
               {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 300, "name": "cond.56.clone"},
               {"ph": "X", "pid": 1, "tid": 4, "ts": 0, "dur": 500, "name": "jit__score_chunk"}]
    gpu = profile_summary.summarize(meta + kernels + derived)
    assert gpu["source"] == "device streams" and gpu["events"] == 3
    assert abs(gpu["device_seconds"] - 500e-6) < 1e-12
    assert [(k["kind"], round(k["share"], 2)) for k in gpu["kinds"]] == [("cudnn-conv", 0.6), ("loop_add_fusion", 0.2),
                                                                          ("MemcpyD2H", 0.2)]
    tpu = profile_summary.summarize(meta[:1] + meta[3:] + derived)
    assert tpu["source"] == "device XLA Ops line" and tpu["events"] == 2  # `while`, `cond` enclose the others
    assert abs(tpu["device_seconds"] - 400e-6) < 1e-12


# -- torch_baseline --------------------------------------------------------------------------------

def _arch(kb):
    """A W1 network with some junctions after its stem, but not at every block."""
    return next(a for a in throughput.w1_networks(kb, 8, 0)
                if any(a.junctions(kb)[1:]) and not all(a.junctions(kb)[1:]))


def test_identity_stitches_only_at_junctions(tiny_kb):  # mutant: a stitch before every block
    runner = torch_baseline.TorchRunner(tiny_kb, "cpu", "fp32-strict")
    arch = _arch(tiny_kb)
    stitches = runner.identity_stitches(arch)
    assert [s is not None for s in stitches] == list(arch.junctions(tiny_kb)[1:])


def test_a_whole_network_graph_never_sees_one_tensor_twice(tiny_kb, tiny_dataset, monkeypatch):
    """`compile-network` compiles one graph per network and dynamo guards that its inputs do not
    alias: a network repeating a module gets copies at the later positions, made once (else torch 2.14
    raised a TypeError explaining the failed guard: the bench's P = 8 row on 2026-12-01)."""
    stem, block = tiny_kb.modules_of(next(iter(tiny_kb.sources)))[:2]
    arch = Architecture((stem.id, block.id, block.id))
    data = types.SimpleNamespace(labels=torch.zeros(4, dtype=torch.long))
    for compiled, distinct in (("network", True), (None, False)):
        runner = torch_baseline.TorchRunner(tiny_kb, "cpu", "fp32-strict", compiled=compiled)
        seen = []
        monkeypatch.setattr(runner, "features", lambda arch, w, st, d: seen.append(w) or torch.zeros(4, 16))
        for _ in range(2):
            runner.forward_correct(arch, [None, None], (torch.zeros(16, 10), torch.zeros(10)), data)
        w, again = seen
        ids = [id(t) for m in w for t in m]
        assert (len(set(ids)) == len(ids)) is distinct
        assert all(torch.equal(a, b) for a, b in zip(w[1], w[2]))
        assert ids == [id(t) for m in again for t in m]  # the copies are made once, not in every timed call


def test_fold_runner_scores_with_folded_weights(tiny_kb, tiny_dataset, monkeypatch):
    """`+fold` W1 rows run conv-with-bias (2 tensors per conv); W2 scoring always folds."""
    seen = []
    for fold_bn in (False, True):
        runner = torch_baseline.TorchRunner(tiny_kb, "cpu", "fp32-strict", fold_bn=fold_bn)
        real = runner.features
        monkeypatch.setattr(runner, "features", lambda arch, w, st, d, real=real: seen.append(
            [len(m) for m in w]) or real(arch, w, st, d))
        arch = _arch(tiny_kb)
        data = runner.resident(tiny_dataset.test.images[:8], tiny_dataset.test.labels[:8], 8)
        head = runner.head(throughput.source_head(tiny_kb, arch))
        runner.forward_correct(arch, runner.identity_stitches(arch), head, data)
    assert seen[0][0] == 5 and set(seen[0][1:]) == {10}  # BatchNorm as it is
    assert seen[1][0] == 2 and set(seen[1][1:]) == {4}  # folded
    # W2: the scoring pass (the last `features` call) runs folded weights
    seen.clear()
    runner = torch_baseline.TorchRunner(tiny_kb, "cpu", "fp32-strict")
    real = runner.features
    monkeypatch.setattr(runner, "features",
                        lambda arch, w, st, d: seen.append([len(m) for m in w]) or real(arch, w, st, d))
    fit = runner.resident(tiny_dataset.train.images[:128], tiny_dataset.train.labels[:128], 32)
    val = runner.resident(tiny_dataset.test.images[:32], tiny_dataset.test.labels[:32], 32)
    targets = torch_baseline.source_inputs_torch(tiny_kb, runner, fit, 64)
    runner.protocol_correct(arch, targets, BENCH_PROTOCOL, fit, val, tiny_dataset.num_classes)
    assert seen[-1][0] == 2 and set(seen[-1][1:]) == {4}


def test_calibration_stores_the_unbiased_variance_as_jax_does(tiny_kb):
    from modulenet_jax.zoo.layers import batch_stats

    stem = next(iter(tiny_kb.sources)) + "/stem"
    w = torch_baseline.module_weights(tiny_kb, stem, "cpu")
    x = torch.randn(1, 3, 2, 2).contiguous(memory_format=torch.channels_last)  # 4 values per channel: n/(n-1) = 4/3
    _, (_, mean, var, _, _) = torch_baseline.stem_calibrate(x, w)
    h = torch.nn.functional.conv2d(x, w[0], padding=1).permute(0, 2, 3, 1).numpy()
    jmean, jvar = batch_stats(h)
    np.testing.assert_allclose(mean.numpy(), np.asarray(jmean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), np.asarray(jvar), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("numerics, tf32", [("fp32-strict", False), ("fp32-tf32", True), ("bf16", False)])
def test_context_sets_the_tf32_flags_of_its_numerics_and_restores_them(tiny_kb, numerics, tf32):
    runner = torch_baseline.TorchRunner(tiny_kb, "cpu", numerics)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = not tf32
        with runner.context():
            assert torch.backends.cudnn.allow_tf32 is tf32 and torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is (not tf32) and torch.backends.cuda.matmul.allow_tf32 is (not tf32)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_clock_adds_up_each_phase_over_networks():
    phases = {}
    for _ in range(2):
        clock = torch_baseline.PhaseClock(lambda: None, phases)
        clock.t -= 1.0  # one second of "fit pass" per network
        clock("fit pass")
    assert phases["fit pass"] == pytest.approx(2.0, abs=0.05)


# -- throughput: counting, rates, FLOP/s -------------------------------------------------------------

def test_a_failing_row_stops_alone_and_logs_its_traceback(tiny_kb, tiny_dataset):
    """`Bench.attempt`: a row that raises is reported in one line, not tried again at larger
    populations, and the log gets the whole traceback; the other rows go on."""
    lines = []
    bench = throughput.Bench(tiny_kb, tiny_dataset, BENCH_PROTOCOL, "block", 32, 0, "loop", None, log=lines.append)
    ran = []

    def broken(archs, dtype, P):
        raise TypeError("'NoneType' object is not subscriptable\nsecond line")

    for P in (1, 8):
        bench.attempt(("W1 torch", "fp32-strict"), broken, [], "float32", P)
        bench.attempt(("W1 jax", "float32"), lambda archs, dtype, P: ran.append(P), [], "float32", P)
    assert bench.failed == ["W1 torch fp32-strict P=1: TypeError: 'NoneType' object is not subscriptable"]
    assert ran == [1, 8]
    assert len(lines) == 1 and lines[0].startswith("failed: W1 torch fp32-strict P=1")
    assert "Traceback (most recent call last)" in lines[0] and "in broken" in lines[0]


def test_graphs_split_warm_up_and_timed_compiles():
    runner = types.SimpleNamespace(compiles=lambda: 12)
    assert throughput.graph_counts(True, 5, 9, runner) == (4, 3)
    assert throughput.graph_counts(False, 5, 9, runner) == (None, None)


def test_w2_torch_phases_cover_the_timed_networks_only(report):
    for row in _rows(report, workload="W2", impl="torch-eager"):
        assert sum(row["phases"].values()) <= row["seconds"] * 1.02 + 1e-3


def test_w1_torch_rate_counts_the_networks_it_timed(tiny_kb, tiny_dataset):
    rep = throughput.run(tiny_kb, tiny_dataset, BENCH_PROTOCOL, granularity="block", val_size=32, populations=(2,),
                         dtypes=("float32",), workloads=("W1",), torch_modes=("eager",), torch_fold_modes=(),
                         torch_max_w1=1, strategy="loop", log=lambda m: None)
    row, = _rows(rep, impl="torch-eager")
    assert row["population"] == 2 and row["networks_timed"] == 1
    assert row["rate"] == pytest.approx(1 * 32 / row["seconds"])


def test_paired_timing_raises_where_pytorch_counts_otherwise(tiny_kb, tiny_dataset, monkeypatch):
    real = torch_baseline.TorchRunner.forward_correct
    monkeypatch.setattr(torch_baseline.TorchRunner, "forward_correct", lambda self, *a: real(self, *a) + 1)
    with pytest.raises(AssertionError, match="W1 paired: JAX counts"):
        throughput.run(tiny_kb, tiny_dataset, BENCH_PROTOCOL, granularity="block", val_size=32, populations=(1,),
                       dtypes=("float32",), workloads=("W1",), torch_modes=("eager",), torch_fold_modes=(),
                       torch_max_w1=1, strategy="loop", paired=1, paired_rounds=1, log=lambda m: None)


def test_paired_ratio_is_pytorch_time_over_jax_time(report):
    """Per network the median over rounds on each side; the ratio JAX's speed over PyTorch's
    (PyTorch's time over JAX's), network by network, then its median; the rates over all."""
    t_jax = np.array([[1.0, 2.0, 4.0], [3.0, 2.0, 4.0], [2.0, 9.0, 5.0]])  # rounds x networks: medians 2, 2, 4
    t_torch = np.array([[6.0, 1.0, 4.0], [5.0, 3.0, 2.0], [7.0, 3.0, 4.0]])  # medians 6, 3, 4: ratios 3, 1.5, 1
    f = throughput.paired_figures(t_jax, t_torch, images=100)
    assert f == {"jax_rate": pytest.approx(300 / 8), "torch_rate": pytest.approx(300 / 13),
                 "ratio_median": pytest.approx(1.5), "ratio_min": pytest.approx(1.0), "ratio_max": pytest.approx(3.0)}
    for p in report["paired"]:  # and the run's rows are these figures of its timings
        assert p["ratio_min"] * 0.999 <= p["jax_rate"] / p["torch_rate"] <= p["ratio_max"] * 1.001


def test_tflops_and_peak_fraction_of_the_numerics():
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3", "fp32-strict") == 67e12
    assert throughput.peak_flops("NVIDIA A100-SXM4-40GB", "bf16") == 312e12
    assert throughput.peak_flops("CPU (x)", "bf16") is None
    bench = types.SimpleNamespace(device="NVIDIA H100 80GB HBM3", results=[], log=lambda m: None)
    r = throughput.Result("W1", "jax-fused", "float32", "fp32-strict", 8, 8, 1.0, None, 1e6, "genotype-images/s")
    throughput.Bench.add(bench, r, 4e7)
    assert r.tflops == pytest.approx(40.0) and r.peak_fraction == pytest.approx(40e12 / 67e12)


def test_row_cap_and_budget_skip_and_say_so():
    logs = []
    bench = types.SimpleNamespace(budget_s=None, row_cap_s=10.0, t0=0.0, row_time={("W1", "x", "bf16"): 11.0},
                                  skipped=[], log=logs.append)
    assert throughput.Bench.skip(bench, ("W1", "x", "bf16"), "W1 x bf16 P=8")
    assert not throughput.Bench.skip(bench, ("W1", "y", "bf16"), "W1 y bf16 P=8")
    assert bench.skipped == ["W1 x bf16 P=8 (row cap)"]
    bench.budget_s = 5.0  # t0 = 0: long spent
    assert throughput.Bench.skip(bench, ("W1", "y", "bf16"), "W1 y bf16 P=8")
    assert bench.skipped[-1] == "W1 y bf16 P=8 (time budget)"


# -- throughput: reading a report -----------------------------------------------------------------

def _row(workload, impl, numerics, population, rate):
    return {"workload": workload, "impl": impl, "numerics": numerics, "population": population, "rate": rate,
            "correct": None, "networks_timed": population}


def test_speedups_pair_same_numerics_and_the_largest_smaller_population():
    res = [_row("W1", "jax-fused", "bf16", 64, 6400.0), _row("W1", "torch-eager", "bf16", 1, 100.0),
           _row("W1", "torch-eager", "bf16", 8, 200.0), _row("W1", "torch-eager", "fp32-strict", 8, 50.0)]
    sp = throughput.speedups({"results": res})
    assert [(s["vs"], s["vs_numerics"], s["vs_population"], s["speedup"]) for s in sp] == [
        ("torch-eager", "bf16", 8, pytest.approx(32.0))]


def test_targets_read_torch_compile_rows_and_then_the_fastest_pytorch_row():
    """As worded, against the fastest torch.compile row (per module or whole networks); then the same
    goal against the fastest PyTorch row of any mode: here eager, faster than compile."""
    res = [_row("W1", "jax-fused", "fp32-strict", 64, 6e4), _row("W1", "torch-compile", "fp32-strict", 8, 1e4),
           _row("W1", "torch-compile-network", "fp32-strict", 2, 1.5e4),
           _row("W1", "torch-eager", "fp32-strict", 8, 3e4), _row("W1", "torch-eager", "bf16", 8, 9e4)]
    t = {t["target"]: t for t in throughput.targets({"results": res})}
    compiled = t["W1 fp32-strict, JAX / torch.compile"]
    assert compiled["measured"] == pytest.approx(4.0) and compiled["met"]
    assert "torch-compile-network P=2" in compiled["detail"]
    best = t["W1 fp32-strict, JAX / fastest PyTorch"]
    assert best["measured"] == pytest.approx(2.0) and best["met"] is False and "torch-eager P=8" in best["detail"]


def test_merge_keeps_the_largest_validation_count():
    base = {"device": "d", "xla_flags": "", "seconds": 1.0, "results": [], "profiles": {}}
    merged = throughput.merge([{**base, "validation_images": 100}, {**base, "validation_images": 5000}])
    assert merged["validation_images"] == 5000 and merged["seconds"] == 2.0



def test_merge_drops_what_one_call_skipped_and_another_measured():
    """A session spread over device calls: the first call's budget skipped rows that the next
    call measured; the merged report lists as skipped only what no call measured."""
    base = {"device": "d", "xla_flags": "", "seconds": 1.0, "validation_images": 10, "profiles": {}, "phases": []}
    first = {**base, "results": [], "skipped": [
        "W1 jax-fused float32 P=64 (time budget)", "profile of W1 jax-fused fp32-strict P=64 (time budget)",
        "W2 jax-fused bfloat16 P=64 (time budget)", "W2 jax-fused phases bfloat16 P=8 (row cap)",
        "W2 torch-compile bf16 P=64 (time budget)", "W1 jax-probe float32 P=256 (time budget)"]}
    row = {"dtype": "float32", "numerics": "fp32-strict"}
    second = {**base, "skipped": [], "results": [
        {**row, "workload": "W1", "impl": "jax-fused", "population": 64},
        {"workload": "W2", "impl": "jax-fused/32", "dtype": "bfloat16", "numerics": "bf16", "population": 64},
        {"workload": "W2", "impl": "torch-compile", "dtype": "bfloat16", "numerics": "bf16", "population": 64},
        {**row, "workload": "W1", "impl": "jax-probe", "population": 64}],
        "phases": [{"impl": "jax-fused", "numerics": "bf16", "population": 8}],
        "profiles": {"W1 jax-fused fp32-strict P=64": {}}}
    merged = throughput.merge([first, second])
    assert merged["skipped"] == ["W1 jax-probe float32 P=256 (time budget)"]

# -- profile_summary ------------------------------------------------------------------------------

def test_op_kind_strips_underscore_numbers_and_clones():
    assert profile_summary.op_kind("input_reduce_fusion_7") == "input_reduce_fusion"
    assert profile_summary.op_kind("loop_add_fusion.2.clone") == "loop_add_fusion"


def test_call_events_enclose_their_body_and_are_left_out():
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:TPU:0"}},
            {"ph": "M", "name": "thread_name", "pid": 1, "tid": 3, "args": {"name": "XLA Ops"}}]
    ev = [{"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 100, "name": "call.4"},
          {"ph": "X", "pid": 1, "tid": 3, "ts": 0, "dur": 100, "name": "fusion.1"}]
    s = profile_summary.summarize(meta + ev)
    assert [k["kind"] for k in s["kinds"]] == ["fusion"] and s["events"] == 1


def test_a_device_cpu_process_is_not_device_time():
    meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:CPU:0"}}]
    ev = [{"ph": "X", "pid": 1, "tid": 0, "ts": 0, "dur": 500, "name": "ThreadpoolListener"},
          {"ph": "X", "pid": 1, "tid": 0, "ts": 0, "dur": 100, "name": "conv", "args": {"hlo_op": "convolution.3"}}]
    s = profile_summary.summarize(meta + ev)
    assert s["source"] == "host events of HLO ops" and [k["kind"] for k in s["kinds"]] == ["convolution"]


# -- speed_session --------------------------------------------------------------------------------

def test_speed_session_defaults_budget_and_row_cap(tmp_path, monkeypatch):
    import jax

    from modulenet_jax import data
    from modulenet_jax.benchmarks import prepare_device_bundle, speed_session

    seen = {}
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    monkeypatch.setattr(prepare_device_bundle, "load_kb", lambda path: "kb")
    monkeypatch.setattr(data, "load_dataset", lambda path: "data")
    monkeypatch.setattr(throughput, "run", lambda *a, **kw: seen.update(kw) or {})
    monkeypatch.setattr(throughput, "save", lambda *a: None)
    monkeypatch.setattr(throughput, "markdown", lambda r: "")
    speed_session.main(["--kb", "k", "--data", "d", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")])
    assert seen["budget_s"] == 400 and seen["row_cap_s"] == 45
    assert seen["groups"] == (None,)  # the chunk as one vmap: the fastest group on an H200


def test_the_device_script_imports_without_what_the_device_image_lacks():
    """The GPU image has no ml_collections, pymoo or TFDS (the first H200 call of the device
    script failed on ml_collections): the script's modules import without them, the package
    loading each public name's module only when it is used; every public name resolves."""
    import subprocess
    import sys
    from pathlib import Path

    import modulenet_jax

    code = "\n".join([
        "import sys",
        "class Lacking:",
        "    def find_spec(self, name, path=None, target=None):",
        "        if name.split('.')[0] in ('ml_collections', 'pymoo', 'tensorflow_datasets', 'tensorflow'):",
        "            raise ImportError('not on the device image: ' + name)",
        "sys.meta_path.insert(0, Lacking())",
        "import benchmarks.speed_session, benchmarks.throughput, benchmarks.torch_baseline",
        "from benchmarks.prepare_device_bundle import load_kb",
        "from modulenet_jax.data import load_dataset",
        "import modulenet_jax",
        "assert modulenet_jax.Protocol.__module__ == 'modulenet_jax.protocol'",
    ])
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(getattr(modulenet_jax, name) is not None for name in modulenet_jax.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        modulenet_jax.Nope  # noqa: B018
