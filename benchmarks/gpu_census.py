"""What XLA makes of the fused programs (W1's scoring, W2's whole protocol) for an NVIDIA card, read
on a machine without one.

    python -m venv /tmp/cuda && /tmp/cuda/bin/pip install "jax[cuda12]==<this jax>" flax optax \
        orbax-checkpoint ml_collections scipy pillow rich matplotlib && /tmp/cuda/bin/pip install --no-deps -e .
    /tmp/cuda/bin/python -m modulenet_jax.benchmarks.gpu_census --kb runs/device/kb.npz \
        --data runs/device/cifar10.npz --out benchmarks/results --name nvidia-h200-census

XLA's own GPU compiler (the CUDA plugin of this JAX release, no device needed) compiles the
programs `modulenet bench` times as W1 (`PopulationEvaluator.score_lowered`: P random ResNet-56
shaped networks, 5,000 validation images in batches of 500, the batches carried as on a GPU) and
W2 (`evaluate_lowered`: a chunk of P random networks of the space through the whole protocol) for
the card's target description (`TARGETS`), in each layout and dtype asked. Without a device
there is no autotuning: cuDNN's heuristics pick the convolution algorithms, but which ops XLA
fuses into one kernel, which it hands to cuDNN with their bias, residual and ReLU, and what is
left as passes of their own over the activations is decided before that, and is what this reads.

The census lists every kernel the program launches per call (`census`: each instruction of the
entry and of what its loops and conditionals call, times the loops' trip counts; a conditional's
true branch, the slot run and its stitch applied, so every slot counts a stitch: more than W1's
networks have, which stitch at junctions only; a loop whose trip count XLA does not know, such as
L-BFGS's line search, once, its condition twice, except W2's loops over the slots its chunk
reaches, counted as often as the chunk's networks reach them) and the bytes it reads and writes,
its operands and outputs as the program types them, except where a fusion slices an operand (it
reads the slice) or updates one in place (it writes the update: `fusion_traffic`). `summary`'s
`hbm_bound` divides those bytes by the card's bandwidth: the rate at which the program would run if
every kernel moved its operands and outputs through HBM once at full speed, an estimate to compare
programs by, not a measurement (caches can beat it, launch gaps and slow kernels fall short of it);
its `roofline` also holds each kind of convolution call to its FLOPs at the dtype's dense peak.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import os
import re
import time

from modulenet_jax.errors import UserError, run_script

# What XLA's GPU compiler needs to know of a card (its `GpuTargetConfig`), from the datasheets.
_DEVICE_INFO = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: {cudnn[0]} minor: {cudnn[1]} }}
runtime_version {{ major: 12 minor: 9 }}
device_description_str: "{name}"
"""
TARGETS = {"NVIDIA H200": 150_000_000_000, "NVIDIA H100 80GB HBM3": 85_000_000_000}  # card -> memory bytes
ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
              "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(ITEM_BYTES) + r")\[([0-9,]*)\]")
_INSTRUCTION = re.compile(r"^(?:ROOT )?%(\S+) = (.+?) ([a-z][a-z\-]*)\((.*)$")
_NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast"}


def array_bytes(types: str) -> int:
    """Bytes of every array type written in `types` (`bf16[8,500,32,32,16]{...}`, tuples too)."""
    total = 0
    for dtype, dims in _ARRAY.findall(types):
        n = ITEM_BYTES[dtype]
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n
    return total


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
    """The instructions of each computation of an HLO module's text, and the entry's name."""
    comps, current, entry = {}, None, None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            m = re.match(r"^(ENTRY )?%?([^\s(]+)", line)
            if m and m.group(2) != "HloModule":
                current = m.group(2)
                comps[current] = []
                entry = current if m.group(1) else entry
                continue
        if current and line.startswith("  ") and " = " in line:
            comps[current].append(line.strip())
    if entry is None:
        raise ValueError("not an HLO module's text: no ENTRY computation")
    return comps, entry


