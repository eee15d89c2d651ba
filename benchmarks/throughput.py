"""`modulenet bench`: how many candidate networks per second, against PyTorch in the same process.

Workloads on the CIFAR ResNet knowledge base:
- W1, forward only: fitted networks over the validation images, genotype-images per second.
  The networks have nine blocks per stage (ResNet-56 shaped), modules drawn at random, a 1x1
  stitch (identity: the forward cost of a fitted one) at each real junction and none elsewhere,
  each network's head its last block's source head;
- W2, the whole protocol (stitches, BatchNorm statistics, head, scoring) on networks of the
  configured space: genotypes per second, with the share of each phase where measured.
Each is measured for the JAX path (`fused`: one vmapped program per population chunk, for
accelerators; `loop`: one compiled call per module, for CPUs, in W2 computing the module prefixes
several networks share once, as a search does) and for PyTorch (`torch_baseline.py`: images
resident on the device, BatchNorm in evaluation mode or folded into the conv (`+fold`), eager,
`torch.compile`d once per module shape, or in W1 also each whole network compiled as one graph
(`compile-network`), networks one after another), for several population
sizes. Compile time and the number of programs (JAX) or graphs (dynamo) compiled are reported
apart and excluded from the rates.

Numerics, named in every row: `fp32-strict` (JAX `protocol.dtype` `float32`, `Precision.HIGHEST`;
PyTorch with TF32 off), `fp32-tf32` (JAX `tensorfloat32`: fp32 activations, TF32 convolutions and
products, fp32 fits; PyTorch's GPU default, TF32 convolutions, with TF32 matmuls too; on a CPU,
which has no TF32, both compute fp32 and PyTorch has no such row), `bf16` (JAX bf16 compute with
fp32 accumulation and fp32 fits; PyTorch bf16 autocast with fp32 fits). A row's speed-up is read
against the PyTorch rows of the same numerics only.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax import grouped, protocol as core
from modulenet_jax.data import Dataset, fit_split, protocol_split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.population import (PHASES, PopulationEvaluator, choose_strategy, fit_chunk, fit_heads,
                                      inference_fits, walk)
from modulenet_jax.protocol import FittedNetwork, Protocol
from modulenet_jax.space import Architecture, SearchSpace
from modulenet_jax.zoo import op_of

from .grouped_probe import grouped_probe_chunk

# Dense peak FLOP/s by device kind and numerics, from the vendors' datasheets (SXM parts, no sparsity).
PEAK_FLOPS = {"H100": {"fp32-strict": 67e12, "fp32-tf32": 494.7e12, "bf16": 989.4e12},
              "H200": {"fp32-strict": 67e12, "fp32-tf32": 494.7e12, "bf16": 989.4e12},
              "A100": {"fp32-strict": 19.5e12, "fp32-tf32": 156e12, "bf16": 312e12}}
# HBM bandwidth in bytes/s by device kind, from the same datasheets (SXM parts).
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.039e12}
NUMERICS = {"float32": "fp32-strict", "tensorfloat32": "fp32-tf32", "bfloat16": "bf16"}  # JAX dtype -> numerics
DTYPE_OF = {numerics: dtype for dtype, numerics in NUMERICS.items()}  # PyTorch numerics -> the JAX dtype it matches
# PyTorch mode (`--torch-modes`) -> what `TorchRunner` compiles; a row's impl is `torch-<mode>`
TORCH_MODES = {"eager": None, "compile": "modules", "compile-network": "network"}
W2_TORCH_MODES = {"eager", "compile"}  # a whole-network graph has no place in W2's module-by-module fit
LOWERING_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"  # once per program built (cached or not)
_PROGRAMS = [0]


def _count_programs(event: str, *args, **kwargs):
    if event == LOWERING_EVENT:
        _PROGRAMS[0] += 1


@functools.lru_cache(maxsize=None)
def _listen() -> None:
    jax.monitoring.register_event_duration_secs_listener(_count_programs)


def jax_programs() -> int:
    """JAX programs lowered in this process since the bench started listening."""
    _listen()
    return _PROGRAMS[0]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The GPU/TPU kind, or the CPU's model and core count: the name every result file carries."""
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"CPU ({_cpu_model()}, {os.cpu_count()} cores, {jax.device_count()} JAX device(s))"
    return d.device_kind


def peak_flops(name: str, numerics: str) -> float | None:
    for key, peaks in PEAK_FLOPS.items():
        if key in name:
            return peaks[numerics]
    return None


def peak_bandwidth(name: str) -> float | None:
    """The device's HBM bandwidth in bytes/s (`PEAK_BANDWIDTH`), None where it is not known."""
    return next((bw for key, bw in PEAK_BANDWIDTH.items() if key in name), None)


def w2_networks(space: SearchSpace, n: int, seed: int) -> list[Architecture]:
    """`n` random networks of the space (W2's)."""
    rng = np.random.default_rng(seed)
    return [space.decode(space.sample(rng)) for _ in range(n)]


def w1_networks(kb: KnowledgeBase, n: int, seed: int) -> list[Architecture]:
    """`n` random networks of the block space with every stage at its full depth (nine blocks)."""
    space = SearchSpace(kb, "block")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = space.sample(rng)
        for i, gene in enumerate(space.genes):
            if gene.kind == "depth":
                g[i] = gene.high
        out.append(space.decode(g))
    return out


def source_head(kb, arch):
    """The published classifier of the source whose module ends `arch` (W1 runs networks with it)."""
    return kb.module_params(f"{kb.record(arch.modules[-1]).source}/head")["fc"]


def _identity(c):
    return {"kernel": jnp.eye(c), "bias": jnp.zeros((c,))}


@dataclasses.dataclass
class Result:
    workload: str
    impl: str
    dtype: str
    numerics: str
    population: int
    networks_timed: int
    seconds: float
    compile_seconds: float | None
    rate: float  # genotype-images/s (W1) or genotypes/s (W2)
    unit: str
    compiles: int | None = None  # JAX programs lowered or dynamo graphs compiled by the warm-up call
    recompiles: int | None = None  # ... and by the timed calls, on other networks (0: compiled once, reused)
    tflops: float | None = None
    peak_fraction: float | None = None
    mean_correct: float | None = None
    correct: list[int] | None = None  # per network timed, in order: what the dtype comparison reads
    phases: dict | None = None  # W2: seconds per protocol phase over the timed networks
    group: int | None = None  # fused JAX rows: genotypes side by side (`fused_impl`; None: the chunk as one vmap)

    def __post_init__(self):
        if self.correct is not None:
            self.correct = [int(c) for c in np.asarray(self.correct).ravel()]
            self.mean_correct = float(np.mean(self.correct))


