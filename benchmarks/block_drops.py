"""Does a deep source with blocks dropped anywhere (not only a stage's last ones) beat a smaller
source outright? Every block of `--base` but a stage's downsampling one is dropped alone and
scored on the validation images; the `--per-stage` least harmful drops of each stage are then
combined into every network within `--width` of the `--target` source's parameters (and not
above them), scored on validation; the `--top` best of those are scored on the final split beside
both sources. Each dropped block inside a stage is a junction (a stitch), as the `block`
granularity of the search space makes it.

    python -m modulenet_jax.benchmarks.block_drops --config cifar10_resnet \\
        --set data.source=../shared/data/cifar10-jpeg "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)" \\
        --out benchmarks/results --name cpu-block-drops
"""

from __future__ import annotations

import argparse
import itertools
import time

from modulenet_jax.config import load_config
from modulenet_jax.data import protocol_split
from modulenet_jax.errors import run_script
from modulenet_jax.search.runner import Run
from modulenet_jax.space import Architecture, is_transition

from .throughput import device_name, write_report


def droppable(run: Run, base: str) -> list[str]:
    """The base's blocks a network can do without: all but each stage's first block where that
    one changes the resolution or the width (nothing else could take its place)."""
    return [m for m in Architecture.of_source(run.kb, base).modules
            if run.kb.record(m).spec.kind == "block" and not is_transition(run.kb.record(m))]


def without(run: Run, base: str, drops) -> Architecture:
    return Architecture(tuple(m for m in Architecture.of_source(run.kb, base).modules if m not in drops))


def combinations(run: Run, base: str, singles: dict[str, int], per_stage: int, low: int, high: int):
    """Every set of the `per_stage` best single drops of each stage whose network has between
    `low` and `high` parameters."""
    order = Architecture.of_source(run.kb, base).modules
    best = []
    for stage in sorted({run.kb.record(m).spec.stage for m in singles}):
        ranked = sorted((m for m in singles if run.kb.record(m).spec.stage == stage), key=lambda m: -singles[m])
        best += ranked[:per_stage]
    for k in range(2, len(best) + 1):
        for drops in itertools.combinations(best, k):
            if low <= run.evaluator.cost(without(run, base, drops))[0] <= high:
                yield sorted(drops, key=order.index)


def measure(run: Run, base: str, target: str, per_stage: int, width: float, top: int, final_size: int,
            log=print) -> dict:
    final = protocol_split(run.dataset, "final", final_size)

    def score(drop_sets, split):
        evs = run.evaluate_many([without(run, base, d) for d in drop_sets], split)
        return [{"drop": [m.split("/", 1)[1] for m in d], "params": ev.params, "junctions": ev.junctions,
                 "correct": ev.correct} for d, ev in zip(drop_sets, evs)]

    sources = {}
    for s in (base, target):
        arch = Architecture.of_source(run.kb, s)
        sources[s] = {"params": run.evaluator.cost(arch)[0], "val": run.evaluator.evaluate(arch, run.val).correct,
                      "final": run.evaluator.evaluate(arch, final).correct}
    t = time.time()
    singles = score([[m] for m in droppable(run, base)], run.val)
    log(f"{len(singles)} single drops on validation ({time.time() - t:.0f} s)")
    by_id = {f"{base}/{r['drop'][0]}": r["correct"] for r in singles}
    high = sources[target]["params"]
    combos = list(combinations(run, base, by_id, per_stage, int(high * (1 - width)), high))
    t = time.time()
    combined = sorted(score(combos, run.val), key=lambda r: -r["correct"])
    log(f"{len(combined)} combinations on validation ({time.time() - t:.0f} s)")
    chosen = [[f"{base}/{m}" for m in r["drop"]] for r in combined[:top]]
    finals = score(chosen, final)
    for r, f in zip(combined, finals):
        r["final"] = f["correct"]
    return {"device": device_name(), "base": base, "target": target, "val": run.val.description,
            "val_total": len(run.val), "final": final.description, "final_total": len(final),
            "per_stage": per_stage, "width": width, "sources": sources, "singles": singles, "combined": combined}


def markdown(report: dict) -> str:
    nv, nf = report["val_total"], report["final_total"]
    src = report["sources"]
    base, target = report["base"], report["target"]
    lines = [f"Device: **{report['device']}**. {base} with blocks dropped, against {target}. Validation: "
             f"{report['val']}; final: {report['final']}. Correct predictions (accuracy).", "",
             "| network | params | junctions | validation | final |", "| --- | ---: | ---: | ---: | ---: |"]
    for s in (base, target):
        lines.append(f"| {s} | {src[s]['params']:,} | 0 | {src[s]['val']} ({src[s]['val'] / nv:.4f}) | "
                     f"{src[s]['final']} ({src[s]['final'] / nf:.4f}) |")
    for r in report["singles"]:
        lines.append(f"| {base} without {r['drop'][0]} | {r['params']:,} | {r['junctions']} | "
                     f"{r['correct']} ({r['correct'] / nv:.4f}) | |")
    lines += ["", f"Combinations of the {report['per_stage']} least harmful single drops of each stage, within "
              f"{report['width']:.0%} of {target}'s parameters and not above them, best on validation first:", "",
              "| dropped | params | junctions | validation | final |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in report["combined"]:
        final = f"{r['final']} ({r['final'] / nf:.4f})" if "final" in r else ""
        lines.append(f"| {', '.join(r['drop'])} | {r['params']:,} | {r['junctions']} | "
                     f"{r['correct']} ({r['correct'] / nv:.4f}) | {final} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--base", default="cifar_resnet56")
    p.add_argument("--target", default="cifar_resnet44")
    p.add_argument("--per-stage", type=int, default=3)
    p.add_argument("--width", type=float, default=0.05, help="the combinations' parameter window below the target's")
    p.add_argument("--top", type=int, default=5, help="combinations scored on the final split")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-block-drops")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    config = load_config(args.config, args.set)
    t0 = time.time()
    run = Run.from_config(config, evaluate_only=True)
    for s in (args.base, args.target):
        run.space.check_source(s)
    report = measure(run, args.base, args.target, args.per_stage, args.width, args.top, config.final.size)
    report["seconds"] = round(time.time() - t0, 1)
    write_report(report, markdown(report) + f"\n\nWall time: {report['seconds']} s.", args.out, args.name)
    print(markdown(report))


if __name__ == "__main__":
    main()