def _dims(types: str) -> list[int]:
    """The dimensions of the first array type written in `types`."""
    return [int(d) for d in filter(None, _ARRAY.search(types).group(2).split(","))]


def conv_flops(line: str, out_type: str, kernel_type: str) -> int:
    """A cuDNN convolution call's multiply-adds times two: each output element sums kernel
    height x width x its group's input channels products (the kernel's elements over its output
    features, whose position `dim_labels` gives)."""
    out, kernel = _dims(out_type), _dims(kernel_type)
    o = re.search(r"dim_labels=\w+_(\w+)->", line).group(1).index("o")
    return 2 * _product(out) * _product(kernel) // kernel[o]


def _product(dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def kernel_kind(name: str, op: str, line: str) -> str:
    """A kernel's kind: a custom call's target (`__cudnn$convBiasActivationForward`), a fusion's
    name without its number (`fusion:loop_convert_fusion`), else the op."""
    if op == "custom-call":
        return re.search(r'custom_call_target="([^"]+)"', line).group(1)
    if op == "fusion":
        return "fusion:" + re.sub(r"(\.\d+)+$", "", name)
    return op


def _operands(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split(")")[0])


def fusion_traffic(lines: list[str]) -> tuple[dict[int, int], int | None]:
    """What a fused computation's kernel moves where it reads or writes less than whole arrays:
    `(reads, written)`, `reads` the bytes of each parameter (by number) used only through slices
    (the slices' sizes) or only as the buffer a `dynamic-update-slice` updates in place (none),
    `written` the update's bytes when the root is such an update (None: the output's). Bitcasts
    and conversions on the way to a slice are followed (a loop fusion computes only the elements
    it keeps); every other parameter and output moves whole."""
    instrs, params, users = {}, {}, collections.defaultdict(list)
    root = None
    for line in lines:
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, out_type, op, rest = m.groups()
        instrs[name] = (out_type, op, _operands(rest) if op != "parameter" else [])
        if op == "parameter":
            params[name] = int(rest.split(")")[0])
        for o in instrs[name][2]:
            users[o].append(name)
        if line.startswith("ROOT "):
            root = name

    def uses(name, passing):
        found = []
        for u in users[name]:
            found += uses(u, passing) if instrs[u][1] in passing else [(u, name)]
        return found

    reads = {}
    for name, index in params.items():
        sliced = uses(name, ("bitcast", "convert"))
        if sliced and all(instrs[u][1] in ("slice", "dynamic-slice") and instrs[u][2][0] == via for u, via in sliced):
            item = ITEM_BYTES[_ARRAY.search(instrs[name][0]).group(1)]  # the parameter's, before conversions
            reads[index] = sum(item * _product(_dims(instrs[u][0])) for u, _ in sliced)
            continue
        updated = uses(name, ("bitcast",))
        if updated and all(instrs[u][1] == "dynamic-update-slice" and instrs[u][2][0] == via for u, via in updated):
            reads[index] = 0
    while root is not None and instrs[root][1] == "bitcast":
        root = instrs[root][2][0]
    written = None
    if root is not None and instrs[root][1] == "dynamic-update-slice":
        written = array_bytes(instrs.get(instrs[root][2][1], ("",))[0])
    return reads, written


def phase_of(line: str, phases, outer: str) -> str:
    """The first of `phases` (named scopes) that is a component of the instruction's `op_name`,
    else `outer` (the phase of the loop, conditional or call it runs in)."""
    op_name = re.search(r'op_name="([^"]*)"', line)
    parts = set(op_name.group(1).split("/")) if op_name else set()
    return next((p for p in phases if p in parts), outer)


def instructions(comps: dict[str, list[str]], entry: str, phases=(), every_branch: bool = False, trips=None):
    """Every instruction the entry runs, through its loops, conditionals and calls, as (computation,
    its `_INSTRUCTION` match, times per call, phase). Loops count their body `known_trip_count`
    times; where XLA does not know it, the body once and the condition twice (true, then false: a
    GPU evaluates it, copies it to the host and waits, every iteration; with a known count it runs
    the body that often and never the condition). A conditional counts its true branch
    (`true_computation`, or the second of two `branch_computations`, as `lax.cond` lowers; else
    every branch), a call its callee; `every_branch` also walks every branch and every loop's
    condition (the phase of every instruction that can run). A phase is `phase_of` the
    instruction, "other" outside them all. `trips` (named scope -> iterations) gives the trip count
    of a loop XLA does not know whose op name holds that scope (the fused program's loops over the
    slots a chunk reaches, `population.reached_slots`; its condition then runs once more)."""
    def visit(comp: str, times: int, outer: str):
        for line in comps[comp]:
            m = _INSTRUCTION.match(line)
            if not m or m.group(3) in _NOT_KERNELS:
                continue
            op = m.group(3)
            phase = phase_of(line, phases, outer)
            yield comp, m, times, phase
            if op == "while":
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                told = None if trip else next((n for scope, n in (trips or {}).items()
                                               if re.search(rf"[/(]{re.escape(scope)}[)/]", line)), None)  # vmap(scope)
                if trip:
                    trip_count = int(trip.group(1))
                else:
                    trip_count = 1 if told is None else told
                yield from visit(re.search(r"body=%([\w.\-]+)", line).group(1), times * trip_count, phase)
                if every_branch or not trip:  # a GPU runs the condition only to find an unknown trip count
                    yield from visit(re.search(r"condition=%([\w.\-]+)", line).group(1),
                                     times * (2 if told is None else told + 1), phase)
            elif op == "conditional":
                true = re.search(r"true_computation=%([\w.\-]+)", line)
                false = re.search(r"false_computation=%([\w.\-]+)", line)
                branches = [false.group(1), true.group(1)] if true else re.findall(
                    r"%([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}", line).group(1))
                counted = branches if every_branch or len(branches) != 2 else branches[1:]  # lax.cond: {false, true}
                for branch in counted:
                    yield from visit(branch, times, phase)
            elif op == "call":
                yield from visit(re.search(r"to_apply=%([\w.\-]+)", line).group(1), times, phase)

    yield from visit(entry, 1, "other")


