"""`modulenet bench`: how many candidate networks per second, against PyTorch in the same process.

Workloads on the CIFAR ResNet knowledge base:
- W1, forward only: networks with nine blocks per stage (a stitch before every block, identity
  where there is no junction; each network's head is its last block's source head), the
  validation images in batches: genotype-images per second;
- W2, the whole protocol (stitches, head, scoring) on networks of the configured space:
  genotypes per second.
Each is measured for the JAX path (`fused`: one vmapped program per population chunk, for
accelerators; `loop`: one compiled call per module, for CPUs, in W2 computing the module prefixes
several networks share once, as a search does), PyTorch eager and PyTorch with
`torch.compile` (networks one after another), in fp32 and bf16, for several population sizes.
Compile time is reported apart and excluded from the rates. fp32 is true fp32 on both sides
(TF32 disabled in PyTorch, `Precision.HIGHEST` in JAX).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from modulenet_jax.data import Dataset, protocol_split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.population import PopulationEvaluator
from modulenet_jax.protocol import FittedNetwork, Protocol, count_correct
from modulenet_jax.space import Architecture, SearchSpace

# Dense peak FLOP/s by device kind, from the vendors' datasheets (SXM parts): (fp32, bf16).
PEAK_FLOPS = {"H100": (67e12, 989e12), "H200": (67e12, 989e12), "A100": (19.5e12, 312e12)}


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


def peak_flops(name: str, dtype: str) -> float | None:
    for key, (fp32, bf16) in PEAK_FLOPS.items():
        if key in name:
            return fp32 if dtype == "float32" else bf16
    return None


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


def uniform_flops(kb: KnowledgeBase, arch: Architecture, num_classes: int) -> int:
    """FLOPs per image of a network with a 1x1 stitch before every block (what W1 executes)."""
    total = 0
    for m in arch.modules:
        r = kb.record(m)
        total += r.flops
        if r.spec.kind == "block":
            total += 2 * r.input_resolution ** 2 * r.spec.in_channels ** 2
    return total + 2 * kb.record(arch.modules[-1]).spec.out_channels * num_classes


def _head(kb, arch):
    return kb.module_params(f"{kb.record(arch.modules[-1]).source}/head")["fc"]


def _identity(c, dtype=jnp.float32):
    return {"kernel": jnp.eye(c, dtype=dtype), "bias": jnp.zeros((c,), dtype)}


@dataclasses.dataclass
class Result:
    workload: str
    impl: str
    dtype: str
    population: int
    networks_timed: int
    seconds: float
    compile_seconds: float | None
    rate: float  # genotype-images/s (W1) or genotypes/s (W2)
    unit: str
    tflops: float | None = None
    peak_fraction: float | None = None
    mean_correct: float | None = None
    correct: list[int] | None = None  # per network timed, in order: what the dtype comparison reads

    def __post_init__(self):
        if self.correct is not None:
            self.correct = [int(c) for c in np.asarray(self.correct).ravel()]
            self.mean_correct = float(np.mean(self.correct))


class Bench:
    """Runs the measurements in order, stopping (and saying so) once the time budget is spent."""

    def __init__(self, kb: KnowledgeBase, dataset: Dataset, protocol: Protocol, space_granularity: str,
                 val_size: int | None, fit_seed: int, strategy: str, budget_s: float | None,
                 log: Callable[[str], None] = print, torch_device: str | None = None):
        self.kb, self.protocol, self.log = kb, protocol, log
        self.strategy = strategy if strategy != "auto" else ("loop" if jax.devices()[0].platform == "cpu" else "fused")
        self.val = protocol_split(dataset, "val", val_size)
        self.fit = protocol_split(dataset, "train", protocol.fit_images, seed=fit_seed)
        self.space = SearchSpace(kb, space_granularity)
        self.block_space = SearchSpace(kb, "block")
        self.num_classes = dataset.num_classes
        self.device = device_name()
        self.budget_s, self.t0 = budget_s, time.time()
        self.results: list[Result] = []
        self.skipped: list[str] = []
        self.paired: list[dict] = []
        self.torch_device = torch_device

    def _over_budget(self, what: str) -> bool:
        if self.budget_s is not None and time.time() - self.t0 > self.budget_s:
            self.skipped.append(what)
            self.log(f"skipped (time budget): {what}")
            return True
        return False

    def _protocol(self, dtype):
        return dataclasses.replace(self.protocol, dtype=dtype)

    def _add(self, r: Result, flops_per_image: float | None = None):
        if flops_per_image is not None and r.workload == "W1":
            r.tflops = r.rate * flops_per_image / 1e12
            peak = peak_flops(self.device, r.dtype)
            r.peak_fraction = None if peak is None else r.tflops * 1e12 / peak
        self.results.append(r)
        self.log(f"{r.workload} {r.impl:14s} {r.dtype:8s} P={r.population:4d}: {_rate(r.rate):>12s} {r.unit}"
                 + (f" ({r.tflops:.1f} TFLOP/s)" if r.tflops else "")
                 + (f", compile {r.compile_seconds:.1f} s" if r.compile_seconds else ""))

    # -- W1 ----------------------------------------------------------------------------------------

    def w1_jax(self, archs, dtype, populations):
        protocol = self._protocol(dtype)
        n_img = len(self.val)
        flops = np.mean([uniform_flops(self.kb, a, self.num_classes) for a in archs])
        if self.strategy == "loop":
            ev = Evaluator(self.kb, protocol, self.fit)
            for P in populations:
                if self._over_budget(f"W1 jax-loop {dtype} P={P}"):
                    return
                nets = [self._loop_network(ev, a) for a in archs[:P]]
                t = time.time()
                count_correct(nets[0].logits, self.val, protocol.batch_size, protocol.jnp_dtype)
                compile_s = time.time() - t
                t = time.time()
                correct = [count_correct(n.logits, self.val, protocol.batch_size, protocol.jnp_dtype)[0] for n in nets]
                dt = time.time() - t
                self._add(Result("W1", "jax-loop", dtype, P, P, dt, compile_s, P * n_img / dt, "genotype-images/s",
                                 correct=correct), flops)
            return
        pe = PopulationEvaluator(self.block_space, protocol, self.fit, chunk_size=max(populations))
        scored = pe.device_split(self.val)
        for P in populations:
            if self._over_budget(f"W1 jax-fused {dtype} P={P}"):
                return
            idx, active, _ = pe.stacked_slots(archs[:P])
            stitch_everywhere = active & (np.arange(active.shape[1]) > 0)  # a stitch before every block
            slots = (idx, active, stitch_everywhere)
            fits = pe.published_fits(archs[:P])
            heads = jax.tree_util.tree_map(lambda *h: jnp.stack(h), *[_head(self.kb, a) for a in archs[:P]])
            t = time.time()
            pe.score_fitted(slots, fits, heads, scored)
            compile_s = time.time() - t
            times = []
            for _ in range(3):
                t = time.time()
                correct = pe.score_fitted(slots, fits, heads, scored)
                times.append(time.time() - t)
            dt = float(np.median(times))
            self._add(Result("W1", "jax-fused", dtype, P, P, dt, compile_s, P * n_img / dt, "genotype-images/s",
                             correct=correct), flops)

    def _loop_network(self, ev: Evaluator, arch):
        recs = [self.kb.record(m) for m in arch.modules]
        stitches = [None] + [_identity(r.spec.in_channels) for r in recs[1:]]
        mean, std = ev.normalisation(recs[0].source)
        return FittedNetwork(tuple(r.spec for r in recs), tuple(self.kb.module_params(m) for m in arch.modules),
                             tuple(stitches), _head(self.kb, arch), mean, std)

    def _torch_runner(self, dtype: str, compile_: bool):
        """(runner, impl name, device): true fp32 (no TF32) or bf16, eager or compiled."""
        import torch

        from .torch_baseline import TorchRunner

        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        device = self.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
        tdtype = torch.float32 if dtype == "float32" else torch.bfloat16
        return TorchRunner(self.kb, device, tdtype, compile_), "torch-compile" if compile_ else "torch-eager", device

    def w1_torch(self, archs, dtype, populations, compile_: bool, max_networks: int):
        from .torch_baseline import timed

        runner, impl, device = self._torch_runner(dtype, compile_)
        flops = np.mean([uniform_flops(self.kb, a, self.num_classes) for a in archs])
        images, labels = self.val.images, self.val.labels
        _, compile_s = timed(lambda: runner.forward_correct(archs[0], runner.identity_stitches(archs[0]),
                                                             self._torch_head(runner, archs[0]), images, labels,
                                                             self.protocol.batch_size), device)
        for P in populations:
            if self._over_budget(f"W1 {impl} {dtype} P={P}"):
                return
            n = min(P, max_networks)
            prepared = [(a, runner.identity_stitches(a), self._torch_head(runner, a)) for a in archs[:n]]
            correct, dt = timed(lambda: [runner.forward_correct(a, s, h, images, labels, self.protocol.batch_size)
                                         for a, s, h in prepared], device)
            self._add(Result("W1", impl, dtype, P, n, dt, compile_s, n * len(images) / dt, "genotype-images/s",
                             correct=correct), flops)

    def _torch_head(self, runner, arch):
        import torch

        h = _head(self.kb, arch)
        return (torch.from_numpy(np.array(h["kernel"])).to(runner.device, runner.dtype),
                torch.from_numpy(np.array(h["bias"])).to(runner.device, runner.dtype))

    def w1_paired(self, archs, dtype, n: int, rounds: int):
        """W1 on the per-module JAX path against PyTorch eager network by network, alternating
        (JAX, PyTorch) so that the drifts of a shared machine hit both alike: per-network ratios."""
        from .torch_baseline import timed

        if self.strategy != "loop" or self._over_budget(f"W1 paired {dtype}"):
            return
        protocol = self._protocol(dtype)
        ev = Evaluator(self.kb, protocol, self.fit)
        runner, _, device = self._torch_runner(dtype, False)
        archs = archs[:n]
        nets = [self._loop_network(ev, a) for a in archs]
        prepared = [(a, runner.identity_stitches(a), self._torch_head(runner, a)) for a in archs]
        images, labels, bs = self.val.images, self.val.labels, self.protocol.batch_size

        def jax_pass(i):
            t = time.time()
            c = count_correct(nets[i].logits, self.val, bs, protocol.jnp_dtype)[0]
            return c, time.time() - t

        def torch_pass(i):
            return timed(lambda: runner.forward_correct(*prepared[i], images, labels, bs), device)

        jax_pass(0), torch_pass(0)  # compile / warm up both
        t_jax, t_torch = np.zeros((rounds, n)), np.zeros((rounds, n))
        correct = []
        for r in range(rounds):
            for i in range(n):
                (cj, t_jax[r, i]), (ct, t_torch[r, i]) = jax_pass(i), torch_pass(i)
                if cj != ct:
                    raise AssertionError(f"W1 paired: JAX counts {cj} correct, PyTorch {ct}, on {archs[i].describe()}")
                correct.append(cj)
        ratio = np.median(t_torch, axis=0) / np.median(t_jax, axis=0)  # JAX speed over PyTorch's, per network
        row = {"dtype": dtype, "networks": n, "rounds": rounds,
               "jax_rate": n * len(images) / float(np.median(t_jax, axis=0).sum()),
               "torch_rate": n * len(images) / float(np.median(t_torch, axis=0).sum()),
               "ratio_median": float(np.median(ratio)), "ratio_min": float(ratio.min()),
               "ratio_max": float(ratio.max()), "correct": correct[:n]}
        self.paired.append(row)
        self.log(f"W1 paired {dtype}: JAX {row['jax_rate']:.1f}, PyTorch eager {row['torch_rate']:.1f} "
                 f"genotype-images/s; per network JAX/eager median {row['ratio_median']:.2f} "
                 f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})")

    # -- W2 ----------------------------------------------------------------------------------------

    def w2_jax(self, archs, dtype, populations):
        protocol = self._protocol(dtype)
        if self.strategy == "loop":
            ev = Evaluator(self.kb, protocol, self.fit)
            ev.evaluate(archs[0], self.val)
            for P in populations:
                if self._over_budget(f"W2 jax-loop {dtype} P={P}"):
                    return
                t = time.time()
                res = ev.evaluate_many(archs[:P], self.val)  # module prefixes the networks share: once
                dt = time.time() - t
                self._add(Result("W2", "jax-loop", dtype, P, P, dt, None, P / dt, "genotypes/s",
                                 correct=[r.correct for r in res]))
            return
        pe = PopulationEvaluator(self.space, protocol, self.fit)
        memory_chunk = pe.chunk_size
        for P in populations:
            if self._over_budget(f"W2 jax-fused {dtype} P={P}"):
                return
            pe.chunk_size = min(P, memory_chunk)
            t = time.time()
            pe.evaluate(archs[:pe.chunk_size], self.val)
            compile_s = time.time() - t
            t = time.time()
            res = pe.evaluate(archs[:P], self.val)
            dt = time.time() - t
            self._add(Result("W2", f"jax-fused/{pe.chunk_size}", dtype, P, P, dt, compile_s, P / dt, "genotypes/s",
                             correct=[r.correct for r in res]))

    def w2_torch(self, archs, dtype, populations, compile_: bool, max_networks: int):
        from .torch_baseline import source_inputs_torch, timed

        runner, impl, device = self._torch_runner(dtype, compile_)
        targets = source_inputs_torch(self.kb, runner, self.fit.images, self.protocol.stitch_images)
        protocol = self._protocol(dtype)

        def one(a):
            return runner.protocol_correct(a, targets, protocol, self.fit.images, self.fit.labels,
                                           self.val.images, self.val.labels, self.num_classes)

        _, compile_s = timed(lambda: [one(a) for a in archs[:2]], device)
        for P in populations:
            if self._over_budget(f"W2 {impl} {dtype} P={P}"):
                return
            n = min(P, max_networks)
            correct, dt = timed(lambda: [one(a) for a in archs[:n]], device)
            self._add(Result("W2", impl, dtype, P, n, dt, compile_s, n / dt, "genotypes/s",
                             correct=correct))


def run(kb, dataset, protocol, *, granularity="run", val_size=None, fit_seed=0, populations=(1, 8, 64, 256),
        dtypes=("float32", "bfloat16"), workloads=("W1", "W2"), torch_modes=("eager", "compile"),
        torch_max_w1=64, torch_max_w2=16, strategy="auto", budget_s=None, seed=0, paired=0, paired_rounds=2,
        log=print) -> dict:
    bench = Bench(kb, dataset, protocol, granularity, val_size, fit_seed, strategy, budget_s, log)
    log(f"device: {bench.device}; JAX strategy: {bench.strategy}; validation images: {len(bench.val)}")
    pmax = max(populations)
    w1 = w1_networks(kb, pmax, seed)
    space = SearchSpace(kb, granularity)
    rng = np.random.default_rng(seed)
    w2 = [space.decode(space.sample(rng)) for _ in range(pmax)]
    # Small populations of every workload, dtype and implementation first, then the large ones: a
    # time budget that runs out then costs the large points, not whole rows of the table.
    for group in (tuple(p for p in populations if p <= 8), tuple(p for p in populations if p > 8)):
        if not group:
            continue
        for dtype in dtypes:
            if "W1" in workloads:
                bench.w1_jax(w1, dtype, group)
                for mode in torch_modes:
                    bench.w1_torch(w1, dtype, group, mode == "compile", torch_max_w1)
            if "W2" in workloads:
                bench.w2_jax(w2, dtype, group)
                for mode in torch_modes:
                    bench.w2_torch(w2, dtype, group, mode == "compile", torch_max_w2)
    if paired and "W1" in workloads and "eager" in torch_modes:
        for dtype in dtypes:
            bench.w1_paired(w1, dtype, min(paired, pmax), paired_rounds)
    try:
        import torch
    except ModuleNotFoundError:  # JAX timed alone: no baseline ran
        torch = None
    return {"device": bench.device, "jax": jax.__version__, "torch": torch and torch.__version__,
            "torch_device": torch and (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"),
            "strategy": bench.strategy, "protocol": dataclasses.asdict(protocol), "validation_images": len(bench.val),
            "results": [dataclasses.asdict(r) for r in bench.results], "paired": bench.paired,
            "skipped": bench.skipped,
            "seconds": round(time.time() - bench.t0, 1)}


def speedups(report: dict) -> list[dict]:
    """JAX over each PyTorch mode, per workload, dtype and population."""
    rows = []
    res = report["results"]
    for r in res:
        if not r["impl"].startswith("jax"):
            continue
        for mode in ("torch-eager", "torch-compile"):
            base = [b for b in res if b["workload"] == r["workload"] and b["dtype"] == r["dtype"]
                    and b["impl"] == mode and b["population"] == r["population"]]
            if base:
                rows.append({"workload": r["workload"], "dtype": r["dtype"], "population": r["population"],
                             "vs": mode, "speedup": r["rate"] / base[0]["rate"]})
    return rows


def dtype_accuracy(report: dict) -> list[dict]:
    """The accuracy change of bf16 compute: per (workload, impl, population), bf16's correct counts
    minus fp32's on the same networks."""
    rows = []
    res = report["results"]
    for r in res:
        if r["dtype"] != "bfloat16" or not r.get("correct"):
            continue
        base = [b for b in res if b["dtype"] == "float32" and b.get("correct") and
                (b["workload"], b["impl"], b["population"]) == (r["workload"], r["impl"], r["population"])]
        if base and len(base[0]["correct"]) == len(r["correct"]):
            d = np.asarray(r["correct"]) - np.asarray(base[0]["correct"])
            rows.append({"workload": r["workload"], "impl": r["impl"], "population": r["population"],
                         "networks": len(d), "mean_change": float(d.mean()),
                         "largest_change": int(d[np.argmax(np.abs(d))])})
    return rows


