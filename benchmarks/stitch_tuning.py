"""Does tuning the stitches help, and at which learning rate? The networks of a fidelity
measurement (its report holds each network's accuracy after a short fine-tune) are scored under
the default BN mode (`from_junction`) without tuning and with `protocol.stitch_steps` Adam steps
at `protocol.stitch_lr`; per setting: the mean change in validation accuracy against no tuning,
how many networks it lowers and raises, and Kendall's tau against the fine-tune (random networks).

    python -m modulenet_jax.benchmarks.stitch_tuning --report benchmarks/results/cpu-fidelity.json \\
        --set data.source=../shared/data/cifar10-jpeg "knowledge.weights_dirs=('../shared/weights/cifar-resnet',)" \\
        --settings 2:0.001 2:0.0001 --out runs/stitch_tuning

The networks, the validation split and every protocol field are the report's, the fit images the
config's (`data.fit_seed`, as `modulenet fidelity` draws them). The untuned scores are measured here
too (the baseline comes from the same code), and how many of them equal the report's
`stitch+bn-from-junction` scores is said. Results are appended to `<out>/results.jsonl` as they
come, so a run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from modulenet_jax.config import load_config
from modulenet_jax.data import protocol_split
from modulenet_jax.errors import UserError, run_script
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.protocol import Protocol
from modulenet_jax.ranking import kendall
from modulenet_jax.search.runner import load_data, load_knowledge
from modulenet_jax.space import Architecture

UNTUNED = "stitch+bn-from-junction"


def parse_setting(text: str) -> tuple[int, float]:
    """`steps:lr` -> (steps, lr)."""
    try:
        steps, lr = text.split(":")
        return int(steps), float(lr)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is steps:learning_rate like 2:0.0001, got {text!r}") from None


def summary(rows: list[dict], key: str) -> dict:
    """Mean accuracy change against no tuning (`untuned`), networks lowered/raised, and tau
    against the fine-tune, over the random networks (sources apart: their change only)."""
    random_rows = [r for r in rows if r["kind"] != "source"]
    change = np.array([r[key] - r["untuned"] for r in random_rows])
    sources = [r[key] - r["untuned"] for r in rows if r["kind"] == "source"]
    return {"networks": len(random_rows), "mean_change": float(change.mean()), "lowered": int((change < 0).sum()),
            "raised": int((change > 0).sum()),
            "tau": kendall([r[key] for r in random_rows], [r["finetuned"] for r in random_rows]),
            "tau_untuned": kendall([r["untuned"] for r in random_rows], [r["finetuned"] for r in random_rows]),
            "source_change": [float(s) for s in sources]}


def read_report(path: str) -> dict:
    """A fidelity report (the report.json of `modulenet fidelity --out`), or a `UserError` saying
    that the file is something else."""
    fix = "give the report.json of `modulenet fidelity --out`, e.g. benchmarks/results/cpu-fidelity.json"
    try:
        report = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--report {path} is not JSON ({e}); {fix}") from None
    if not (isinstance(report, dict) and {"base_protocol", "val", "rows"} <= report.keys()):
        raise UserError(f"--report {path} is not a fidelity report (no base_protocol, val and rows); {fix}")
    return report


def load(report_path: str, config_name: str, overrides: list[str], **protocol_changes):
    """`(report, kb, base protocol, val, fit, archs)` of a fidelity report: its networks, validation
    split and protocol (BN from the first junction; the `protocol_changes` that are not None, such
    as `stitch_images`, instead of the report's), the config's data, knowledge base and fit images
    (`data.fit_seed`, as `modulenet fidelity`)."""
    from modulenet_jax import cpu_runtime

    report = read_report(report_path)  # first: a wrong path costs nothing
    cpu_runtime.configure()
    config = load_config(config_name, overrides)
    dataset, kb = load_data(config.data), load_knowledge(config.knowledge)
    base = dataclasses.replace(Protocol(**report["base_protocol"]), bn="from_junction",
                               **{k: v for k, v in protocol_changes.items() if v is not None})
    val_size = int(report["val"].split("[")[1].split()[0])
    val = protocol_split(dataset, "val", val_size)
    if val.description != report["val"]:
        raise UserError(f"the report was measured on {report['val']}, this data gives {val.description}")
    fit = protocol_split(dataset, "train", base.fit_images, seed=config.data.fit_seed)
    return report, kb, base, val, fit, [Architecture(tuple(r["modules"])) for r in report["rows"]]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="benchmarks/results/cpu-fidelity.json")
    parser.add_argument("--config", default="cifar10_resnet")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides (data and knowledge), key=value")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[(2, 1e-3), (2, 1e-4)],
                        help="steps:learning_rate pairs")
    parser.add_argument("--out", default="runs/stitch_tuning")
    return run_script(parser, run_parsed, argv)


def run_parsed(args) -> None:
    report, kb, base, val, fit, archs = load(args.report, args.config, args.set)
    rows, val_size = report["rows"], len(val)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    results = out / "results.jsonl"
    if results.is_file():
        for line in results.read_text().splitlines():
            r = json.loads(line)
            done[(r["steps"], r["lr"])] = r["correct"]
    with open(results, "a") as f:
        for steps, lr in [(0, base.stitch_lr)] + args.settings:
            if (steps, lr) in done:
                continue
            evaluator = Evaluator(kb, dataclasses.replace(base, stitch_steps=steps, stitch_lr=lr), fit)
            correct = [0] * len(archs)
            for n, (i, ev) in enumerate(evaluator.evaluate_iter(archs, val), 1):
                correct[i] = ev.correct
                print(f"  [{n}/{len(archs)}] {ev.correct} (the report's untuned score: "
                      f"{round(rows[i]['scores'][UNTUNED] * val_size)})", flush=True)
            done[(steps, lr)] = correct
            f.write(json.dumps({"steps": steps, "lr": lr, "correct": correct}) + "\n")
            f.flush()
            print(f"stitch_steps={steps} stitch_lr={lr}: {correct}", flush=True)

    untuned = done[0, base.stitch_lr]
    reproduced = sum(c == round(r["scores"][UNTUNED] * val_size) for r, c in zip(rows, untuned))
    for r, c in zip(rows, untuned):
        r["untuned"] = c / val_size
    table = {"report": args.report, "val": val.description, "protocol": dataclasses.asdict(base),
             "untuned": untuned, "reproduced": reproduced, "settings": []}
    lines = [f"Stitch tuning against no tuning on the {len(rows)} networks of {args.report} ({val.description}; "
             f"bn=from_junction, fit {base.fit_images}, stitch {base.stitch_images} images). Change in validation "
             f"accuracy (points) and Kendall's tau against the fine-tuned accuracy, random networks only. The "
             f"untuned counts measured here equal the report's for {reproduced} of {len(rows)} networks.", "",
             "| stitch_steps | stitch_lr | mean change | lowered / raised | tau | tau untuned | sources' change |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for (steps, lr), correct in done.items():
        if steps == 0:
            continue
        for r, c in zip(rows, correct):
            r[f"{steps}:{lr}"] = c / val_size
        s = summary(rows, f"{steps}:{lr}")
        table["settings"].append({"steps": steps, "lr": lr, "correct": correct, **s})
        lines.append(f"| {steps} | {lr:g} | {100 * s['mean_change']:+.2f} | {s['lowered']} / {s['raised']} | "
                     f"{s['tau']:.3f} | {s['tau_untuned']:.3f} | "
                     + ", ".join(f"{100 * c:+.1f}" for c in s["source_change"]) + " |")
    (out / "report.json").write_text(json.dumps(table, indent=1) + "\n")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