@functools.partial(jax.jit, static_argnames=("layout", "protocol"))
def _probe_chunk(layout, protocol, banks, idx, fits, heads, images, labels, valid):
    """The naive vmap probe: every genotype's modules in their inference form (BatchNorm
    folded), one after another, no stitch, no mask, no conditional; vmapped over genotypes
    and scored batch by batch. Not the protocol (it counts other predictions): the speed the
    fused program's scoring would have without the work a network of the space needs."""
    def one(i, fits, head):
        mean, std = banks["mean"][i[0]], banks["std"][i[0]]
        fits = inference_fits(layout, fits)

        def batch(b):
            x, y, v = b
            x, _ = walk(layout, fits, core.prepare(protocol, x, mean, std),
                        lambda op, slot, fit, x: (core.apply_fitted(op, fit, x, False), None))
            return core.score_logits(core.head_logits(head, core.pool(x)), y, v)

        hits, finite = jax.lax.map(batch, (images, labels, valid))
        return jnp.sum(hits), jnp.all(finite)
    with core.numerics(protocol):
        return jax.vmap(one)(idx, fits, heads)


_grouped_probe_chunk = jax.jit(grouped_probe_chunk, static_argnames=("layout", "protocol", "width"))

# W2's first two phases alone (the fused program's own functions, each its own program here).
_fit_pass_chunk = jax.jit(fit_chunk, static_argnames=("layout", "protocol", "group"))
_head_chunk = jax.jit(fit_heads, static_argnames=("protocol", "num_classes"))