CONTROL_FLOW = ("while", "conditional", "call")


def census(hlo: str, phases=(), trips=None) -> list[dict]:
    """Per kernel kind of an optimized module (`compiled.as_text()`): how many run per call, the
    bytes they read and write, largest first, the convolutions' FLOPs and the bytes per phase
    (`phase_of`: the first of the named scopes `phases` in the kernel's op name or around it;
    "other" outside them), counted as `instructions` walks the module (`trips`: there)."""
    comps, entry = computations(hlo)
    types = {(c, m.group(1)): m.group(2) for c, lines in comps.items() for m in map(_INSTRUCTION.match, lines) if m}
    traffic = {c: fusion_traffic(lines) for c, lines in comps.items()}
    runs, moved, flops = collections.Counter(), collections.Counter(), collections.Counter()
    by_phase = collections.defaultdict(collections.Counter)
    for comp, m, times, phase in instructions(comps, entry, phases, trips=trips):
        name, out_type, op, rest = m.groups()
        if op in CONTROL_FLOW:
            continue
        line = m.string
        operands = _operands(rest)
        kind = kernel_kind(name, op, line)
        if kind.startswith("__cudnn$conv"):
            flops[kind] += times * conv_flops(line, out_type, types[(comp, operands[1])])
        called = re.search(r"calls=%([\w.\-]+)", line) if op == "fusion" else None
        reads, written = traffic[called.group(1)] if called else ({}, None)
        runs[kind] += times
        moved_here = times * ((array_bytes(out_type) if written is None else written) + sum(
            reads.get(i, array_bytes(types.get((comp, o), ""))) for i, o in enumerate(operands)))
        moved[kind] += moved_here
        by_phase[kind][phase] += moved_here
    return [{"kernel": k, "runs": runs[k], "bytes": b, "flops": flops[k], "phases": dict(by_phase[k])}
            for k, b in moved.most_common()]


