"""Where a compiled JAX program spends its device time: a `jax.profiler` trace of calls already
compiled, cut down to a table of op kinds (convolutions, fusions, copies, ...) with their time and
share. The device session commits the table, not the trace (which is large and needs a viewer).

    summary = profile_summary.capture(lambda: program(*args), out_dir / "trace")
    print(profile_summary.markdown({"W1 jax-fused bf16 P=64": summary}))

The trace is JAX's Perfetto/Chrome JSON (`create_perfetto_trace=True`): one process per profiler
plane, one thread per line. A GPU's `/device:` process holds its kernels and copies on `Stream #...`
lines and, derived from them, an `XLA Ops` and an `XLA Modules` line covering the same time again;
device time is the sum over the stream lines only (over `XLA Ops` where a device has no stream
line, as a TPU). On a CPU, which has no device process, it is the host events XLA marks with the
HLO op they run. Control flow (`while`, `cond`, `call`) is left out: its events enclose
the ops of its body. Given the phase of each of the program's HLO ops (`gpu_census.instruction_phases`
of its compiled text), the device time is also split by the protocol's phase.
"""

from __future__ import annotations

import gzip
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import jax

_SUFFIX = re.compile(r"([._]\d+|\.clone)$")


def capture(call: Callable[[], object], trace_dir, repeats: int = 1, op_phases=None) -> dict:
    """`call()` (compiled beforehand) `repeats` times under the profiler; the trace's `summarize`
    (by phase too with `op_phases`), with the wall seconds of the traced calls."""
    trace_dir = Path(trace_dir)
    trace_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        t = time.time()
        for _ in range(repeats):
            jax.block_until_ready(call())
        wall = time.time() - t
    traces = sorted(trace_dir.rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"the profiler wrote no perfetto_trace.json.gz under {trace_dir}")
    summary = summarize(load_events(traces[-1]), op_phases=op_phases)
    summary["wall_seconds"] = wall
    summary["calls"] = repeats
    return summary


def load_events(path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def op_kind(name: str) -> str:
    """An event's op kind: its name without the numbering XLA gives every instance and copy
    (`loop_convolution_fusion.12` -> `loop_convolution_fusion`, `cond.56.clone` -> `cond`)."""
    name = name.split(":", 1)[0].strip()
    while _SUFFIX.search(name):
        name = _SUFFIX.sub("", name)
    return name or "?"


CONTROL_FLOW = ("while", "cond", "conditional", "call")  # JAX names its conditionals `cond`


def _device_time_events(events: list[dict]) -> tuple[list[dict], str]:
    """The complete events whose durations add up to device time, and where they come from."""
    meta = [e for e in events if e.get("ph") == "M"]
    device_pids = {e["pid"] for e in meta if e.get("name") == "process_name"
                   and "/device:" in e.get("args", {}).get("name", "") and "CPU" not in e["args"]["name"]}
    lines = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "")
             for e in meta if e.get("name") == "thread_name"}
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    on_device = [e for e in complete if e["pid"] in device_pids]
    if on_device:
        def line(e):
            return lines.get((e["pid"], e.get("tid")), "")

        streams = [e for e in on_device if line(e).startswith("Stream")]
        if streams:
            return streams, "device streams"
        ops = [e for e in on_device if line(e) == "XLA Ops"]
        if ops:
            return ops, "device XLA Ops line"
        return on_device, "device events"
    return [e for e in complete if "hlo_op" in e.get("args", {})], "host events of HLO ops"


def summarize(events: list[dict], top: int = 15, op_phases: tuple[str, dict] | None = None) -> dict:
    """Device time by op kind: `{"source", "device_seconds", "events", "kinds": [{kind, seconds,
    share, count}, ...]}`, the `top` largest kinds and the rest as `other`. With `op_phases`
    (`(module, {HLO op: phase})`, `gpu_census.instruction_phases`) also `"phases"`: seconds by
    phase, `unattributed` for an event whose op is not in the module (a copy between host and
    device) and `other programs` for events of another module."""
    chosen, source = _device_time_events(events)
    seconds, count = defaultdict(float), defaultdict(int)
    by_phase = defaultdict(float)
    for e in chosen:
        op = e.get("args", {}).get("hlo_op") or e["name"]
        kind = op_kind(op)
        if kind not in CONTROL_FLOW:
            seconds[kind] += e["dur"] * 1e-6  # the trace's times are microseconds
            count[kind] += 1
            if op_phases is not None:
                by_phase[_phase(e, op, *op_phases)] += e["dur"] * 1e-6
    total = sum(seconds.values())
    ranked = sorted(seconds, key=seconds.get, reverse=True)
    kinds = [{"kind": k, "seconds": seconds[k], "share": seconds[k] / total if total else 0.0, "count": count[k]}
             for k in ranked[:top]]
    rest = ranked[top:]
    if rest:
        s = sum(seconds[k] for k in rest)
        kinds.append({"kind": f"other ({len(rest)} kinds)", "seconds": s, "share": s / total if total else 0.0,
                      "count": sum(count[k] for k in rest)})
    summary = {"source": source, "device_seconds": total, "events": sum(count.values()), "kinds": kinds}
    if op_phases is not None:
        summary["phases"] = dict(sorted(by_phase.items(), key=lambda kv: -kv[1]))
    return summary


def _phase(event: dict, op: str, module: str, phases: dict[str, str]) -> str:
    """The phase of a device-time event: its HLO op's in `module`, else why there is none."""
    args = event.get("args", {})
    if args.get("hlo_module", module) != module:
        return "other programs"
    return phases.get(op, "unattributed")


def markdown(summaries: dict[str, dict]) -> str:
    """One table per profiled program (`{title: summary}`)."""
    lines = []
    for title, s in summaries.items():
        said = (f"{s['events']} events on the {s['source']}: {1e3 * s['device_seconds']:.3f} ms of op time in "
                f"{s.get('calls', 1)} call(s) taking {1e3 * s.get('wall_seconds', float('nan')):.3f} ms wall.")
        lines += [f"### {title}", "", said, "",
                  "| op kind | ms | share | events |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| `{k['kind']}` | {1e3 * k['seconds']:.3f} | {100 * k['share']:.1f}% | {k['count']} |"
                  for k in s["kinds"]]
        if s.get("phases"):
            total = sum(s["phases"].values())
            split = ", ".join(f"{phase.replace('_', ' ')} {1e3 * t:.3f} ms ({t / total:.0%})"
                              for phase, t in s["phases"].items())
            lines += ["", f"By the protocol's phase (each op's phase in the program that ran, `population.PHASES`; "
                          f"other: ops outside them, or that XLA made without an op name): {split}."]
        lines.append("")
    return "\n".join(lines)
