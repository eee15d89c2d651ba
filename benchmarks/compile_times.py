"""What each part of the protocol costs the fused population program in XLA compile time: one
chunk of random `block`-granularity networks of two small random CIFAR ResNets (8 and 14
layers, the test suite's knowledge base) evaluated under each protocol variant, with JAX's
persistent cache off, timing every backend compile (JAX's `backend_compile_duration` event).
Compile time, not run time, is most of a cold test suite and of a search's first generation.

    python -m modulenet_jax.benchmarks.compile_times --out benchmarks/results --name cpu-compile-times
"""

from __future__ import annotations

import argparse
import time

from modulenet_jax import cpu_runtime

cpu_runtime.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax import monitoring  # noqa: E402

from .throughput import device_name, write_report  # noqa: E402
from modulenet_jax import zoo  # noqa: E402
from modulenet_jax.data import Dataset, Split, protocol_split  # noqa: E402
from modulenet_jax.errors import UserError, run_script  # noqa: E402
from modulenet_jax.knowledge import KnowledgeBase  # noqa: E402
from modulenet_jax.population import PopulationEvaluator  # noqa: E402
from modulenet_jax.protocol import Protocol  # noqa: E402
from modulenet_jax.space import SearchSpace  # noqa: E402

BASE = Protocol(fit_images=96, stitch_images=48, batch_size=40, head="ridge", stitch=False, bn="source")
# each variant adds one part of the protocol to the previous ones
VARIANTS = {
    "ridge head, source BN, no stitch": {},
    "+ recalibrated BN": {"bn": "recalibrate"},
    "+ stitches": {"bn": "recalibrate", "stitch": True},
    "+ L-BFGS head": {"bn": "recalibrate", "stitch": True, "head": "logistic"},
}
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def setup(seed: int = 0):
    """(knowledge base, dataset) of the test suite's size: ResNet-8 and -14, random 32 px images."""
    kb = KnowledgeBase.build([(n, n, zoo.get_model(n).init(jax.random.PRNGKey(seed + i)), "random")
                              for i, n in enumerate(("cifar_resnet8", "cifar_resnet14"))])
    rng = np.random.default_rng(seed)

    def split(n, name):
        return Split(rng.integers(0, 256, (n, 32, 32, 3), np.uint8), rng.integers(0, 10, n).astype(np.int32), 10,
                     name)

    return kb, Dataset("random", split(256, "random:train"), split(128, "random:test"))


def measure(chunk: int = 4, seed: int = 0, repeats: int = 3, log=print) -> list[dict]:
    """Per variant, the medians over `repeats` evaluations, each after `jax.clear_caches()` (so
    every program it needs compiles again): a single compile time here varies by 15 %."""
    jax.config.update("jax_enable_compilation_cache", False)
    kb, dataset = setup(seed)
    space = SearchSpace(kb, "block")
    rng = np.random.default_rng(seed)
    archs = [space.decode(space.sample(rng)) for _ in range(chunk)]
    compiles: list[float] = []
    monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(seconds) if event == COMPILE_EVENT else None)
    rows = []
    for name, change in VARIANTS.items():
        protocol = Protocol(**{**BASE.__dict__, **change})
        fit = protocol_split(dataset, "train", protocol.fit_images, seed=0)
        runs = []
        for _ in range(repeats):
            jax.clear_caches()
            compiles.clear()
            t = time.time()
            PopulationEvaluator(space, protocol, fit, chunk_size=chunk).evaluate(archs, protocol_split(dataset, "val"))
            runs.append((time.time() - t, sum(compiles), len(compiles), max(compiles)))
        wall, total, programs, largest = (float(np.median(v)) for v in zip(*runs))
        rows.append({"variant": name, "wall_s": round(wall, 2), "compile_s": round(total, 2),
                     "programs": int(programs), "largest_s": round(largest, 2)})
        log(f"{name}: largest program {rows[-1]['largest_s']} s, {rows[-1]['programs']} programs")
    return rows


def markdown(report: dict) -> str:
    lines = [f"Device: **{report['device']}**; jax {report['jax']}. One chunk of {report['chunk']} networks, "
             "the fused program, persistent compile cache off; each variant adds a part of the protocol; medians of "
             f"{report['repeats']} evaluations, each compiling every program it needs.", "",
             "| protocol | largest program, compile s | programs | all compiles, s | wall s |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['variant']} | {r['largest_s']} | {r['programs']} | {r['compile_s']} | {r['wall_s']} |"
              for r in report["rows"]]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunk", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-compile-times")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    if args.chunk < 1 or args.repeats < 1:
        raise UserError(f"--chunk and --repeats must be positive, got {args.chunk} and {args.repeats}")
    report = {"device": device_name(), "jax": jax.__version__, "chunk": args.chunk, "repeats": args.repeats,
              "rows": measure(args.chunk, repeats=args.repeats)}
    write_report(report, markdown(report), args.out, args.name)
    print(markdown(report))


if __name__ == "__main__":
    main()
