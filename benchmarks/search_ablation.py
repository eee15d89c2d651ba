"""Does the search beat random sampling, and what helps it? Each search variant (NSGA-II as
configured, random search sampling as NSGA-II's initial population does, uniform random search,
NSGA-II without source seeds, without the junction bias, with uniform crossover) runs for the
config's generations with several seeds, all with one evaluator and one shared fitness cache (a
network is evaluated once whatever variant asks for it). The score after every generation is the
hypervolume of the validation front of every network evaluated so far, as `modulenet runs
compare` and the final table measure it (`runs.hypervolume`: error and parameters against the
fixed reference point (1, 10^6 parameters), the share of that box), so runs, seeds and configs
are comparable. Every variant asks for the same number of genotypes per generation (equal
evaluations); the distinct networks each run evaluated are reported too.

    python -m modulenet_jax.benchmarks.search_ablation --config cifar10_resnet --out runs/ablation \\
        --variants nsga2 random random-uniform --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from modulenet_jax.config import load_config
from modulenet_jax.runs import HV_REFERENCE, hypervolume
from modulenet_jax.search.base import pareto_indices
from modulenet_jax.search.runner import Run, make_algorithm

VARIANTS = {
    "nsga2": {},
    "random": {"algorithm": "random"},
    "random-uniform": {"algorithm": "random", "continue_run_prob": 0.0},
    "nsga2-immigrants": {"immigrants": 3},
    "nsga2-no-seeds": {"seed_sources": False},
    "nsga2-no-junction-bias": {"continue_run_prob": 0.0},
    "nsga2-uniform-crossover": {"crossover": "uniform"},
}


def archive_hypervolume(points) -> float:
    """`runs.hypervolume` of (error, parameters) points."""
    return hypervolume([{"error": e, "params": p} for e, p in points], HV_REFERENCE)


def run_variant(run: Run, config, name: str, seed: int, cache: dict, log=print, save=None) -> dict:
    """One search variant with one seed; per generation the archive's hypervolume. `cache` maps
    a canonical genotype to its (error, parameters); `save(key, value)` is told each new one."""
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
            if save is not None:
                save(k, cache[k])
        seen.update(dict.fromkeys(keys))
        algo.tell(X, np.asarray([cache[k] for k in keys]))
        hv = archive_hypervolume([cache[k] for k in seen])
        per_generation.append({"generation": algo.generation, "asked": algo.generation * cfg.population,
                                "distinct": len(seen), "hypervolume": hv})
        log(f"{name} seed {seed} generation {algo.generation}: hypervolume {hv:.4f} ({len(seen)} networks)")
    pts = np.array([cache[k] for k in seen])
    return {"variant": name, "seed": seed, "generations": per_generation, "hypervolume": per_generation[-1]["hypervolume"],
            "networks": len(seen), "best_accuracy": float(1 - pts[:, 0].min()),
            "front": pts[pareto_indices(pts)].tolist(), "archive": [list(k) for k in seen],
            "seconds": round(time.time() - t0, 1)}


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
           title=f"reference point: error {HV_REFERENCE[0]}, {HV_REFERENCE[1]:,} parameters")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet", help="a packaged config's name or a .py file")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--variants", nargs="+", default=["nsga2", "random", "random-uniform"], choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args(argv)
    config = load_config(args.config, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved, evaluations = out / "ablation.json", out / "evaluations.jsonl"
    setting = {"config": args.config, "config_overrides": list(args.set), "reference_point": list(HV_REFERENCE)}
    rows = []
    if saved.is_file():  # resumes: finished runs and every evaluated network are kept
        before = json.loads(saved.read_text())
        if {k: before.get(k) for k in setting} != setting:
            p.error(f"{saved} was made with {({k: before.get(k) for k in setting})}, not {setting}; "
                    f"give another --out")
        rows = before["rows"]
    cache = {}
    if evaluations.is_file():
        for line in evaluations.read_text().splitlines():
            r = json.loads(line)
            cache[tuple(r["canonical"])] = (r["error"], r["params"])
    run = Run.from_config(config)  # after the folder is checked: a refused resume builds nothing

    def save(key, value):
        with evaluations.open("a") as f:
            f.write(json.dumps({"canonical": list(key), "error": value[0], "params": value[1]}) + "\n")

    t0 = time.time()
    for seed in args.seeds:  # seed by seed, every variant: an interrupted comparison stays balanced
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue
            rows.append(run_variant(run, config, name, seed, cache, save=save))
            saved.write_text(json.dumps({**setting, "rows": rows}, indent=1))
    table = markdown(rows, args.variants)
    (out / "ablation.md").write_text(f"{table}\n\nWall time of this invocation: {time.time() - t0:.0f} s.\n")
    plot(rows, args.variants, out / "ablation.png")
    print(table)


if __name__ == "__main__":
    main()
