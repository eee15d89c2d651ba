"""The census (`benchmarks/gpu_census.py`) of the programs the H200 measured on 2026-11-29, which
predate `PopulationEvaluator.score_lowered`/`evaluate_lowered`: their jitted functions traced here
with that commit's own signatures. Run it from a checkout of 8e3a4ce, with the census's environment
(its docstring), this repository's path as the first argument:

    git worktree add /tmp/measured 8e3a4ce && ln -s "$PWD/runs" /tmp/measured/runs && cd /tmp/measured
    /tmp/cuda/bin/python <this repository>/benchmarks/results/nvidia-h200-census-8e3a4ce.py <this repository>

It writes nvidia-h200-census-8e3a4ce.{json,md} beside itself (W1 and W2, vmapped, bf16 and strict
fp32, P = 64: the layout and rows that run measured)."""

import dataclasses
import importlib.util
import os
import sys
import time
from pathlib import Path

repository = Path(sys.argv[1]).resolve()
spec = importlib.util.spec_from_file_location("gpu_census", repository / "benchmarks" / "gpu_census.py")
gpu_census = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_census)  # with the installed (this repository's) modulenet_jax.errors
gpu_census.compile_only_environment()
for name in [m for m in sys.modules if m.split(".")[0] == "modulenet_jax"]:
    del sys.modules[name]
sys.path.insert(0, os.getcwd())  # from here on the checkout of 8e3a4ce: its modulenet_jax and benchmarks

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

# as traced on a GPU: 8e3a4ce's batch_stats chose its slicing by the default backend
jax.default_backend = lambda: "gpu"

from benchmarks import throughput  # noqa: E402
from benchmarks.prepare_device_bundle import load_kb  # noqa: E402
from modulenet_jax import population  # noqa: E402
from modulenet_jax.data import load_dataset  # noqa: E402
from modulenet_jax.protocol import Protocol  # noqa: E402

P, CARD = 64, "NVIDIA H200"
BANDWIDTH = 4.8e12  # this repository's throughput.PEAK_BANDWIDTH["H200"]: 8e3a4ce's throughput has none
mesh = gpu_census.gpu_mesh(CARD, BANDWIDTH)
protocol = Protocol(fit_images=2048, stitch_images=512, batch_size=500)
bench = throughput.Bench(load_kb("runs/device/kb.npz"), load_dataset("runs/device/cifar10.npz"), protocol, "run",
                         5000, 0, "fused", None, log=lambda m: None)
carry = population.batch_carry(protocol, "gpu")
report = {"card": CARD, "jax": jax.__version__, "cudnn": ".".join(map(str, gpu_census.cudnn_version())),
          "population": P, "images": len(bench.val), "batch": protocol.batch_size, "carry": carry, "variants": []}
w1 = throughput.w1_networks(bench.kb, P, 0)
rng = np.random.default_rng(0)
w2 = [bench.space.decode(bench.space.sample(rng)) for _ in range(P)]  # 8e3a4ce's run(): W2's networks


def spec(axis_sharded: bool):
    sharding = NamedSharding(mesh, PartitionSpec("pop") if axis_sharded else PartitionSpec())
    return lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a), sharding=sharding)


for workload in ("W1", "W2"):
    for dtype in ("bfloat16", "float32"):
        t = time.time()
        if workload == "W1":
            pe, scored = bench._w1_fused(dtype)
            slots, fits, heads = bench._w1_fitted(pe, w1)
            per_genotype, units = (tuple(slots), fits, heads), P * len(bench.val)
            shared = (pe.banks, *scored)
            static, program = (pe.layout, pe.protocol, P, carry, mesh), population._score_chunk
        else:
            pe = population.PopulationEvaluator(bench.space, dataclasses.replace(protocol, dtype=dtype), bench.fit,
                                                chunk_size=P)
            per_genotype, units = (tuple(pe.stacked_slots(w2)),), P
            shared = (pe.banks, np.asarray(pe.evaluator.fit_images), np.asarray(pe.evaluator.fit_labels),
                      *pe.device_split(bench.val))
            static = (pe.layout, pe.protocol, pe.evaluator.num_classes, P, carry, mesh)
            program = population._evaluate_chunk
        per_genotype = jax.tree_util.tree_map(spec(True), per_genotype)
        banks, *rest = jax.tree_util.tree_map(spec(False), shared)
        lowered = program.trace(*static, banks, *per_genotype, *rest).lower(lowering_platforms=("cuda",))
        hlo = lowered.compile().as_text()
        rows = gpu_census.census(hlo)
        done = gpu_census.summary(rows, units, BANDWIDTH,
                                  throughput.peak_flops(CARD, throughput.NUMERICS[dtype]))
        report["variants"].append({"workload": workload, "layout": "vmapped", "dtype": dtype,
                                   "compile_s": time.time() - t, "rows": rows, "summary": done})
        print(f"{workload} {dtype}: {done['hbm_bound']:,.1f} HBM-bound, {done['roofline']:,.1f} roofline", flush=True)
throughput.write_report(report, gpu_census.markdown(report), Path(__file__).parent, "nvidia-h200-census-8e3a4ce")
