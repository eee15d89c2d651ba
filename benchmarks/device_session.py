"""One prepared accelerator session: the throughput benchmark, then the fidelity measurement.

Needs no config file, pymoo or TFDS (the device image has neither): it reads a saved
knowledge base and a dataset bundle, both made here by `prepare_device_bundle.py`:

    python -m modulenet_jax.benchmarks.prepare_device_bundle --out .device [--data ... --weights-dir ...]
    python -m modulenet_jax.benchmarks.device_session --kb .device/kb.npz --data .device/cifar10.npz --out "$OUT"

Results: OUT/bench/<device>.{json,md,png} and OUT/fidelity/report.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import traceback

import jax

from . import throughput
from .prepare_device_bundle import load_kb
from modulenet_jax.data import load_dataset
from modulenet_jax.errors import run_script
from modulenet_jax.protocol import Protocol
from modulenet_jax.fidelity import FINETUNE, VARIANTS, measure, sample_genotypes
from modulenet_jax.space import Architecture

GPU_PROTOCOL = Protocol(fit_images=2048, stitch_images=512, batch_size=500)
FIDELITY_VARIANTS = ("plain", "plain+bn", "stitch", "stitch+bn", "stitch+ridge", "stitch-256", "stitch-2048")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kb", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bench-budget", type=float, default=300)
    p.add_argument("--fidelity-budget", type=float, default=200)
    p.add_argument("--populations", nargs="+", type=int, default=[1, 8, 64, 256])
    p.add_argument("--val-size", type=int)
    p.add_argument("--per-granularity", type=int, default=12)
    p.add_argument("--finetune-images", type=int, default=10240)
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    p.add_argument("--skip", nargs="*", default=(), choices=["bench", "fidelity"])
    p.add_argument("--strategy", default="auto", choices=["auto", "fused", "loop"])
    p.add_argument("--torch-modes", nargs="*", default=["eager", "compile"])
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    out = Path(args.out)
    t0 = time.time()
    kb = load_kb(args.kb)
    dataset = load_dataset(args.data)
    protocol = GPU_PROTOCOL
    if args.quick:
        protocol = dataclasses.replace(protocol, fit_images=128, stitch_images=64, batch_size=50, head_steps=10)
    print(f"devices: {jax.devices()}; loaded in {time.time() - t0:.1f} s", flush=True)
    if "bench" not in args.skip:
        try:
            report = throughput.run(kb, dataset, protocol, granularity="run", val_size=args.val_size,
                                    populations=tuple(args.populations), budget_s=args.bench_budget,
                                    torch_max_w2=4 if args.quick else 16, strategy=args.strategy,
                                    torch_modes=tuple(args.torch_modes),
                                    log=lambda m: print(m, flush=True))
            throughput.save(report, out / "bench", "bench")
            print(throughput.markdown(report), flush=True)
        except Exception:  # noqa: BLE001 - keep going to the fidelity part, the log has the trace
            traceback.print_exc()
    if "fidelity" not in args.skip:
        networks = [("source", Architecture.of_source(kb, s)) for s in kb.sources]
        networks += sample_genotypes(kb, ("run", "block"), args.per_granularity, seed=0)
        ft = dataclasses.replace(FINETUNE, images=args.finetune_images)
        report = measure(kb, dataset, protocol, {v: VARIANTS[v] for v in FIDELITY_VARIANTS}, networks, ft,
                         args.val_size, 0, out / "fidelity", log=lambda m: print(m, flush=True),
                         budget_s=args.fidelity_budget)
        print(json.dumps({k: report[k] for k in ("networks", "tau", "tau_random_only", "tau_by_kind")}, indent=1))
    print(f"total {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
