"""One prepared accelerator session for throughput: every W1 and W2 row, JAX and PyTorch in
each numerics (`throughput.py`), small populations first, within a device-time budget.

    python -m benchmarks.prepare_device_bundle --out runs/device \
        --data ../shared/data/cifar10-jpeg --weights-dir ../shared/weights/cifar-resnet   # here, once (~55 MB)
    python -m benchmarks.speed_session --kb runs/device/kb.npz --data runs/device/cifar10.npz --out "$OUT"
    python -m benchmarks.speed_session --kb runs/device/kb.npz --data runs/device/cifar10.npz --out /tmp/q --quick

Runs from the repository root without installing and needs no config file, pymoo or TFDS.
Populations go from small to large (1, 8, 64, 256: the curve; any list up to 256 works),
every row at each before the next; a row stops once it has used `--row-cap` seconds and the
whole bench after `--budget`, so running out of time costs the large points, not whole rows
(a row that raises is reported and stopped, the others go on). Compiled programs persist
under `--cache` (JAX's compilation cache and TorchInductor's), so a second session on a
machine that kept the folder compiles nothing again. `--quick` is the same script, tiny (a
few images, populations 1 and 2, no time limits) to check it on a CPU; it runs the fused JAX
path as a GPU does unless `--strategy` says otherwise.

The fused JAX path is timed once per `--groups` size (`population.by_group`: by default the chunk
as one vmap, which ran fastest on an H200; `--groups 0 1 8` adds one and eight genotypes at a
time) up to `--groups-until` (64), and above it only in the group that ran fastest there (per
workload and dtype: the 256 points are the slowest to compile and run); at `--profile-population`
each of its rows is traced with `jax.profiler` and summarised by op kind (`profile_summary.py`;
the traces stay beside the cache, the summary goes into the report), W2's also by the protocol's
phase (its ops' named scopes, read from the executable that ran: op names are part of the
compile cache's key). Beside them, W1 and W2 time the fused program in the grouped layout (W2
fitting in it too) (`jax-grouped`, traced too), and W1 two speed references: the naive vmap probe
and the grouped-layout probe (`grouped_probe.py`, traced at the profile population too); the
grouped rows (traced too) and probe also with neighbouring genotypes' convolutions packed into
groups of up to 64 channels (`--group-widths`, `jax-grouped-w64`: block-diagonal kernels, 4 times
the multiplications in the first stage, whose 16-channel groups may leave the tensor cores idle).
Numerics: bf16, TF32 and strict fp32, in that order (`--dtypes`).

Results: OUT/speed.{json,md,png} (the report, its tables, the curves) and OUT/speed.log; the
json and md are rewritten after every measurement, so a session cut short keeps them. A budget
too small for one call can be spread over several (`--workloads W1`, then `W2`, each to its own
OUT), and `--merge A/speed.json B/speed.json --out DIR` joins their reports into one.
The report records the environment's XLA_FLAGS, and reports of different flags do not merge: a
call with `XLA_FLAGS=--xla_gpu_enable_command_buffer=+CONDITIONAL,+WHILE` (XLA then runs the fused
program's conditionals and loops as CUDA-graph nodes on the device, where by default each one
waits for the host) is its own report, read against the default flags' rows of the same card.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from modulenet_jax.errors import UserError, run_script

GPU_POPULATIONS = (1, 8, 64, 256)


class _Tee:
    """Writes to the terminal and to a log file."""

    def __init__(self, path: Path):
        self.file = path.open("w")

    def __call__(self, message: str):
        print(message, flush=True)
        self.file.write(message + "\n")
        self.file.flush()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kb", help="knowledge base .npz (prepare_device_bundle)")
    p.add_argument("--data", help="dataset bundle .npz (prepare_device_bundle)")
    p.add_argument("--out", required=True, help="results folder ($OUT on the device)")
    p.add_argument("--cache", default="runs/speed-session/cache", help="compile caches (JAX and TorchInductor)")
    p.add_argument("--budget", type=float, help="seconds after which no measurement starts (default 400; "
                   "--quick: none, every row runs)")
    p.add_argument("--row-cap", type=float, help="seconds after which a row starts no larger population "
                   "(default 45; --quick: none)")
    p.add_argument("--populations", nargs="+", type=int, default=list(GPU_POPULATIONS))
    p.add_argument("--val-size", type=int, help="validation images (default: all of the bundle's)")
    p.add_argument("--torch-max-w1", type=int, default=8, help="most networks a PyTorch W1 row times")
    p.add_argument("--torch-max-w2", type=int, default=2, help="most networks a PyTorch W2 row times")
    p.add_argument("--phase-population", type=int, default=8, help="population of the fused W2 phase timing")
    p.add_argument("--profile-population", type=int, default=64,
                   help="population at which each fused row is also traced with the profiler (summary in speed.md)")
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "tensorfloat32", "float32"],
                   choices=["bfloat16", "tensorfloat32", "float32"])
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=["W1", "W2"])
    modes = ["eager", "compile", "compile-network"]
    p.add_argument("--torch-modes", nargs="*", default=modes, choices=modes,
                   help="compile: graphs per module shape, reused; compile-network (W1): one graph per whole network")
    p.add_argument("--torch-fold-modes", nargs="*", default=["eager"], choices=modes,
                   help="PyTorch modes also timed with BatchNorm folded (W1)")
    p.add_argument("--torch-max-network", type=int, default=1,
                   help="most networks a compile-network row compiles (tens of seconds each) and times")
    p.add_argument("--strategy", default="fused", choices=["auto", "fused", "loop"])
    p.add_argument("--groups", nargs="+", type=int, default=[0],
                   help="fused rows per group size: G genotypes side by side at a time (0: the chunk as one vmap, "
                   "the fastest on an H200; `--groups 0 1 8` measures the others again)")
    p.add_argument("--groups-until", type=int, default=64,
                   help="above this population only the fastest group so far runs (per workload and dtype)")
    p.add_argument("--group-widths", nargs="*", type=int, default=[64],
                   help="the grouped layout's rows and probe also with convolution groups packed up to W channels "
                   "(jax-grouped-wW, jax-probe-grouped-wW)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script on a CPU")
    p.add_argument("--merge", nargs="+", metavar="SPEED_JSON",
                   help="measure nothing: merge the speed.json of several sessions into OUT/speed.*")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    out, cache = Path(args.out), Path(args.cache)
    if args.merge:
        import json

        from . import throughput

        report = throughput.merge([json.loads(Path(f).read_text()) for f in args.merge])
        throughput.save(report, out, "speed")
        print(throughput.markdown(report))
        return
    if not (args.kb and args.data):
        raise UserError("--kb and --data are required (or --merge)")
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str((cache / "inductor").resolve()))  # before torch loads
    if args.quick:  # on a CPU: the settings the `modulenet` command applies there, before JAX starts
        from modulenet_jax import cpu_runtime

        cpu_runtime.configure()

    import jax

    from . import throughput
    from .prepare_device_bundle import load_kb
    from modulenet_jax.data import load_dataset
    from modulenet_jax.protocol import Protocol

    jax.config.update("jax_compilation_cache_dir", str((cache / "jax").resolve()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    # W2's profile reads each op's phase from the executable that ran: without op names in the
    # key, a program cached before its named scopes changed comes back with the old ones
    jax.config.update("jax_compilation_cache_include_metadata_in_key", True)
    log = _Tee(out / "speed.log")
    t0 = time.time()
    kb, dataset = load_kb(args.kb), load_dataset(args.data)
    protocol = Protocol(fit_images=2048, stitch_images=512, batch_size=500)
    populations, val_size, phase_population = args.populations, args.val_size, args.phase_population
    budget, row_cap = (args.budget, args.row_cap) if args.quick else (args.budget or 400, args.row_cap or 45)
    if args.quick:
        # the head keeps its 100 L-BFGS steps: cut to 10, the two L-BFGS line searches stop at
        # different heads and W2's counts differ by an image, which is the check --quick makes
        protocol = dataclasses.replace(protocol, fit_images=128, stitch_images=64, batch_size=50)
        populations, val_size, phase_population = [1, 2], 100, 2
        args.profile_population, args.groups_until = 2, 1
    log(f"devices: {jax.devices()}; python {sys.version.split()[0]}, jax {jax.__version__}; "
        f"loaded in {time.time() - t0:.1f} s")
    report = throughput.run(kb, dataset, protocol, granularity="run", val_size=val_size,
                            populations=tuple(populations), dtypes=tuple(args.dtypes), workloads=tuple(args.workloads),
                            torch_modes=tuple(args.torch_modes), torch_fold_modes=tuple(args.torch_fold_modes),
                            torch_max_network=args.torch_max_network,
                            torch_max_w1=2 if args.quick else args.torch_max_w1,
                            torch_max_w2=2 if args.quick else args.torch_max_w2, strategy=args.strategy,
                            budget_s=budget, row_cap_s=row_cap, phase_population=phase_population,
                            groups=tuple(g or None for g in args.groups), groups_until=args.groups_until,
                            profile_population=args.profile_population, group_widths=tuple(args.group_widths),
                            trace_dir=cache.parent / "traces", log=log,
                            checkpoint=lambda r: throughput.write_report(r, throughput.markdown(r), out, "speed"))
    throughput.save(report, out, "speed")
    log(throughput.markdown(report))
    log(f"total {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
