"""Fidelity of the no-tuning score: does it rank architectures like a short fine-tune does?

For a sample of genotypes, every protocol variant scores each network without tuning; then
each network is fine-tuned end to end for a short budget (`FINETUNE`, by the project's one
trainer `train.fit`, from stitches fitted by least squares, BatchNorm recalibrated and a
refitted head) and scored again. Kendall's tau between
each variant's scores and the fine-tuned accuracies is the variant's fidelity. Results are
appended to `results.jsonl` as they come, so an interrupted measurement resumes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from modulenet_jax import train
from modulenet_jax.data import Dataset, protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.jsonfile import difference, read_json
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.network import evaluate, from_fitted
from modulenet_jax.protocol import Protocol, inert_fields
from modulenet_jax.ranking import agreement, kendall
from modulenet_jax.space import Architecture, SearchSpace

# name -> overrides of the base protocol; each names its BN mode, so a variant means the same
# whatever the base config's `bn` is
VARIANTS = {
    "plain": {"stitch": False, "bn": "source"},
    "plain+bn": {"stitch": False, "bn": "recalibrate"},
    "stitch": {"bn": "source"},
    "stitch+bn": {"bn": "recalibrate"},
    "stitch+bn-from-junction": {"bn": "from_junction"},
    "stitch+ridge": {"bn": "source", "head": "ridge"},
    "stitch+bn+ridge": {"bn": "recalibrate", "head": "ridge"},
    "stitch-256": {"bn": "source", "fit_images": 256, "stitch_images": 256},
    "stitch-2048": {"bn": "source", "fit_images": 2048, "stitch_images": 1024},
    "stitch+bn-2048": {"bn": "recalibrate", "fit_images": 2048},
    "stitch+bn-from-junction-2048": {"bn": "from_junction", "fit_images": 2048},
}

# The reference fine-tune: one epoch over `images` train images (a seeded subset), SGD +
# Nesterov, lr 0.01 cosine, gradients clipped to norm 1 (least-squares stitches can start
# large), no augmentation.
FINETUNE = train.Settings(images=10_240, epochs=1, batch_size=128, learning_rate=0.01, clip_norm=1.0, augment=False)

def sample_genotypes(kb: KnowledgeBase, granularities, per_granularity: int, seed: int):
    """`per_granularity` distinct random networks from each granularity's space (sources excluded),
    interleaved across granularities so that any prefix of the list is balanced."""
    rng = np.random.default_rng(seed)
    sources = {Architecture.of_source(kb, s).modules for s in kb.sources}
    per_kind = []
    for gran in granularities:
        space = SearchSpace(kb, gran)
        seen, archs = set(), []
        while len(archs) < per_granularity:
            arch = space.decode(space.sample(rng))
            if arch.modules not in seen and arch.modules not in sources:
                seen.add(arch.modules)
                archs.append((gran, arch))
        per_kind.append(archs)
    return [a for group in zip(*per_kind) for a in group]


def _without_inert(settings: dict, inert) -> dict:
    """`settings` without the protocol fields `inert` names, in the base protocol and each variant."""
    def drop(fields):
        return {k: v for k, v in fields.items() if k not in inert} if isinstance(fields, dict) else fields

    variants = settings.get("variants")
    return {**settings, "base_protocol": drop(settings.get("base_protocol")),
            "variants": {n: drop(v) for n, v in variants.items()} if isinstance(variants, dict) else variants}


def _protocols(settings: dict) -> list[dict]:
    """The protocols a measurement's settings score with: the base and each variant over it."""
    base, variants = settings.get("base_protocol"), settings.get("variants")
    if not isinstance(base, dict) or not isinstance(variants, dict):
        return []  # not a measurement's settings: the comparison names the difference
    return [base, *({**base, **v} for v in variants.values() if isinstance(v, dict))]


def _resume_settings(path: Path, settings: dict, results: Path) -> None:
    """A results folder holds one measurement: its settings are written with its first results and
    must be the same to resume it (the rows measured under others would be reported as these), but
    for protocol fields that change no result of either (`protocol.inert_fields`)."""
    if path.is_file():
        there = read_json(path, "fidelity measurement's settings", "delete the folder, or choose another --out")
        inert = inert_fields(_protocols(there) + _protocols(settings))
        changed = difference(_without_inert(there, inert), _without_inert(settings, inert))
        if changed:
            raise UserError(f"{path.parent} holds a measurement with other settings ({changed}); choose another "
                            f"--out, or delete the folder to measure again")
    elif results.is_file() and results.stat().st_size:
        raise UserError(f"{path.parent} holds results of an unknown measurement (no {path.name}); choose another "
                        f"--out, or delete the folder")
    else:
        path.write_text(json.dumps(settings, indent=1) + "\n")