def instruction_phases(hlo: str, phases) -> tuple[str, dict[str, str]]:
    """An optimized module's name and the phase (`phase_of`, inherited from the loop, conditional
    or call around it) of every instruction it can run, by name: what a profile's events, which
    name the HLO op they run (`hlo_op`), are attributed to (`profile_summary.summarize`). A call
    whose callee's instructions share one phase (on a GPU, XLA's command buffers: a computation of
    consecutive kernels run as one CUDA graph, one event in a profile) has that phase, under its
    own name and its callee's."""
    comps, entry = computations(hlo)
    module = re.match(r"HloModule ([^\s,]+)", hlo.lstrip())
    found, inside, calls = {}, collections.defaultdict(set), {}
    for comp, m, _, phase in instructions(comps, entry, phases, every_branch=True):
        found[m.group(1)] = phase
        inside[comp].add(phase)
        if m.group(3) == "call":
            calls[m.group(1)] = re.search(r"to_apply=%([\w.\-]+)", m.string).group(1)
    for call, callee in calls.items():
        if len(inside[callee]) == 1:
            found[call] = found[callee] = next(iter(inside[callee]))
    return (module.group(1) if module else ""), found


def bound(rows: list[dict], units: int, bandwidth: float, peak: float) -> float:
    """Units of work per second if each kernel kind took its bytes at `bandwidth` or its FLOPs at
    `peak`, whichever is slower, and nothing else took time."""
    return units / sum(max(r["bytes"] / bandwidth, r["flops"] / peak) for r in rows)


def summary(rows: list[dict], units: int, bandwidth: float, peak: float) -> dict:
    """Totals of a census for a call that does `units` of work (W1: genotype-images; W2: genotypes)."""
    total = sum(r["bytes"] for r in rows)
    convs = [r for r in rows if r["kernel"].startswith("__cudnn$conv")]
    return {"kernels": sum(r["runs"] for r in rows), "bytes": total, "flops": sum(r["flops"] for r in rows),
            "bytes_per_unit": total / units,
            "cudnn_share": sum(r["bytes"] for r in convs) / total,
            "convolutions": {r["kernel"]: r["runs"] for r in convs},
            "phases": dict(sum((collections.Counter(r.get("phases", {})) for r in rows), collections.Counter())),
            "hbm_bound": bound(rows, units, bandwidth, float("inf")),
            "roofline": bound(rows, units, bandwidth, peak)}


def compile_only_environment(environ=os.environ) -> None:
    """What JAX needs to compile for a GPU where there is none, set before its backends start:
    the plugin's driver version check skipped (no driver), the arrays on the CPU, no autotuning
    (nothing to time on)."""
    environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    environ.setdefault("JAX_PLATFORMS", "cpu")
    environ["XLA_FLAGS"] = f"{environ.get('XLA_FLAGS', '')} --xla_gpu_autotune_level=0".strip()


def cuda_plugin_installed() -> bool:
    if importlib.util.find_spec("jax_plugins") is None:
        return False
    return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{v}") is not None for v in (12, 13))


def gpu_mesh(card: str, bandwidth: float):
    """A one-device `pop` mesh of the card's compile-only device (XLA's CUDA plugin), its HBM
    `bandwidth` in bytes/s."""
    import jax
    import numpy as np
    from jax.experimental import topologies
    from jax.sharding import Mesh

    if not cuda_plugin_installed():
        raise UserError(f"compiling for a GPU needs JAX's CUDA plugin: pip install 'jax[cuda12]=={jax.__version__}' "
                        "(in an environment of its own: it runs without a GPU)")
    config = _DEVICE_INFO.format(name=card, cudnn=cudnn_version(), memory=TARGETS[card], bandwidth=int(bandwidth))
    topology = topologies.get_topology_desc(platform="cuda", target_config=config, topology="1x1x1")
    return Mesh(np.array(topology.devices[:1]), ("pop",))