def paired_figures(t_jax, t_torch, images: int) -> dict:
    """The paired W1 figures from seconds per (round, network) of each side: each network's
    median time over the rounds; the rates of the networks together; the per-network ratio of
    JAX's speed to PyTorch's (PyTorch's median time over JAX's), its median, min and max."""
    m_jax, m_torch = np.median(t_jax, axis=0), np.median(t_torch, axis=0)
    ratio = m_torch / m_jax
    n = len(m_jax)
    return {"jax_rate": n * images / float(m_jax.sum()), "torch_rate": n * images / float(m_torch.sum()),
            "ratio_median": float(np.median(ratio)), "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max())}


def probe_impl(grouped: bool = False, width: int = 0) -> str:
    """A W1 probe row's name: `jax-probe` (vmapped), `jax-probe-grouped` (the grouped layout),
    `jax-probe-grouped-wW` (convolution groups packed up to W channels)."""
    return "jax-probe" + ("-grouped" if grouped else "") + (f"-w{width}" if width > 1 else "")


def fused_impl(group: int | None, grouped_layout: bool | int = False) -> str:
    """The name of a fused JAX row: `jax-fused` runs a chunk as one vmap, `jax-fused-gN` N
    genotypes side by side at a time (`population.by_group`), `jax-grouped` the chunk at once
    in the grouped layout (W2 fits and scores in it, W1 scores), `jax-grouped-wW` with its
    convolution groups packed up to W channels (`PopulationEvaluator`'s `grouped_layout` W)."""
    if grouped_layout:
        return "jax-grouped" + (f"-w{grouped_layout}" if grouped_layout > 1 else "")
    return "jax-fused" if group is None else f"jax-fused-g{group}"


def fastest_group(results: list[Result], workload: str, dtype: str, groups: tuple) -> tuple:
    """Of `groups`, the one whose fused row ran fastest at the largest population measured (for
    `workload` and `dtype`), as a 1-tuple; `groups` as they are where none was measured."""
    rows = [r for r in results if r.impl.startswith("jax-fused") and (r.workload, r.dtype) == (workload, dtype)
            and r.group in groups]
    if not rows:
        return groups
    largest = max(r.population for r in rows)
    return (max((r for r in rows if r.population == largest), key=lambda r: r.rate).group,)


def graph_counts(compiled: str | None, before: int, warm: int, runner) -> tuple[int | None, int | None]:
    """(graphs dynamo compiled in the warm-up call, in the timed calls) of a `torch.compile` row."""
    return (warm - before, runner.compiles() - warm) if compiled else (None, None)


class Bench:
    """Runs the measurements in order, stopping (and saying so) once the time budget is spent,
    and each row (workload, implementation, numerics) once it has used `row_cap_s`."""

    def __init__(self, kb: KnowledgeBase, dataset: Dataset, protocol: Protocol, space_granularity: str,
                 val_size: int | None, fit_seed: int, strategy: str, budget_s: float | None,
                 log: Callable[[str], None] = print, torch_device: str | None = None,
                 row_cap_s: float | None = None, checkpoint: Callable[["Bench"], None] | None = None):
        self.kb, self.protocol, self.log = kb, protocol, log
        self.strategy = choose_strategy(strategy)
        self.val = protocol_split(dataset, "val", val_size)
        self.fit = fit_split(dataset, protocol, fit_seed)
        self.space = SearchSpace(kb, space_granularity)
        self.block_space = SearchSpace(kb, "block")
        self.num_classes = dataset.num_classes
        self.device = device_name()
        self.budget_s, self.row_cap_s, self.t0 = budget_s, row_cap_s, time.time()
        self.row_time: dict[tuple, float] = {}  # seconds each row has used
        self.timed_networks: dict[tuple, int] = {}  # networks each PyTorch row last timed
        self.results: list[Result] = []
        self.skipped: list[str] = []
        self.paired: list[dict] = []
        self.phases: list[dict] = []
        self.profiles: dict[str, dict] = {}  # title -> `profile_summary.summarize` of a traced call
        self.failed: list[str] = []
        self.broken: set[tuple] = set()  # rows that raised: not measured again
        self.torch_device = torch_device
        self.checkpoint = checkpoint
        self._cache: dict[tuple, object] = {}
        self.cost = Evaluator(kb, protocol, self.fit)
        jax_programs()

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def skip(self, row: tuple, what: str) -> bool:
        """Is the budget spent (whole run or this row)? Says so once per thing skipped."""
        reason = None
        if self.budget_s is not None and time.time() - self.t0 > self.budget_s:
            reason = "time budget"
        elif self.row_cap_s is not None and self.row_time.get(row, 0.0) > self.row_cap_s:
            reason = "row cap"
        if reason:
            self.skipped.append(f"{what} ({reason})")
            self.log(f"skipped ({reason}): {what}")
        return reason is not None

    def attempt(self, row: tuple, measure: Callable, *args):
        """`measure(*args)`; an exception ends that row (said in the report's `failed` in a line, the
        row's larger populations not tried) instead of the whole run: a session on a device keeps
        measuring the other rows. The log gets the whole traceback: a device session has one try."""
        if row in self.broken:
            return
        try:
            measure(*args)
            if self.checkpoint:
                self.checkpoint(self)
        except Exception as e:  # noqa: BLE001 - recorded and reported, the other rows go on
            self.broken.add(row)
            first_line = (str(e).strip().splitlines() or [""])[0]
            message = f"{' '.join(map(str, row))} P={args[2]}: {type(e).__name__}: {first_line}"
            self.failed.append(message)
            self.log(f"failed: {message}\n{traceback.format_exc().rstrip()}")

    def _protocol(self, dtype):
        return dataclasses.replace(self.protocol, dtype=dtype)

    def add(self, r: Result, flops_per_image: float | None = None):
        if flops_per_image is not None and r.workload == "W1":
            r.tflops = r.rate * flops_per_image / 1e12
            peak = peak_flops(self.device, r.numerics)
            r.peak_fraction = None if peak is None else r.tflops * 1e12 / peak
        self.results.append(r)
        self.log(f"{r.workload} {r.impl:20s} {r.numerics:11s} P={r.population:4d}: {_rate(r.rate):>12s} {r.unit}"
                 + (f" ({r.tflops:.2f} TFLOP/s)" if r.tflops else "")
                 + (f", compile {r.compile_seconds:.1f} s" if r.compile_seconds else "")
                 + (f", {r.compiles} compiled" if r.compiles is not None else ""))

    def _w1_flops(self, archs) -> float:
        return float(np.mean([self.cost.cost(a)[1] for a in archs]))

    def w1_fused(self, dtype, group=None, grouped_layout=False):
        """W1's fused evaluator of a dtype (made once, set to `group` and `grouped_layout`) and the
        validation split on its device."""
        protocol = self._protocol(dtype)
        pe = self._once(("w1-fused", dtype),
                        lambda: PopulationEvaluator(self.block_space, protocol, self.fit, chunk_size=1))
        pe.group, pe.grouped_layout = group, grouped_layout
        return pe, self._once(("w1-scored", dtype), lambda: pe.device_split(self.val))

    def w1_fitted(self, pe, archs) -> tuple:
        """W1's networks as fitted, stacked: `(slots, fits, heads)` (published params, an identity
        stitch at each real junction, each network's head its last block's source head)."""
        return (pe.stacked_slots(archs), pe.published_fits(archs),
                jax.tree_util.tree_map(lambda *h: jnp.stack(h), *[source_head(self.kb, a) for a in archs]))

    def _w2_fused(self, dtype, P, group=None, grouped_layout=False):
        """W2's fused evaluator of a dtype (made once), set to equal chunks covering `P` within
        what the device's memory allows (`PopulationEvaluator.chunk_for`), run in `group`s (or
        fitted and scored in the grouped layout)."""
        pe = self._once(("w2-fused", dtype), lambda: PopulationEvaluator(self.space, self._protocol(dtype), self.fit))
        memory_chunk = self._once(("w2-chunk", dtype), lambda: pe.chunk_size)
        pe.group, pe.grouped_layout = group, grouped_layout
        pe.chunk_size = pe.chunk_for(P, memory_chunk)
        return pe

    # -- W1 ----------------------------------------------------------------------------------------

    def w1_jax(self, archs, dtype, P, group=None, grouped_layout=False):
        impl = fused_impl(group, grouped_layout) if self.strategy == "fused" else "jax-loop"
        row = ("W1", impl, dtype)
        if self.skip(row, f"W1 {impl} {dtype} P={P}"):
            return
        t_row = time.time()
        protocol = self._protocol(dtype)
        n_img = len(self.val)
        archs = archs[:P]
        if self.strategy == "loop":
            ev = self._once(("loop", dtype), lambda: Evaluator(self.kb, protocol, self.fit))
            nets = [self._loop_network(ev, a) for a in archs]
            programs = jax_programs()
            t = time.time()
            ev.score(nets[0], self.val)
            compile_s = time.time() - t
            built = jax_programs()
            t = time.time()
            correct = [ev.score(n, self.val)[0] for n in nets]
            dt = time.time() - t
        else:
            pe, scored = self.w1_fused(dtype, group, grouped_layout)
            slots, fits, heads = self.w1_fitted(pe, archs)
            programs = jax_programs()
            t = time.time()
            pe.score_fitted(slots, fits, heads, scored)
            compile_s = time.time() - t
            built = jax_programs()
            times = []
            for _ in range(3):
                t = time.time()
                correct = pe.score_fitted(slots, fits, heads, scored)
                times.append(time.time() - t)
            dt = float(np.median(times))
        self.add(Result("W1", impl, dtype, NUMERICS[dtype], P, P, dt, compile_s, P * n_img / dt, "genotype-images/s",
                         built - programs, jax_programs() - built, correct=correct, group=group),
                  self._w1_flops(archs))
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def w1_probe(self, archs, dtype, P, grouped: bool = False, width: int = 0):
        """`_probe_chunk` on W1's networks at full depth (`fused` strategy only): the reference
        the fused program's W1 rate is read against; `grouped`: `grouped_probe_chunk`, the same
        networks with the genotypes inside the channel axis (`jax-probe-grouped`), convolution
        groups packed up to `width` channels (`jax-probe-grouped-wW`; its TFLOP/s count the
        networks' own multiplications, not the zeros between them)."""
        impl = probe_impl(grouped, width)
        row = ("W1", impl, dtype)
        if self.strategy != "fused" or self.skip(row, f"W1 {impl} {dtype} P={P}"):
            return
        t_row = time.time()
        archs = archs[:P]
        call = self._probe_call(archs, dtype, grouped, width)
        programs = jax_programs()
        t = time.time()
        call()
        compile_s = time.time() - t
        built = jax_programs()
        times = []
        for _ in range(3):
            t = time.time()
            correct, _ = call()
            times.append(time.time() - t)
        dt = float(np.median(times))
        flops = np.mean([sum(self.kb.record(m).flops for m in a.modules)  # no stitch
                         + 2 * self.kb.record(a.modules[-1]).spec.out_channels * self.num_classes for a in archs])
        self.add(Result("W1", impl, dtype, NUMERICS[dtype], P, P, dt, compile_s, P * len(self.val) / dt,
                         "genotype-images/s", built - programs, jax_programs() - built, correct=np.asarray(correct)),
                  flops)
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def _probe_call(self, archs, dtype, grouped: bool, width: int = 0) -> Callable:
        """One call of a W1 probe on `archs` (`_probe_chunk`, or `grouped_probe_chunk` with
        `width`), its inputs made once: (correct counts, all finite) per network."""
        protocol = self._protocol(dtype)
        pe, (images, labels, valid) = self.w1_fused(dtype)
        slots, fits, heads = self.w1_fitted(pe, archs)
        idx = jnp.asarray(slots[0])
        chunk = functools.partial(_grouped_probe_chunk, width=width) if grouped else _probe_chunk
        return lambda: jax.block_until_ready(chunk(pe.layout, protocol, pe.banks, idx, fits, heads, images, labels,
                                                   valid))

    def _loop_network(self, ev: Evaluator, arch):
        recs = [self.kb.record(m) for m in arch.modules]
        stitches = [_identity(r.spec.in_channels) if j else None for r, j in zip(recs, arch.junctions(self.kb))]
        mean, std = ev.normalisation(recs[0].source)
        return FittedNetwork(tuple(r.spec for r in recs), tuple(self.kb.module_params(m) for m in arch.modules),
                             tuple(stitches), source_head(self.kb, arch), mean, std)

    def _torch_device(self):
        import torch

        return self.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")

    def torch_numerics(self, dtype: str) -> list[str]:
        """The PyTorch numerics timed against a JAX dtype: its own (`NUMERICS`), except TF32 where
        PyTorch runs on a CPU (no TF32 there: it would be the strict row again)."""
        numerics = NUMERICS[dtype]
        return [] if numerics == "fp32-tf32" and not self._torch_device().startswith("cuda") else [numerics]

    def _runner(self, numerics: str, mode: str, fold: bool = False):
        from .torch_baseline import TorchRunner

        runner = self._once(("torch", numerics, mode, fold),
                            lambda: TorchRunner(self.kb, self._torch_device(), numerics, TORCH_MODES[mode], fold))
        return runner, f"torch-{mode}" + ("+fold" if fold else "")

    def _resident(self, runner, split, batch_size):
        return self._once(("resident", id(split), batch_size),
                          lambda: runner.resident(split.images, split.labels, batch_size))

    def w1_torch(self, archs, numerics, P, mode: str, fold: bool, max_networks: int):
        from .torch_baseline import timed

        runner, impl = self._runner(numerics, mode, fold)
        row = ("W1", impl, numerics)
        n = min(P, max_networks)
        if self.timed_networks.get(row) == n:  # the same networks as at a smaller population: the same rate
            return
        if self.skip(row, f"W1 {impl} {numerics} P={P}"):
            return
        t_row = time.time()
        data = self._resident(runner, self.val, self.protocol.batch_size)
        prepared = [(a, runner.identity_stitches(a), runner.head(source_head(self.kb, a))) for a in archs[:n]]
        graphs = runner.compiles()
        _, compile_s = timed(lambda: [runner.forward_correct(*p, data) for p in prepared], runner.device)
        built = runner.compiles()
        correct, dt = timed(lambda: [runner.forward_correct(*p, data) for p in prepared], runner.device)
        self.add(Result("W1", impl, DTYPE_OF[numerics], numerics, P, n, dt,
                         compile_s, n * len(data) / dt, "genotype-images/s",
                         *graph_counts(runner.compiled, graphs, built, runner),
                         correct=correct), self._w1_flops(archs[:n]))
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row
        self.timed_networks[row] = n

    def w1_paired(self, archs, dtype, n: int, rounds: int):
        """W1 on the JAX path (per-module loop, or the fused program one network at a time)
        against PyTorch eager network by network, alternating (JAX, PyTorch) so that the drifts
        of a shared machine hit both alike: per-network ratios."""
        from .torch_baseline import timed

        if self.skip(("paired", dtype), f"W1 paired {dtype}"):
            return
        protocol = self._protocol(dtype)
        runner, _ = self._runner(NUMERICS[dtype], "eager")
        archs = archs[:n]
        data = self._resident(runner, self.val, self.protocol.batch_size)
        prepared = [(a, runner.identity_stitches(a), runner.head(source_head(self.kb, a))) for a in archs]
        if self.strategy == "loop":
            ev = self._once(("loop", dtype), lambda: Evaluator(self.kb, protocol, self.fit))
            nets = [self._loop_network(ev, a) for a in archs]

            def jax_correct(i):
                return ev.score(nets[i], self.val)[0]
        else:
            pe, scored = self.w1_fused(dtype)
            one = [self.w1_fitted(pe, [a]) for a in archs]

            def jax_correct(i):
                return int(pe.score_fitted(*one[i], scored)[0])

        def jax_pass(i):
            t = time.time()
            c = jax_correct(i)
            return c, time.time() - t

        def torch_pass(i):
            return timed(lambda: runner.forward_correct(*prepared[i], data), runner.device)

        jax_pass(0), torch_pass(0)  # compile / warm up both
        t_jax, t_torch = np.zeros((rounds, n)), np.zeros((rounds, n))
        correct = []
        for r in range(rounds):
            for i in range(n):
                (cj, t_jax[r, i]), (ct, t_torch[r, i]) = jax_pass(i), torch_pass(i)
                if NUMERICS[dtype] == "fp32-strict" and cj != ct:
                    raise AssertionError(f"W1 paired: JAX counts {cj} correct, PyTorch {ct}, on {archs[i].describe()}")
                correct.append(cj)
        row = {"impl": f"jax-{self.strategy}", "dtype": dtype, "numerics": NUMERICS[dtype], "networks": n,
               "rounds": rounds, **paired_figures(t_jax, t_torch, len(self.val)), "correct": correct[:n]}
        self.paired.append(row)
        self.log(f"W1 paired {NUMERICS[dtype]}: JAX {row['jax_rate']:.1f}, PyTorch eager {row['torch_rate']:.1f} "
                 f"genotype-images/s; per network JAX/eager median {row['ratio_median']:.2f} "
                 f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})")

    # -- W2 ----------------------------------------------------------------------------------------

    def w2_jax(self, archs, dtype, P, group=None, grouped_layout=False):
        impl = fused_impl(group, grouped_layout) if self.strategy == "fused" else "jax-loop"
        row = ("W2", impl, dtype)
        if self.skip(row, f"W2 {impl} {dtype} P={P}"):
            return
        t_row = time.time()
        protocol = self._protocol(dtype)
        if self.strategy == "loop":
            ev = self._once(("w2-loop", dtype), lambda: Evaluator(self.kb, protocol, self.fit))
            programs = jax_programs()
            t = time.time()
            ev.evaluate(archs[0], self.val)
            compile_s = time.time() - t
            built = jax_programs()
            t = time.time()
            res = ev.evaluate_many(archs[:P], self.val)  # module prefixes the networks share: once
            dt = time.time() - t
        else:
            pe = self._w2_fused(dtype, P, group, grouped_layout)
            impl = f"{impl}/{pe.chunk_size}"
            programs = jax_programs()
            t = time.time()
            pe.evaluate(archs[:pe.chunk_size], self.val)
            compile_s = time.time() - t
            built = jax_programs()
            t = time.time()
            res = pe.evaluate(archs[:P], self.val)
            dt = time.time() - t
        self.add(Result("W2", impl, dtype, NUMERICS[dtype], P, P, dt, compile_s, P / dt, "genotypes/s",
                         built - programs, jax_programs() - built, correct=[r.correct for r in res], group=group))
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def w2_jax_phases(self, archs, dtype, P, group=None):
        """The fused W2 program cut into its phases, each its own program timed after compiling:
        the fit pass (stitch solves and BatchNorm statistics, module by module), the head, the
        scoring. Their sum is near the whole program's time (what fusion saves is the
        difference)."""
        impl = fused_impl(group)
        row = ("W2 phases", impl, dtype)
        if self.strategy != "fused" or self.skip(row, f"W2 {impl} phases {dtype} P={P}"):
            return
        t_row = time.time()
        protocol = self._protocol(dtype)
        pe = PopulationEvaluator(self.space, protocol, self.fit, chunk_size=P, devices=jax.devices()[:1], group=group)
        slots = pe.stacked_slots(archs[:P])
        fit_x, fit_y = pe.evaluator.fit_images, pe.evaluator.fit_labels
        scored = pe.device_split(self.val)

        def fit_pass():
            return jax.block_until_ready(_fit_pass_chunk(pe.layout, protocol, pe.group_of(P), pe.banks, slots, fit_x))

        def head(features):
            return jax.block_until_ready(_head_chunk(protocol, self.num_classes, features, fit_y))

        def timed_twice(fn, *args):
            fn(*args)
            t = time.time()
            out = fn(*args)
            return out, time.time() - t

        (fits, features), t_fit = timed_twice(fit_pass)
        heads, t_head = timed_twice(head, features)
        _, t_score = timed_twice(lambda: pe.score_fitted(slots, fits, heads, scored))
        phases = {"fit pass": t_fit, "head": t_head, "score": t_score}
        self.phases.append({"impl": impl, "numerics": NUMERICS[dtype], "population": P, "networks": P,
                            "seconds": phases})
        self.log(f"W2 {impl} phases {NUMERICS[dtype]} P={P}: "
                 + ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def profile(self, archs, dtype, P, group, workload, trace_dir, grouped_layout=False):
        """A `jax.profiler` trace of one fused call, compiled beforehand (W1: scoring `P` fitted
        networks; W2: the whole protocol on a chunk of `P`), summarised by op kind
        (`profile_summary`) under the row's title in `profiles`."""
        impl = fused_impl(group, grouped_layout)
        title = f"{workload} {impl} {NUMERICS[dtype]} P={P}"
        row = ("profile", workload, impl, dtype)
        if self.strategy != "fused" or self.skip(row, f"profile of {title}"):
            return
        t_row = time.time()
        op_phases = None
        if workload == "W1":
            pe, scored = self.w1_fused(dtype, group, grouped_layout)
            fitted = self.w1_fitted(pe, archs[:P])

            def call():
                return pe.score_fitted(*fitted, scored)
        else:
            pe = self._w2_fused(dtype, P, group, grouped_layout)

            def call():
                return pe.evaluate(archs[:P], self.val)

            def op_phases():
                return self._w2_phases(pe, archs)
        self._trace(title, call, trace_dir, op_phases)
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def _w2_phases(self, pe: PopulationEvaluator, archs):
        """The phase of each HLO op of the program `pe.evaluate` runs on a chunk of `archs`
        (`gpu_census.instruction_phases` of `chunk_lowered` compiled: JAX's in-memory cache gives
        back the executable that ran, nothing is compiled)."""
        from .gpu_census import instruction_phases

        return instruction_phases(pe.chunk_lowered(archs, self.val).compile().as_text(), PHASES)

    def profile_grouped_probe(self, archs, dtype, P, trace_dir):
        """`profile` of the grouped probe's call (`jax-probe-grouped`): what the fused W1 profile's
        epilogue fusions become once no transpose sits between the convolutions."""
        title = f"W1 jax-probe-grouped {NUMERICS[dtype]} P={P}"
        row = ("profile", "W1", "jax-probe-grouped", dtype)
        if self.strategy != "fused" or self.skip(row, f"profile of {title}"):
            return
        t_row = time.time()
        self._trace(title, self._probe_call(archs[:P], dtype, True), trace_dir)
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row

    def _trace(self, title: str, call: Callable, trace_dir, op_phases: Callable | None = None):
        """`call` compiled (or read from the cache) outside the trace, then traced once and summarised
        by op kind (`profile_summary`) under `title` in `profiles`, and by phase where `op_phases()`
        (after the first call) gives the phase of each op of the program it runs."""
        from . import profile_summary

        call()
        phases = op_phases() if op_phases else None
        summary = profile_summary.capture(call, Path(trace_dir) / title.replace(" ", "_").replace("=", ""),
                                          op_phases=phases)
        self.profiles[title] = summary
        top = summary["kinds"][0] if summary["kinds"] else {"kind": "-", "share": 0.0}
        self.log(f"profile {title}: {summary['device_seconds']:.3f} s of op time, largest `{top['kind']}` "
                 f"{100 * top['share']:.0f}%")

    def w2_torch(self, archs, numerics, P, mode: str, max_networks: int):
        from .torch_baseline import source_inputs_torch, timed

        runner, impl = self._runner(numerics, mode)
        row = ("W2", impl, numerics)
        n = min(P, max_networks)
        if self.timed_networks.get(row) == n:
            return
        if self.skip(row, f"W2 {impl} {numerics} P={P}"):
            return
        t_row = time.time()
        dtype = DTYPE_OF[numerics]
        protocol = self._protocol(dtype)
        fit = self._resident(runner, self.fit, protocol.batch_size)
        val = self._resident(runner, self.val, protocol.batch_size)
        targets = self._once(("targets", numerics), lambda: source_inputs_torch(self.kb, runner, fit,
                                                                                 protocol.stitch_images))

        def one(a, phases=None):
            return runner.protocol_correct(a, targets, protocol, fit, val, self.num_classes, phases)

        graphs = runner.compiles()
        _, compile_s = timed(lambda: [one(a) for a in archs[:2]], runner.device)
        built = runner.compiles()
        phases: dict = {}
        correct, dt = timed(lambda: [one(a, phases) for a in archs[:n]], runner.device)
        self.add(Result("W2", impl, dtype, numerics, P, n, dt, compile_s, n / dt, "genotypes/s",
                         *graph_counts(runner.compiled, graphs, built, runner), correct=correct, phases=phases))
        self.phases.append({"impl": impl, "numerics": numerics, "population": P, "networks": n, "seconds": phases})
        self.row_time[row] = self.row_time.get(row, 0.0) + time.time() - t_row
        self.timed_networks[row] = n


def run(kb, dataset, protocol, *, granularity="run", val_size=None, fit_seed=0, populations=(1, 8, 64, 256),
        dtypes=("float32", "bfloat16"), workloads=("W1", "W2"), torch_modes=("eager", "compile"),
        torch_fold_modes=("eager", "compile"), torch_max_w1=64, torch_max_w2=16, torch_max_network=2,
        strategy="auto", budget_s=None,
        row_cap_s=None, seed=0, paired=0, paired_rounds=2, phase_population=None, groups=(None,),
        groups_until=None, profile_population=None, trace_dir=None, group_widths=(), log=print,
        checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Every measurement, population by population (small ones first: a budget that runs out
    costs the large points, not whole rows); returns the report. `torch_fold_modes`: the PyTorch
    modes whose W1 rows are also timed with BatchNorm folded (`TORCH_MODES`: `compile-network`,
    W1 only, times at most `torch_max_network` networks, each compiled first); `phase_population`: the
    population the fused W2 program is also timed at phase by phase (None: not); `groups`:
    the fused path's rows, one per group size (`fused_impl`; None: the chunk as one vmap), and
    at populations above `groups_until` (None: at every one) only the group that ran fastest
    so far (`fastest_group`, per workload and dtype: the large points, the slowest to
    compile and run, for the one curve that counts); `profile_population`: the population at
    which each fused row is also traced with the profiler (`Bench.profile`; traces under
    `trace_dir`, summaries in the report); `group_widths`: the grouped probe and the fused program
    in the grouped layout (W1 and W2) also timed with their convolution groups packed up to each
    of these numbers of channels (`layers.packing`);
    `checkpoint(report)`: called with the report so far after each measurement (a session
    killed by its time limit keeps what it measured)."""
    bench = Bench(kb, dataset, protocol, granularity, val_size, fit_seed, strategy, budget_s, log,
                  row_cap_s=row_cap_s, checkpoint=checkpoint and (lambda b: checkpoint(report_of(b))))
    log(f"device: {bench.device}; JAX strategy: {bench.strategy}; validation images: {len(bench.val)}")
    pmax = max(populations)
    w1 = w1_networks(kb, pmax, seed)
    space = SearchSpace(kb, granularity)
    w2 = w2_networks(space, pmax, seed)
    # the fused program scored in the grouped layout, where every op of the knowledge base has a grouped form
    grouped_rows = bench.strategy == "fused" and not grouped.missing(op_of(r.spec) for r in kb.records
                                                                     if r.spec.kind != "head")
    # its rows: unpacked (1), then packed to each width asked
    layout_widths = (1, *[w for w in group_widths if w > 1]) if grouped_rows else ()
    for P in sorted(populations):
        for dtype in dtypes:
            numerics = bench.torch_numerics(dtype) if torch_modes else []
            jax_groups = groups if bench.strategy == "fused" else (None,)
            if groups_until is not None and P > groups_until:
                w1_groups, w2_groups = (fastest_group(bench.results, w, dtype, jax_groups) for w in ("W1", "W2"))
            else:
                w1_groups = w2_groups = jax_groups
            if "W1" in workloads:
                for g in w1_groups:
                    bench.attempt(("W1 jax", dtype, g), bench.w1_jax, w1, dtype, P, g)
                for width in layout_widths:
                    bench.attempt(("W1 jax grouped", dtype, width), bench.w1_jax, w1, dtype, P, None, width)
                for in_channels in (False, True):  # the naive probe, the grouped-layout probe
                    bench.attempt(("W1 jax probe", dtype, in_channels), bench.w1_probe, w1, dtype, P, in_channels)
                for width in layout_widths[1:]:
                    bench.attempt(("W1 jax probe", dtype, width), bench.w1_probe, w1, dtype, P, True, width)
                for num in numerics:
                    for mode in torch_modes:
                        most = torch_max_network if mode == "compile-network" else torch_max_w1
                        for fold in (False, True) if mode in torch_fold_modes else (False,):
                            bench.attempt(("W1 torch", num, mode, fold), bench.w1_torch, w1, num, P, mode, fold,
                                          most)
            if "W2" in workloads:
                for g in w2_groups:
                    bench.attempt(("W2 jax", dtype, g), bench.w2_jax, w2, dtype, P, g)
                    if P == phase_population:
                        bench.attempt(("W2 jax phases", dtype, g), bench.w2_jax_phases, w2, dtype, P, g)
                for width in layout_widths:
                    bench.attempt(("W2 jax grouped", dtype, width), bench.w2_jax, w2, dtype, P, None, width)
                for num in numerics:
                    for mode in [m for m in torch_modes if m in W2_TORCH_MODES]:
                        bench.attempt(("W2 torch", num, mode), bench.w2_torch, w2, num, P, mode, torch_max_w2)
            if P == profile_population:
                for workload, archs in (("W1", w1), ("W2", w2)):
                    if workload in workloads:
                        for g in jax_groups:
                            bench.attempt(("profile", workload, dtype, g), bench.profile, archs, dtype, P, g,
                                          workload, trace_dir)
                        for width in layout_widths:
                            bench.attempt(("profile grouped", workload, dtype, width), bench.profile, archs, dtype,
                                          P, None, workload, trace_dir, width)
                if "W1" in workloads:
                    bench.attempt(("profile", "W1 grouped probe", dtype), bench.profile_grouped_probe, w1, dtype, P,
                                  trace_dir)
    if paired and "W1" in workloads and "eager" in torch_modes:
        for dtype in dtypes:
            bench.w1_paired(w1, dtype, min(paired, pmax), paired_rounds)
    return report_of(bench)


def report_of(bench: Bench) -> dict:
    """What a bench measured so far, as the report `run` returns (and `save` writes)."""
    try:
        import torch
    except ModuleNotFoundError:  # JAX timed alone: no baseline ran
        torch = None
    return {"device": bench.device, "jax": jax.__version__, "torch": torch and torch.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "torch_device": torch and (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
            "strategy": bench.strategy, "protocol": dataclasses.asdict(bench.protocol),
            "validation_images": len(bench.val),
            "results": [dataclasses.asdict(r) for r in bench.results], "paired": bench.paired,
            "phases": bench.phases, "profiles": bench.profiles, "skipped": bench.skipped, "failed": bench.failed,
            "seconds": round(time.time() - bench.t0, 1)}


def speedups(report: dict) -> list[dict]:
    """JAX over each PyTorch row of the same numerics, per workload and population. PyTorch
    runs networks one after another, so its rate does not depend on the population: where a
    PyTorch row was not timed at a population (more networks than it times), its row at the
    largest smaller population stands for it."""
    rows = []
    res = report["results"]
    for r in res:
        if not r["impl"].startswith("jax") or r["impl"].startswith("jax-probe"):
            continue
        torch_rows = {(b["impl"], b["numerics"]) for b in res if b["impl"].startswith("torch")
                      and b["workload"] == r["workload"] and b["numerics"] == r["numerics"]}
        for impl, numerics in sorted(torch_rows):
            base = [b for b in res if (b["workload"], b["impl"], b["numerics"]) == (r["workload"], impl, numerics)
                    and b["population"] <= r["population"]]
            if base:
                b = max(base, key=lambda b: b["population"])
                rows.append({"workload": r["workload"], "impl": r["impl"], "numerics": r["numerics"],
                             "population": r["population"], "vs": impl, "vs_numerics": numerics,
                             "vs_population": b["population"], "speedup": r["rate"] / b["rate"]})
    return rows


def dtype_accuracy(report: dict) -> list[dict]:
    """The accuracy change of the faster numerics (bf16, TF32): per (workload, impl, numerics,
    population), their correct counts minus strict fp32's on the same networks, and how much they
    reorder them (Kendall's tau-b of the two counts; NaN where either side is constant). A JAX row
    is read against the strict row of its own implementation, or else of any JAX protocol row at
    that population: in strict fp32 every driver and group counts the same (`tests/test_population.py`)."""
    from modulenet_jax.ranking import kendall  # scipy.stats: only where a report is read

    rows = []
    res = report["results"]
    for r in res:
        if r["numerics"] == "fp32-strict" or not r.get("correct"):
            continue
        strict = [b for b in res if b["numerics"] == "fp32-strict" and b.get("correct")
                  and (b["workload"], b["population"]) == (r["workload"], r["population"])]
        base = ([b for b in strict if b["impl"] == r["impl"]]
                or ([b for b in strict if _jax_protocol(b["impl"])] if _jax_protocol(r["impl"]) else []))
        if base and len(base[0]["correct"]) == len(r["correct"]):
            d = np.asarray(r["correct"]) - np.asarray(base[0]["correct"])
            rows.append({"workload": r["workload"], "impl": r["impl"], "numerics": r["numerics"],
                         "population": r["population"], "networks": len(d), "mean_change": float(d.mean()),
                         "largest_change": int(d[np.argmax(np.abs(d))]),
                         "tau": kendall(base[0]["correct"], r["correct"]) if len(d) > 1 else float("nan")})
    return rows


def merge(reports: list[dict]) -> dict:
    """Reports of one machine measured in several sessions (say W1 in one device call, W2 in the
    next) under the same XLA_FLAGS as one: their rows, phases, profiles and notes together, their
    seconds summed."""
    devices = {r["device"] for r in reports}
    if len(devices) != 1:
        raise ValueError(f"reports of different machines cannot be merged: {sorted(devices)}")
    flags = {r.get("xla_flags", "") for r in reports}
    if len(flags) != 1:
        raise ValueError(f"reports measured under different XLA_FLAGS cannot be merged: {sorted(flags)}")
    out = {**reports[0], "seconds": round(sum(r["seconds"] for r in reports), 1)}
    for key in ("results", "paired", "phases", "skipped", "failed"):
        out[key] = [item for r in reports for item in r.get(key, [])]
    out["profiles"] = {title: p for r in reports for title, p in r.get("profiles", {}).items()}
    out["validation_images"] = max(r["validation_images"] for r in reports)
    done = measured_names(out)
    out["skipped"] = [s for s in out["skipped"] if s.rsplit(" (", 1)[0] not in done]
    return out


def measured_names(report: dict) -> set[str]:
    """What each of the report's measurements is called in a `Bench.skip` line: a merged
    report drops the lines of one call whose measurement another call made."""
    names = {f"profile of {title}" for title in report.get("profiles", {})}
    for r in report["results"]:
        impl = r["impl"].split("/")[0]  # a fused W2 row's impl carries its chunk: jax-fused/32
        names |= {f"{r['workload']} {impl} {r[k]} P={r['population']}" for k in ("dtype", "numerics")}
    for ph in report.get("phases", []):
        names.add(f"W2 {ph['impl']} phases {DTYPE_OF[ph['numerics']]} P={ph['population']}")
    return names


def _fastest(results: list[dict], workload: str, numerics: str, impl: Callable[[str], bool]) -> dict | None:
    rows = [r for r in results if (r["workload"], r["numerics"]) == (workload, numerics) and impl(r["impl"])]
    return max(rows, key=lambda r: r["rate"], default=None)


def _jax_protocol(impl: str) -> bool:
    return impl.startswith("jax-") and not impl.startswith("jax-probe")


def _name(row: dict) -> str:
    return f"{row['impl']} P={row['population']}"


def targets(report: dict) -> list[dict]:
    """The throughput targets (set for one H100/H200), each with what this report measured: the
    fastest JAX protocol row of the numerics (any population, any group) against the fastest
    `torch.compile` row of the same numerics (per module or whole networks, BatchNorm folded or
    not), as the targets are worded, and the same goal against the fastest PyTorch row of any
    mode (eager too: on an H200 the per-module graphs ran slower than eager), PyTorch at its
    best. `met` is None where a side was not measured."""
    res, out = report["results"], []

    def add(target, goal, value, detail):
        out.append({"target": target, "goal": goal, "measured": value, "detail": detail,
                    "met": None if value is None else value >= goal})

    w1 = _fastest(res, "W1", "bf16", _jax_protocol)
    add("W1 bf16, genotype-images/s", 1e6, w1 and w1["rate"], w1 and _name(w1))
    for numerics, goal in (("bf16", 5.0), ("fp32-tf32", 3.0), ("fp32-strict", 3.0)):
        j = _fastest(res, "W1", numerics, _jax_protocol)
        t = _fastest(res, "W1", numerics, lambda impl: impl.startswith("torch-compile"))
        add(f"W1 {numerics}, JAX / torch.compile", goal, j and t and j["rate"] / t["rate"],
            j and t and f"{_name(j)} / {_name(t)}")
        best = _fastest(res, "W1", numerics, lambda impl: impl.startswith("torch-"))
        add(f"W1 {numerics}, JAX / fastest PyTorch", goal, j and best and j["rate"] / best["rate"],
            j and best and f"{_name(j)} / {_name(best)}")
    w2 = _fastest(res, "W2", "bf16", _jax_protocol)
    add("W2 bf16, genotypes/s", 100.0, w2 and w2["rate"], w2 and _name(w2))
    taus = [a for a in dtype_accuracy(report) if (a["workload"], a.get("numerics", "bf16")) == ("W2", "bf16")
            and _jax_protocol(a["impl"]) and a["networks"] > 1 and not np.isnan(a["tau"])]
    tau = max(taus, key=lambda a: a["networks"], default=None)
    add("W2 bf16 against fp32-strict, Kendall τ of the counts", 0.95, tau and tau["tau"],
        tau and f"{tau['impl']}, {tau['networks']} networks")
    return out


def _rate(rate: float) -> str:
    """Thousands separators for large rates, three significant digits for small ones."""
    return f"{rate:,.1f}" if rate >= 100 else f"{rate:.3g}"


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _section(intro: str, columns: str, rows: list[str]) -> list[str]:
    """A paragraph and its markdown table (nothing without rows); `columns` are separated by
    " | ", a trailing ":" right-aligns one; `rows` are the cells joined the same way."""
    if not rows:
        return []
    names = [c.strip() for c in columns.split(" | ")]
    return ["", intro, "", "| " + " | ".join(n.rstrip(":") for n in names) + " |",
            "| " + " | ".join("---:" if n.endswith(":") else "---" for n in names) + " |", *(f"| {r} |" for r in rows)]


def markdown(report: dict) -> str:
    torch = (f"PyTorch on {report['torch_device']}); jax {report['jax']}, torch {report['torch']}" if report["torch"]
             else f"no PyTorch baseline); jax {report['jax']}")
    lines = [f"Device: **{report['device']}** ({torch}; {report['validation_images']} validation images; JAX strategy "
             f"`{report['strategy']}`; total {report['seconds']} s."
             + (f" XLA_FLAGS: `{report['xla_flags']}`." if report.get("xla_flags") else ""), "",
             "Numerics: `fp32-strict` = JAX `Precision.HIGHEST` / PyTorch with TF32 off; `fp32-tf32` = TF32 "
             "convolutions (JAX `tensorfloat32` / PyTorch's GPU default; fp32 on a CPU); `bf16` = JAX bf16 compute, "
             "fp32 accumulation / PyTorch bf16 autocast. Each JAX row is read against PyTorch rows of its own "
             "numerics. `compiled` = JAX programs lowered or dynamo graphs compiled by the warm-up call (its "
             "time is `compile s`), `again` = by the timed calls on the other networks (0: compiled once, reused). "
             "`jax-probe`: a naive vmap over the W1 networks' modules, BatchNorm folded, no stitch, no mask (a "
             "speed reference for `jax-fused`, not the protocol); `jax-probe-grouped`: the same networks with the "
             "genotypes inside the channel axis from stem to pooling, no transpose between convolutions "
             "(`benchmarks/grouped_probe.py`); `jax-grouped`: the fused program in that layout (W1 scores its "
             "chunk in it, W2 also fits it), the protocol's counts; `-wW`: either with neighbouring genotypes' "
             "convolutions packed into groups of up to W channels, their kernels block-diagonal (more "
             "multiplications in wider groups; TFLOP/s count the networks' own).", "",
             "| workload | impl | numerics | population | networks timed | rate | unit | TFLOP/s | % of peak "
             "| compile s | compiled | again | mean correct |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(report["results"], key=lambda r: (r["workload"], r["numerics"], not r["impl"].startswith("jax"),
                                                     r["impl"], r["population"])):
        lines.append(f"| {r['workload']} | {r['impl']} | {r['numerics']} | {r['population']} | {r['networks_timed']} | "
                     f"{_rate(r['rate'])} | {r['unit']} | {_cell(r['tflops'], '.2f')} | "
                     f"{_cell(r['peak_fraction'] and 100 * r['peak_fraction'], '.1f')} | "
                     f"{_cell(r['compile_seconds'], '.1f')} | {_cell(r['compiles'], 'd')} | "
                     f"{_cell(r['recompiles'], 'd')} | {_cell(r['mean_correct'], '.1f')} |")
    sp = speedups(report)
    lines += _section("JAX against PyTorch, row by row (a PyTorch row timed at a smaller population stands for "
                      "larger ones: it runs networks one after another):",
                      "workload | JAX row | JAX numerics | population: | PyTorch row | PyTorch numerics | x:",
                      [f"{s['workload']} | {s['impl']} | {s['numerics']} | {s['population']} | {s['vs']} "
                       f"(P={s['vs_population']}) | {s['vs_numerics']} | {s['speedup']:.2f}" for s in sp])
    lines += _section("W2 by protocol phase (seconds over the networks timed; share of their sum). The fit pass "
                      "solves the stitches and recalibrates BatchNorm module by module:",
                      "impl | numerics | population: | networks: | phase | seconds: | share:",
                      [f"{ph['impl']} | {ph['numerics']} | {ph['population']} | {ph['networks']} | {k} | {v:.3f} | "
                       f"{100 * v / (sum(ph['seconds'].values()) or 1.0):.0f}%"
                       for ph in report.get("phases", ()) for k, v in ph["seconds"].items()])
    lines += _section("bf16 and TF32 against fp32-strict, same networks, same images (correct predictions per "
                      "network):",
                      "workload | impl | numerics | population: | networks: | mean change: | largest change: | "
                      "Kendall τ:",
                      [f"{a['workload']} | {a['impl']} | {a.get('numerics', 'bf16')} | {a['population']} | "
                       f"{a['networks']} | "
                       f"{a['mean_change']:+.2f} | {a['largest_change']:+d} | {a.get('tau', float('nan')):.3f}"
                       for a in dtype_accuracy(report)])
    lines += _section("Targets (set for one H100/H200; elsewhere for reference): the fastest JAX protocol row of "
                      "each numerics, any population and group, against the fastest `torch.compile` row of the same "
                      "numerics:",
                      "target | goal: | measured: | rows | met",
                      [f"{t['target']} | {_rate(t['goal'])} | {'' if t['measured'] is None else _rate(t['measured'])} "
                       f"| {t['detail'] or 'not measured'} | {'' if t['met'] is None else ('yes' if t['met'] else 'no')}"
                       for t in targets(report)])
    lines += _section("W1, JAX and PyTorch eager of the same numerics timed alternately network by network (median "
                      "of the rounds per network; the fused JAX program runs one network per call):",
                      "JAX | numerics | networks: | rounds: | JAX genotype-images/s: | eager genotype-images/s: | "
                      "JAX/eager per network: median: | min: | max:",
                      [f"{p.get('impl', 'jax-loop')} | {p['numerics']} | {p['networks']} | {p['rounds']} | "
                       f"{_rate(p['jax_rate'])} | "
                       f"{_rate(p['torch_rate'])} | {p['ratio_median']:.2f} | {p['ratio_min']:.2f} | "
                       f"{p['ratio_max']:.2f}" for p in report.get("paired", ())])
    if report.get("profiles"):
        from .profile_summary import markdown as profile_markdown

        lines += ["", "Device time by op kind (`jax.profiler` traces of compiled calls, `benchmarks/profile_summary.py`):",
                  "", profile_markdown(report["profiles"])]
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    if report.get("failed"):
        lines += ["", "Failed (the row stopped there): " + "; ".join(report["failed"])]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    """Rate against population: one panel per workload and numerics, one line per implementation
    (a fused W2 row's chunk left out of its name, so its populations make one curve), each
    implementation in the same colour in every panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def base(impl: str) -> str:
        return impl.split("/")[0]

    present = {r["numerics"] for r in report["results"]}
    numerics = [n for n in ("bf16", "fp32-tf32", "fp32-strict") if n in present] + sorted(
        present - {"bf16", "fp32-tf32", "fp32-strict"})
    workloads = [w for w in ("W1", "W2") if any(r["workload"] == w for r in report["results"])] or ["W1"]
    impls = sorted({base(r["impl"]) for r in report["results"]})
    colour = {impl: plt.get_cmap("tab20")(i % 20) for i, impl in enumerate(impls)}
    fig, axes = plt.subplots(len(workloads), max(len(numerics), 1), figsize=(5 * max(len(numerics), 1),
                             4 * len(workloads)), squeeze=False)
    for row, wl in zip(axes, workloads):
        for ax, num in zip(row, numerics or [""]):
            rows = [r for r in report["results"] if (r["workload"], r["numerics"]) == (wl, num)]
            for impl in sorted({base(r["impl"]) for r in rows}):
                pts = sorted((r["population"], r["rate"]) for r in rows if base(r["impl"]) == impl)
                ax.plot(*zip(*pts), marker="o", color=colour[impl], label=impl)
            ax.set(xscale="log", yscale="log", xlabel="population size",
                   ylabel="genotype-images/s" if wl == "W1" else "genotypes/s", title=f"{wl} {num}")
            if rows:
                ax.legend(fontsize=7)
    fig.suptitle(report["device"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, table: str, out_dir, stem: str) -> Path:
    """`<stem>.json` (the report) and `<stem>.md` (its table) under `out_dir`; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table + "\n")
    return out


def save(report: dict, out_dir, stem: str) -> Path:
    out = write_report(report, markdown(report), out_dir, stem)
    plot(report, out / f"{stem}.png")
    return out