def measure(kb: KnowledgeBase, dataset: Dataset, base: Protocol, variants: dict, networks, finetune: train.Settings,
            val_size: int | None, fit_seed: int, out_dir, log: Callable[[str], None] = print,
            budget_s: float | None = None) -> dict:
    """Scores every network under every variant and after fine-tuning; returns the taus.

    With `budget_s`, no new network is started after that many seconds; the report then
    covers the networks measured so far (and says how many)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    val = protocol_split(dataset, "val", val_size)
    settings = {"variants": variants, "base_protocol": dataclasses.asdict(base), "finetune": finetune.to_json(),
                "val": val.description, "fit_seed": fit_seed}
    _resume_settings(out / "settings.json", json.loads(json.dumps(settings)), results_path)
    done = {}
    if results_path.is_file():
        for number, line in enumerate(results_path.read_text().splitlines(), 1):
            try:
                r = json.loads(line)
                done[tuple(r["modules"])] = r
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise UserError(f"{results_path} line {number} is not a measured network ({type(e).__name__}); "
                                f"delete that line to measure the network again") from None
    largest = max([base.fit_images] + [v.get("fit_images", 0) for v in variants.values()])
    fit = protocol_split(dataset, "train", largest, seed=fit_seed)
    evaluators = {name: Evaluator(kb, dataclasses.replace(base, **ov), fit) for name, ov in variants.items()}
    init = Evaluator(kb, dataclasses.replace(base, bn="recalibrate"), fit)
    train_split = protocol_split(dataset, "train", finetune.images, seed=finetune.seed + 1)
    t_start = time.time()
    with open(results_path, "a") as f:
        for i, (kind, arch) in enumerate(networks):
            if arch.modules in done:
                continue
            if budget_s is not None and time.time() - t_start > budget_s:
                log(f"time budget spent: {len(done)} of {len(networks)} networks measured")
                break
            t0 = time.time()
            row = {"kind": kind, "architecture": arch.describe(), "modules": list(arch.modules),
                   "junctions": arch.num_junctions(kb), "scores": {}}
            for name, ev in evaluators.items():
                row["scores"][name] = ev.evaluate(arch, val).accuracy
            model, variables = from_fitted(init.fit(arch), tuple(kb.source(kb.record(m).source).model
                                                                 for m in arch.modules))
            tuned, _ = train.fit(model, variables, train_split, finetune, log=lambda m: None)
            correct, total = evaluate(model, tuned, val, base.batch_size)
            row["finetuned"] = correct / total
            row["seconds"] = round(time.time() - t0, 1)
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[arch.modules] = row
            log(f"[{i + 1}/{len(networks)}] {kind}: fine-tuned {row['finetuned']:.3f}, "
                + ", ".join(f"{k} {v:.3f}" for k, v in row["scores"].items()) + f" ({row['seconds']} s)")
    rows = [done[a.modules] for _, a in networks if a.modules in done]
    report = {"variants": variants, "base_protocol": dataclasses.asdict(base),
              "finetune": finetune.to_json(), "val": val.description, "networks": len(rows),
              "bootstrap_seed": fit_seed,
              "tau": {}, "tau_random_only": {}, "tau_by_kind": {}, "agreement": {}, "agreement_random_only": {}}
    tuned = [r["finetuned"] for r in rows]
    random_rows = [r for r in rows if r["kind"] != "source"]
    for name in variants:
        report["agreement"][name] = agreement([r["scores"][name] for r in rows], tuned, seed=fit_seed)
        report["agreement_random_only"][name] = agreement([r["scores"][name] for r in random_rows],
                                                          [r["finetuned"] for r in random_rows], seed=fit_seed)
        report["tau"][name] = report["agreement"][name]["tau"]
        report["tau_random_only"][name] = report["agreement_random_only"][name]["tau"]
        for kind in sorted({r["kind"] for r in rows}):
            sub = [r for r in rows if r["kind"] == kind]
            if len(sub) > 2:
                report["tau_by_kind"].setdefault(kind, {})[name] = kendall(
                    [r["scores"][name] for r in sub], [r["finetuned"] for r in sub])
    report["rows"] = rows
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report) + "\n")
    return report


def _with_interval(a: dict, name: str) -> str:
    low, high = a[f"{name}_ci"]
    return f"{a[name]:.3f} [{low:.2f}, {high:.2f}]"


def markdown(report: dict) -> str:
    kinds = sorted(report["tau_by_kind"])
    lines = [f"Fidelity: rank agreement between each no-tuning score and the accuracy after fine-tuning "
             f"({report['networks']} networks; {report['val']}; fine-tune {report['finetune']}). Kendall's tau-b "
             f"and Spearman's rho, each with its 95% paired bootstrap interval (2,000 resamples of the networks).", "",
             "| variant | tau (all) | rho (all) | tau (random only) | rho (random only) | "
             + " | ".join(f"tau ({k})" for k in kinds) + " |",
             "| --- | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in kinds) + " |"]
    for name in report["variants"]:
        per = " | ".join(f"{report['tau_by_kind'][k].get(name, float('nan')):.3f}" for k in kinds)
        every, random_only = report["agreement"][name], report["agreement_random_only"][name]
        lines.append(f"| {name} | {_with_interval(every, 'tau')} | {_with_interval(every, 'rho')} | "
                     f"{_with_interval(random_only, 'tau')} | {_with_interval(random_only, 'rho')} | {per} |")
    lines += ["", "| kind | junctions | fine-tuned | " + " | ".join(report["variants"]) + " | architecture |",
              "| --- | ---: | ---: | " + " | ".join("---:" for _ in report["variants"]) + " | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['kind']} | {r['junctions']} | {r['finetuned']:.3f} | "
                     + " | ".join(f"{r['scores'][n]:.3f}" for n in report["variants"]) + f" | {r['architecture']} |")
    return "\n".join(lines)
