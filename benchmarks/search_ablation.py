"""Does the search beat random sampling, and what helps it? Each search variant (NSGA-II as
configured, random search sampling as NSGA-II's initial population does, uniform random search,
NSGA-II with random immigrants, without shrink offspring, without source seeds, without the
junction bias, with uniform crossover) runs for the config's generations with several seeds, all
with one evaluator and one shared fitness cache (a network is evaluated once whatever variant
asks for it). The score after every generation is the
hypervolume of the validation front of every network evaluated so far, as `modulenet runs
compare` and the final table measure it (`runs.hypervolume`: error and parameters against the
fixed reference point (1, 10^6 parameters), the share of that box), so runs, seeds and configs
are comparable. Every variant asks for the same number of genotypes per generation (equal
evaluations); the distinct networks each run evaluated are reported too.

With `--final`, each run also gets what `modulenet search` would put in its final table: the
found networks' own validation front (sources left out) and the sources, evaluated on the
config's final split (each network once, kept in final_evaluations.jsonl), and it reports how
many of those found networks no source dominates at or above the smallest source's accuracy, and
the final split's hypervolume with and without them: the make-search target, over seeds.

    python -m modulenet_jax.benchmarks.search_ablation --config cifar10_resnet --out runs/ablation \\
        --variants nsga2 nsga2-no-shrink random random-uniform --seeds 0 1 2 --final
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from modulenet_jax.config import load_config
from modulenet_jax.data import protocol_split
from modulenet_jax.errors import UserError, run_script
from modulenet_jax.runs import HV_REFERENCE, hypervolume
from modulenet_jax.search.base import pareto_indices
from modulenet_jax.search.runner import Run, dominated_by, final_hypervolume, make_algorithm, search_generation

VARIANTS = {
    "nsga2": {},
    "random": {"algorithm": "random"},
    "random-uniform": {"algorithm": "random", "continue_run_prob": 0.0},
    "nsga2-immigrants": {"immigrants": 3},
    "nsga2-no-shrink": {"shrink_prob": 0.0},
    "nsga2-shrink-0.1": {"shrink_prob": 0.1},
    "nsga2-shrink-0.5": {"shrink_prob": 0.5},
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

        def evaluate(new):
            for k, ev in zip(new, run.evaluate_many([run.space.decode(g) for g in new.values()], run.val)):
                cache[k] = (ev.error, ev.params)
                if save is not None:
                    save(k, cache[k])

        _, keys, _ = search_generation(algo, run.space, cache.__contains__, evaluate, cache.__getitem__)
        seen.update(dict.fromkeys(keys))
        hv = archive_hypervolume([cache[k] for k in seen])
        per_generation.append({"generation": algo.generation, "asked": algo.generation * cfg.population,
                                "distinct": len(seen), "hypervolume": hv})
        log(f"{name} seed {seed} generation {algo.generation}: hypervolume {hv:.4f} ({len(seen)} networks)")
    pts = np.array([cache[k] for k in seen])
    return {"variant": name, "seed": seed, "generations": per_generation,
            "hypervolume": per_generation[-1]["hypervolume"],
            "networks": len(seen), "best_accuracy": float(1 - pts[:, 0].min()),
            "front": pts[pareto_indices(pts)].tolist(), "archive": [list(k) for k in seen],
            "seconds": round(time.time() - t0, 1)}


def final_outcome(run: Run, config, row: dict, cache: dict, final_cache: dict, save=None) -> dict:
    """The run's final table as `modulenet search` makes it (the found networks' validation front
    and the sources, on the final split), summarised: the found networks no source dominates at or
    above the smallest source's accuracy, and the final split's hypervolume of the sources alone
    and with the found networks. `final_cache` maps a canonical genotype to its (accuracy,
    parameters) on the final split; `save(key, value)` is told each new one."""
    space = run.space
    sources = {space.canonical(space.encode_source(s)): s for s in space.sources if space.fits_source(s)}
    found = [tuple(k) for k in row["archive"] if tuple(k) not in sources]
    front = sorted((found[i] for i in pareto_indices(np.array([cache[k] for k in found]))), key=lambda k: cache[k][1])
    todo = [k for k in [*sources, *front] if k not in final_cache]
    final = protocol_split(run.dataset, config.final.split, config.final.size)
    for k, ev in zip(todo, run.evaluate_many([space.decode(np.array(k)) for k in todo], final)):
        final_cache[k] = (ev.accuracy, ev.params)
        if save is not None:
            save(k, final_cache[k])
    as_row = (lambda k: {"name": sources.get(k), "final_accuracy": final_cache[k][0], "params": final_cache[k][1]})
    source_rows, found_rows = [as_row(k) for k in sources], [as_row(k) for k in front]
    floor = min(source_rows, key=lambda r: r["params"])["final_accuracy"]
    free = [r for r in found_rows if r["final_accuracy"] >= floor and not dominated_by(r, source_rows)]
    return {"final_free": [[r["params"], r["final_accuracy"]] for r in free],
            "final_hypervolume_sources": final_hypervolume(source_rows),
            "final_hypervolume": final_hypervolume(source_rows + found_rows), "final_front_size": len(found_rows)}


def markdown(rows: list[dict], variants) -> str:
    final = any("final_free" in x for x in rows)
    lines = ["| variant | seeds | hypervolume after the last generation (mean) | per seed | distinct networks "
             "(mean) | best val accuracy |" + (" final: found networks no source dominates, at or above the "
                                               "smallest source (per seed) | final hypervolume (per seed) |"
                                               if final else ""),
             "| --- | ---: | ---: | --- | ---: | ---: |" + (" --- | --- |" if final else "")]
    for name in variants:
        r = [x for x in rows if x["variant"] == name]
        if r:
            extra = ""
            if final:
                extra = (" " + ", ".join(str(len(x["final_free"])) if "final_free" in x else "-" for x in r) + " | "
                         + ", ".join(f"{x['final_hypervolume']:.4f}" if "final_free" in x else "-" for x in r) + " |")
            lines.append(f"| {name} | {len(r)} | {np.mean([x['hypervolume'] for x in r]):.4f} | "
                         + ", ".join(f"{x['hypervolume']:.4f}" for x in r)
                         + f" | {np.mean([x['networks'] for x in r]):.1f} | {max(x['best_accuracy'] for x in r):.3f} |"
                         + extra)
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


def read_cache(path: Path, measure: str) -> dict:
    """canonical genotype -> (measure, parameters), from a JSON-lines file (empty if none)."""
    if not path.is_file():
        return {}
    return {tuple(r["canonical"]): (r[measure], r["params"]) for r in map(json.loads, path.read_text().splitlines())}


def append_cache(path: Path, measure: str, key, value) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"canonical": list(key), measure: value[0], "params": value[1]}) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet", help="a packaged config's name or a .py file")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--variants", nargs="+", default=["nsga2", "nsga2-no-shrink", "random", "random-uniform"],
                   choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/ablation")
    p.add_argument("--final", action="store_true",
                   help="also evaluate each run's final table (found networks' front and sources) on the final split")
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    config = load_config(args.config, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved, evaluations = out / "ablation.json", out / "evaluations.jsonl"
    final_evaluations = out / "final_evaluations.jsonl"
    setting = {"config": args.config, "config_overrides": list(args.set), "reference_point": list(HV_REFERENCE)}
    rows = []
    if saved.is_file():  # resumes: finished runs and every evaluated network are kept
        before = json.loads(saved.read_text())
        if {k: before.get(k) for k in setting} != setting:
            raise UserError(f"{saved} was made with {({k: before.get(k) for k in setting})}, not {setting}; "
                            f"give another --out")
        rows = before["rows"]
    cache = read_cache(evaluations, "error")
    final_cache = read_cache(final_evaluations, "accuracy")
    run = Run.from_config(config)  # after the folder is checked: a refused resume builds nothing
    save = (lambda key, value: append_cache(evaluations, "error", key, value))
    save_final = (lambda key, value: append_cache(final_evaluations, "accuracy", key, value))

    t0 = time.time()
    for seed in args.seeds:  # seed by seed, every variant: an interrupted comparison stays balanced
        for name in args.variants:
            if any(r["variant"] == name and r["seed"] == seed for r in rows):
                continue
            rows.append(run_variant(run, config, name, seed, cache, save=save))
            saved.write_text(json.dumps({**setting, "rows": rows}, indent=1))
    if args.final:
        for row in rows:
            if row["variant"] in args.variants and row["seed"] in args.seeds and "archive" in row:
                row.update(final_outcome(run, config, row, cache, final_cache, save_final))
        saved.write_text(json.dumps({**setting, "rows": rows}, indent=1))
    table = markdown(rows, args.variants)
    (out / "ablation.md").write_text(f"{table}\n\nWall time of this invocation: {time.time() - t0:.0f} s.\n")
    plot(rows, args.variants, out / "ablation.png")
    print(table)


if __name__ == "__main__":
    main()