def _rate(rate: float) -> str:
    """Thousands separators for large rates, three significant digits for small ones."""
    return f"{rate:,.1f}" if rate >= 100 else f"{rate:.3g}"


def markdown(report: dict) -> str:
    torch = (f"PyTorch on {report['torch_device']}); jax {report['jax']}, torch {report['torch']}" if report["torch"]
             else f"no PyTorch baseline); jax {report['jax']}")
    lines = [f"Device: **{report['device']}** ({torch}; {report['validation_images']} validation images; JAX strategy "
             f"`{report['strategy']}`; total {report['seconds']} s.", "",
             "| workload | impl | dtype | population | networks timed | rate | unit | TFLOP/s | % of peak | compile s | mean correct |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in sorted(report["results"], key=lambda r: (r["workload"], r["dtype"] != "float32",
                                                     not r["impl"].startswith("jax"), "compile" in r["impl"],
                                                     r["population"])):
        tf = "" if r["tflops"] is None else f"{r['tflops']:.2f}"
        pk = "" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.1f}"
        cs = "" if r["compile_seconds"] is None else f"{r['compile_seconds']:.1f}"
        mc = "" if r["mean_correct"] is None else f"{r['mean_correct']:.1f}"
        lines.append(f"| {r['workload']} | {r['impl']} | {r['dtype']} | {r['population']} | {r['networks_timed']} | "
                     f"{_rate(r['rate'])} | {r['unit']} | {tf} | {pk} | {cs} | {mc} |")
    sp = speedups(report)
    if sp:
        lines += ["", "| workload | dtype | population | JAX speed-up over | x |", "| --- | --- | ---: | --- | ---: |"]
        lines += [f"| {s['workload']} | {s['dtype']} | {s['population']} | {s['vs']} | {s['speedup']:.2f} |" for s in sp]
    acc = dtype_accuracy(report)
    if acc:
        lines += ["", "bf16 against fp32, same networks, same images (correct predictions per network):", "",
                  "| workload | impl | population | networks | mean change | largest change |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {a['workload']} | {a['impl']} | {a['population']} | {a['networks']} | {a['mean_change']:+.2f} | "
                  f"{a['largest_change']:+d} |" for a in acc]
    if report.get("paired"):
        lines += ["", "W1, JAX (per-module loop) and PyTorch eager timed alternately network by network "
                  "(median of the rounds per network):", "",
                  "| dtype | networks | rounds | JAX genotype-images/s | eager genotype-images/s | JAX/eager per network: median | min | max |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {p['dtype']} | {p['networks']} | {p['rounds']} | {_rate(p['jax_rate'])} | {_rate(p['torch_rate'])} | "
                  f"{p['ratio_median']:.2f} | {p['ratio_min']:.2f} | {p['ratio_max']:.2f} |" for p in report["paired"]]
    if report["skipped"]:
        lines += ["", "Skipped (time budget): " + "; ".join(report["skipped"])]
    return "\n".join(lines)


def plot(report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, wl in zip(axes, ("W1", "W2")):
        rows = [r for r in report["results"] if r["workload"] == wl]
        for key in sorted({(r["impl"], r["dtype"]) for r in rows}):
            pts = sorted((r["population"], r["rate"]) for r in rows if (r["impl"], r["dtype"]) == key)
            ax.plot(*zip(*pts), marker="o", label=f"{key[0]} {key[1]}")
        ax.set(xscale="log", yscale="log", xlabel="population size",
               ylabel="genotype-images/s" if wl == "W1" else "genotypes/s", title=f"{wl} on {report['device']}")
        if rows:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
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
