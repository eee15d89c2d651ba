"""What computing shared module prefixes once saves in a real search: each generation of a run's
history evaluated together (`Evaluator.evaluate_many`, prefixes shared) and one network at a
time, on the same machine, alternating; the evaluations must be identical.

    python -m modulenet_jax.benchmarks.prefix_sharing --run runs/cifar10_resnet --out benchmarks/results \\
        --name cpu-prefix-sharing

The config is the run's own `config.json`; the figures are written as JSON and markdown.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

from .throughput import device_name, write_report
from modulenet_jax.errors import run_script
from modulenet_jax.prefix import PrefixSchedule
from modulenet_jax.search.run_folder import read_config, read_history
from modulenet_jax.search.runner import Run
from modulenet_jax.space import Architecture


def measure(run: Run, generations: dict[int, list[Architecture]], log=print) -> list[dict]:
    ev, val = run.evaluator, run.val
    for arch in generations[min(generations)]:  # compile every module shape and program outside the timings
        ev.evaluate(arch, val)
    rows = []
    for gen, archs in sorted(generations.items()):
        schedule = PrefixSchedule.of([a.modules for a in archs])
        lengths = [len(a.modules) for a in archs]
        timings = {}
        for mode in (("shared", "alone") if gen % 2 == 0 else ("alone", "shared")):
            t = time.time()
            evs = ev.evaluate_many(archs, val) if mode == "shared" else [ev.evaluate(a, val) for a in archs]
            timings[mode] = (time.time() - t, evs)
        if timings["shared"][1] != timings["alone"][1]:
            raise AssertionError(f"generation {gen}: shared and one-by-one evaluations differ")
        row = {"generation": gen, "networks": len(archs), "modules": sum(lengths),
               "modules_computed": schedule.modules_computed(lengths),
               "shared_s": round(timings["shared"][0], 2), "alone_s": round(timings["alone"][0], 2)}
        row["speedup"] = round(row["alone_s"] / row["shared_s"], 3)
        rows.append(row)
        log(f"generation {gen}: {row['networks']} networks, {row['modules_computed']}/{row['modules']} module "
            f"steps, shared {row['shared_s']} s, one by one {row['alone_s']} s ({row['speedup']}x)")
    return rows


def markdown(report: dict) -> str:
    lines = [f"Device: **{report['device']}**; run `{report['run']}` ({report['protocol']}).", "",
             "| generation | networks | module steps computed / needed | shared s | one by one s | speed-up |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["rows"]:
        lines.append(f"| {r['generation']} | {r['networks']} | {r['modules_computed']} / {r['modules']} | "
                     f"{r['shared_s']} | {r['alone_s']} | {r['speedup']:.2f} |")
    t = report["total"]
    lines.append(f"| all | {t['networks']} | {t['modules_computed']} / {t['modules']} | {t['shared_s']:.1f} | "
                 f"{t['alone_s']:.1f} | {t['speedup']:.2f} |")
    lines += ["", "Every generation's evaluations were identical both ways (fp32)."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a search's run folder (config.json + history.jsonl)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="cpu-prefix-sharing")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    folder = Path(args.run)
    config = read_config(folder)
    run = Run.from_config(config)
    generations = collections.defaultdict(list)
    for r in read_history(folder / "history.jsonl"):
        generations[r["generation"]].append(Architecture(tuple(r["modules"])))
    rows = measure(run, generations)
    total = {k: sum(r[k] for r in rows) for k in ("networks", "modules", "modules_computed", "shared_s", "alone_s")}
    total["speedup"] = total["alone_s"] / total["shared_s"]
    report = {"device": device_name(), "run": str(folder),
              "protocol": f"fit {config.protocol.fit_images}, val {config.data.val_size}, bn {config.protocol.bn}",
              "rows": rows, "total": total}
    write_report(report, markdown(report), args.out, args.name)
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
