"""Do the two drivers of the protocol count the same on real networks? Random networks of a
config's space, each evaluated by the per-module driver (`Evaluator.evaluate_many`) and by the
fused program one genotype at a time (`PopulationEvaluator`, group 1, the CPU's form), on the
config's validation split; prints both counts per network and how many differ.

    python -m modulenet_jax.benchmarks.driver_agreement --config cifar10_resnet --networks 8 \\
        --set data.source=../shared/data/cifar10-jpeg "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)" \\
        protocol.fit_images=512 protocol.stitch_images=256 data.val_size=500

The tests check exact agreement on small random networks (`tests/test_population.py`); this
measures it where a search runs.
"""

from __future__ import annotations

import argparse

import numpy as np

from modulenet_jax.config import load_config
from modulenet_jax.errors import run_script
from modulenet_jax.population import PopulationEvaluator
from modulenet_jax.search.runner import Run


def counts(run: Run, networks: int, seed: int) -> list[tuple[int, int]]:
    """(per-module, fused) correct counts of `networks` random networks of the run's space."""
    rng = np.random.default_rng(seed)
    archs = [run.space.decode(run.space.sample(rng)) for _ in range(networks)]
    loop = run.evaluator.evaluate_many(archs, run.val)
    fused = PopulationEvaluator(run.space, run.evaluator.protocol, run.dataset.train, chunk_size=networks, group=1,
                                evaluator=run.evaluator).evaluate(archs, run.val)
    return [(a.correct, b.correct) for a, b in zip(loop, fused)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="cifar10_resnet")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides, key=value")
    parser.add_argument("--networks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return run_script(parser, run_parsed, argv)


def run_parsed(args) -> None:
    from modulenet_jax import cpu_runtime

    cpu_runtime.configure()
    run = Run.from_config(load_config(args.config, args.set), log=lambda line: None, evaluate_only=True)
    pairs = counts(run, args.networks, args.seed)
    for i, (a, b) in enumerate(pairs):
        print(f"network {i}: per-module {a}, fused {b}" + ("" if a == b else f"  ({b - a:+d})"))
    differ = sum(a != b for a, b in pairs)
    print(f"{differ} of {len(pairs)} networks counted differently on {len(run.val)} images "
          f"(protocol.bn={run.evaluator.protocol.bn}, stitch_steps={run.evaluator.protocol.stitch_steps})")


if __name__ == "__main__":
    main()
