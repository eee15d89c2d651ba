"""Does the search beat random sampling, and what helps it? Each search variant (NSGA-II as
configured, random search, NSGA-II without source seeds, without the junction bias, with uniform
crossover) runs for the config's generations with several seeds, all with one evaluator and one
shared fitness cache (a network is evaluated once whatever variant asks for it). The score after
every generation is the hypervolume of the validation front of every network evaluated so far,
in (error, parameters / largest source's parameters) with the fixed reference point (1, 1.1), so
runs, seeds and configs are comparable. Every variant asks for the same number of genotypes per
generation (equal evaluations); the distinct networks each run evaluated are reported too.

    python -m modulenet_jax.benchmarks.search_ablation --config cifar10_resnet --out runs/ablation \\
        --variants nsga2 random --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from pymoo.indicators.hv import HV

from modulenet_jax.config import load_config
from modulenet_jax.search.base import pareto_indices
from modulenet_jax.search.runner import Run, make_algorithm

REFERENCE = (1.0, 1.1)  # (error, parameters / the largest source's)
VARIANTS = {
    "nsga2": {},
    "random": {"algorithm": "random"},
    "nsga2-no-seeds": {"seed_sources": False},
    "nsga2-no-junction-bias": {"continue_run_prob": 0.0},
    "nsga2-uniform-crossover": {"crossover": "uniform"},
}


def hypervolume(points: np.ndarray, scale: float) -> float:
    """Hypervolume of the (error, parameters) front of `points`, parameters divided by `scale`."""
    front = points[pareto_indices(points)]
    return float(HV(ref_point=np.array(REFERENCE))(np.column_stack([front[:, 0], front[:, 1] / scale])))


def run_variant(run: Run, config, name: str, seed: int, cache: dict, scale: float, log=print) -> dict:
    """One search variant with one seed; per generation the archive's hypervolume."""
    cfg = config.search.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.update(VARIANTS[name])
    algo = make_algorithm(run.space, cfg, seed)
    seen: dict = {}
    per_generation = []
    t0 = time.time()
    while algo.generation < cfg.generations:
        X = algo.ask()
        keys = [run.space.canonical(g) for g in X]
        new = {k: g for k, g in zip(keys, X) if k not in cache}
        for k, ev in zip(new, run.evaluate_many([run.space.decode(g) for g in new.values()], run.val)):
            cache[k] = (ev.error, ev.params)
        seen.update(dict.fromkeys(keys))
        algo.tell(X, np.asarray([cache[k] for k in keys]))
        hv = hypervolume(np.array([cache[k] for k in seen]), scale)
        per_generation.append({"generation": algo.generation, "asked": algo.generation * cfg.population,
                                "distinct": len(seen), "hypervolume": hv})
        log(f"{name} seed {seed} generation {algo.generation}: hypervolume {hv:.4f} ({len(seen)} networks)")
    pts = np.array([cache[k] for k in seen])
    return {"variant": name, "seed": seed, "generations": per_generation, "hypervolume": per_generation[-1]["hypervolume"],
            "networks": len(seen), "best_accuracy": float(1 - pts[:, 0].min()),
            "front": pts[pareto_indices(pts)].tolist(), "seconds": round(time.time() - t0, 1)}


def markdown(rows: list[dict], variants) -> str:
    lines = ["| variant | seeds | hypervolume after the last generation (mean) | per seed | distinct networks "
             "(mean) | best val accuracy |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    for name in variants:
        r = [x for x in rows if x["variant"] == name]
        if r:
            lines.append(f"| {name} | {len(r)} | {np.mean([x['hypervolume'] for x in r]):.4f} | "
                         + ", ".join(f"{x['hypervolume']:.4f}" for x in r)
                         + f" | {np.mean([x['networks'] for x in r]):.1f} | {max(x['best_accuracy'] for x in r):.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], variants, path) -> None:
    """Hypervolume per generation: each variant's mean over seeds, with its seeds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, name in enumerate(variants):
        r = [x for x in rows if x["variant"] == name]
        if not r:
            continue
        hv = np.array([[g["hypervolume"] for g in x["generations"]] for x in r])
        gens = np.arange(1, hv.shape[1] + 1)
        ax.plot(gens, hv.mean(0), marker="o", c=f"C{i}", label=f"{name} (mean of {len(r)} seeds)")
        ax.fill_between(gens, hv.min(0), hv.max(0), color=f"C{i}", alpha=0.2)
    ax.set(xlabel="generation (equal genotypes asked per generation)", ylabel="hypervolume of the validation front",
           title=f"reference point: error {REFERENCE[0]}, params {REFERENCE[1]} x largest source")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet", help="a packaged config's name or a .py file")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--variants", nargs="+", default=["nsga2", "random"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args(argv)
    config = load_config(args.config, args.set)
    run = Run.from_config(config)
    scale = max(sum(r.params_count for r in run.kb.modules_of(s)) for s in run.kb.sources)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "ablation.json"
    rows = json.loads(saved.read_text())["rows"] if saved.is_file() else []  # resumes: finished runs are kept
    cache: dict = {}
    t0 = time.time()
    for seed in args.seeds:  # seed by seed, every variant: an interrupted comparison stays balanced
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue
            rows.append(run_variant(run, config, name, seed, cache, scale))
            saved.write_text(json.dumps({"config": args.config, "config_overrides": list(args.set),
                                         "reference_point": REFERENCE, "rows": rows}, indent=1))
    table = markdown(rows, args.variants)
    (out / "ablation.md").write_text(f"{table}\n\nWall time of this invocation: {time.time() - t0:.0f} s.\n")
    plot(rows, args.variants, out / "ablation.png")
    print(table)


if __name__ == "__main__":
    main()