def cudnn_version() -> tuple[int, int]:
    """The installed cuDNN's (major, minor): what XLA is told the card's runtime has."""
    from importlib import metadata

    for dist in ("nvidia-cudnn-cu12", "nvidia-cudnn-cu13"):
        try:
            major, minor = metadata.version(dist).split(".")[:2]
            return int(major), int(minor)
        except metadata.PackageNotFoundError:
            continue
    return 9, 0


UNITS = {"W1": "genotype-images", "W2": "genotypes"}


def markdown(report: dict) -> str:
    lines = [f"The fused programs compiled for **{report['card']}** without one (XLA's CUDA plugin, jax "
             f"{report['jax']}, cuDNN {report['cudnn']} as the target's, no autotuning): {report['population']} "
             f"networks, {report['images']:,} validation images per call in batches of {report['batch']}, "
             f"{report['carry']} carried; W1 scores fitted ResNet-56-shaped networks, W2 runs the whole protocol "
             "(fit pass, heads, scoring) on random networks of the space. Bytes: every kernel's operands and outputs "
             "as typed (a slice: what it keeps; an in-place update: what it writes), per call; `HBM-bound`: "
             "genotype-images/s (W1) or genotypes/s (W2) if they moved once at the card's bandwidth; `roofline`: "
             "each kernel kind at that or, where slower, its convolutions' FLOPs at the dense peak of the dtype "
             "(TF32 off for float32): estimates from the program, not measurements. A conditional counts its true "
             "branch (a stitch at every slot); a loop whose trip count XLA does not know (L-BFGS's line search) "
             "counts its body once and its condition twice (a known count: its body that often, no condition; W2's "
             "fit pass over the slots its chunk reaches: as many as its networks reach, its condition once more).",
             "",
             "| workload | layout | dtype | kernels | GB per call | MB per unit | in cuDNN calls | convolutions "
             "(fused with bias+activation / plain) | TFLOP | HBM-bound | roofline | compile s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for v in report["variants"]:
        s, convs = v["summary"], v["summary"]["convolutions"]
        fused = convs.get("__cudnn$convBiasActivationForward", 0)
        lines.append(f"| {v['workload']} | {v['layout']} | {v['dtype']} | {s['kernels']:,} | {s['bytes'] / 1e9:.1f} | "
                     f"{s['bytes_per_unit'] / 1e6:.2f} | {s['cudnn_share']:.0%} | {fused} / "
                     f"{sum(convs.values()) - fused} | {s['flops'] / 1e12:.1f} | {s['hbm_bound']:,.1f} | "
                     f"{s['roofline']:,.1f} | {v['compile_s']:.1f} |")
    for v in report["variants"]:
        lines += ["", f"**{v['workload']}, {v['layout']}, {v['dtype']}**: kernels by kind", "",
                  "| kernel | runs | GB | share |", "| --- | ---: | ---: | ---: |"]
        total = v["summary"]["bytes"]
        lines += [f"| `{r['kernel']}` | {r['runs']:,} | {r['bytes'] / 1e9:.2f} | {r['bytes'] / total:.1%} |"
                  for r in v["rows"] if r["bytes"] >= 0.001 * total]
        phases = v["summary"].get("phases", {})
        if set(phases) - {"other"}:
            lines += ["", "By the protocol's phase (`population.PHASES`; other: outside them): " + ", ".join(
                f"{phase.replace('_', ' ')} {b / 1e9:,.1f} GB ({b / total:.0%})"
                for phase, b in sorted(phases.items(), key=lambda kv: -kv[1]) if b >= 0.0005 * total)]
    return "\n".join(lines)


def layout_setting(name: str) -> str:
    """A `--layouts` name, checked: `vmapped`, `grouped` or `grouped-wW` (`grouped_value`)."""
    if name in ("vmapped", "grouped") or re.fullmatch(r"grouped-w[1-9]\d*", name):
        return name
    raise argparse.ArgumentTypeError(f"{name!r}: a layout is vmapped, grouped or grouped-wW (W a number of channels)")


def grouped_value(layout: str) -> bool | int:
    """`PopulationEvaluator`'s `grouped_layout` for a `--layouts` name: False, True or the width."""
    return int(layout[len("grouped-w"):]) if layout.startswith("grouped-w") else layout == "grouped"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", required=True, help="knowledge base .npz (prepare_device_bundle)")
    p.add_argument("--data", required=True, help="dataset .npz (prepare_device_bundle)")
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=list(UNITS))
    p.add_argument("--population", type=int, default=64)
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=["bfloat16", "float32"])
    p.add_argument("--layouts", nargs="+", default=["vmapped", "grouped"], type=layout_setting,
                   help="vmapped, grouped, or grouped-wW (convolution groups packed up to W channels)")
    p.add_argument("--card", default="NVIDIA H200", choices=list(TARGETS))
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="nvidia-h200-census")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    compile_only_environment()
    import jax

    jax.config.update("jax_compilation_cache_include_metadata_in_key", True)  # the phases are read from op names

    from . import throughput
    from .throughput import NUMERICS, peak_bandwidth, peak_flops
    from .prepare_device_bundle import load_kb
    from modulenet_jax.data import load_dataset
    from modulenet_jax.population import PHASES, PopulationEvaluator, batch_carry, reached_slots
    from modulenet_jax.protocol import Protocol

    if args.population < 1 or args.val_size < 1:
        raise UserError("--population and --val-size must be positive")
    mesh = gpu_mesh(args.card, peak_bandwidth(args.card))
    protocol = Protocol(fit_images=2048, stitch_images=512, batch_size=500)  # speed_session's
    bench = throughput.Bench(load_kb(args.kb), load_dataset(args.data), protocol, "run", args.val_size, 0, "fused",
                             None, log=lambda m: None)
    carry = batch_carry(protocol, "gpu")
    report = {"card": args.card, "jax": jax.__version__, "cudnn": ".".join(map(str, cudnn_version())),
              "population": args.population, "images": len(bench.val), "batch": protocol.batch_size, "carry": carry,
              "variants": []}
    w1 = throughput.w1_networks(bench.kb, args.population, 0)
    w2 = throughput.w2_networks(bench.space, args.population, 0)
    for workload in args.workloads:
        for dtype in args.dtypes:
            for layout in args.layouts:
                t = time.time()
                if workload == "W1":
                    pe, scored = bench.w1_fused(dtype, None, grouped_value(layout))
                    slots, fits, heads = bench.w1_fitted(pe, w1)
                    lowered = pe.score_lowered(slots, fits, heads, scored, mesh, "cuda", carry)
                    units, trips = args.population * len(bench.val), {}
                else:
                    pe = PopulationEvaluator(bench.space, dataclasses.replace(protocol, dtype=dtype), bench.fit,
                                             chunk_size=args.population, grouped_layout=grouped_value(layout))
                    slots = pe.stacked_slots(w2)
                    lowered = pe.evaluate_lowered(slots, pe.device_split(bench.val), mesh, "cuda", carry)
                    units, trips = args.population, reached_slots(pe.layout, pe.protocol, slots)  # one group: the chunk
                rows = census(lowered.compile().as_text(), PHASES, trips)
                done = summary(rows, units, peak_bandwidth(args.card), peak_flops(args.card, NUMERICS[dtype]))
                report["variants"].append({"workload": workload, "layout": layout, "dtype": dtype,
                                           "compile_s": time.time() - t, "rows": rows, "summary": done})
                print(f"{workload} {layout} {dtype}: {done['hbm_bound']:,.1f} {UNITS[workload]}/s HBM-bound, "
                      f"{done['roofline']:,.1f} roofline", flush=True)
    throughput.write_report(report, markdown(report), args.out, args.name)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
