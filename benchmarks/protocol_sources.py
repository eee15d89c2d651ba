"""What each protocol choice costs the sources: every source network (no junction) scored on the
final split under each BatchNorm mode and fit size, beside its accuracy as published (own BN
statistics and head). A protocol that scores its own sources below their published accuracy
throws knowledge away before the search starts.

    python -m modulenet_jax.benchmarks.protocol_sources --config cifar10_resnet \\
        --set data.source=../shared/data/cifar10-jpeg "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)" \\
        --bn source recalibrate --fit-images 512 2048 --out benchmarks/results --name cpu-protocol-sources

The rest of the protocol (stitches, head) is the config's; the fit images are the config's
seeded train subset, so a larger fit size contains the smaller one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from modulenet_jax.config import load_config
from modulenet_jax.data import fit_split, protocol_split
from modulenet_jax.errors import run_script
from modulenet_jax.evaluate import Evaluator, evaluate_published
from modulenet_jax.search.runner import load_data, load_knowledge, make_protocol
from modulenet_jax.space import Architecture

from .throughput import device_name, write_report


def measure(kb, dataset, base, bns, fit_sizes, final_size, seed: int, log=print) -> dict:
    """Correct counts on the final split: per source, as published and under every (bn, fit size)."""
    final = protocol_split(dataset, "final", final_size)
    rows = {s: {"published": evaluate_published(kb, s, final, base.batch_size, input_size=base.input_size)[0]}
            for s in kb.sources}
    for fit_images in fit_sizes:
        fit = fit_split(dataset, dataclasses.replace(base, fit_images=fit_images,
                                                     stitch_images=min(base.stitch_images, fit_images)), seed)
        for bn in bns:
            protocol = dataclasses.replace(base, bn=bn, fit_images=fit_images,
                                           stitch_images=min(base.stitch_images, fit_images))
            ev = Evaluator(kb, protocol, fit)
            for source in kb.sources:
                t = time.time()
                rows[source][f"{bn}/{fit_images}"] = ev.evaluate(Architecture.of_source(kb, source), final).correct
                log(f"{source} bn={bn} fit={fit_images}: {rows[source][f'{bn}/{fit_images}']}/{len(final)} "
                    f"({time.time() - t:.1f} s)")
    return {"device": device_name(), "final": final.description, "total": len(final),
            "columns": [f"{bn}/{n}" for n in fit_sizes for bn in bns], "rows": rows}


def markdown(report: dict) -> str:
    cols = report["columns"]
    lines = [f"Device: **{report['device']}**; split: {report['final']}. Correct predictions (accuracy); "
             "columns: BatchNorm mode / fit images (head, and statistics where recalibrated).", "",
             "| source | published | " + " | ".join(cols) + " |", "| --- | ---: | " + " | ".join("---:" for _ in cols) + " |"]
    n = report["total"]
    for source, r in report["rows"].items():
        lines.append(f"| {source} | {r['published']} ({r['published'] / n:.4f}) | "
                     + " | ".join(f"{r[c]} ({r[c] / n:.4f})" for c in cols) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--bn", nargs="+", default=["source", "recalibrate"],
                   choices=["source", "recalibrate", "from_junction"])
    p.add_argument("--fit-images", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-protocol-sources")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    config = load_config(args.config, args.set)
    t0 = time.time()
    report = measure(load_knowledge(config.knowledge), load_data(config.data), make_protocol(config.protocol),
                     args.bn, args.fit_images, config.final.size, config.data.fit_seed)
    report["seconds"] = round(time.time() - t0, 1)
    write_report(report, markdown(report) + f"\n\nWall time: {report['seconds']} s.", args.out, args.name)
    print(markdown(report))


if __name__ == "__main__":
    main()
