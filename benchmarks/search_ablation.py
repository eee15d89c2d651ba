"""Does seeding with the source models help? Does mutation towards fewer junctions? Stage-wise
crossover? Each search variant runs with the same evaluator (one shared fitness cache, so a
network is evaluated once whatever variant asks for it), for several seeds; the score is the
hypervolume of the validation front in (error, parameters / largest source's parameters),
reference point (1, 1.1).

    python -m modulenet_jax.benchmarks.search_ablation --config cifar10_resnet --out runs/ablation \\
        --seeds 0 1 --set search.population=12 search.generations=6 protocol.fit_images=512 \\
        protocol.stitch_images=256 data.val_size=500
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

VARIANTS = {
    "nsga2 (default)": {},
    "nsga2, no source seeds": {"seed_sources": False},
    "nsga2, no junction bias": {"continue_run_prob": 0.0},
    "nsga2, uniform crossover": {"crossover": "uniform"},
    "random search": {"algorithm": "random"},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cifar10_resnet", help="a packaged config's name or a .py file")
    p.add_argument("--set", nargs="*", default=())
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--out", default="runs/ablation")
    args = p.parse_args(argv)
    config = load_config(args.config, args.set)
    run = Run.from_config(config)
    scale = max(sum(r.params_count for r in run.kb.modules_of(s)) for s in run.kb.sources)
    cache: dict = {}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, overrides in VARIANTS.items():
        for seed in args.seeds:
            cfg = config.search.copy_and_resolve_references()
            with cfg.unlocked():
                cfg.update(overrides)
            algo = make_algorithm(run.space, cfg, seed)
            seen = []
            t0 = time.time()
            while algo.generation < cfg.generations:
                X = algo.ask()
                F = []
                for g in X:
                    key = run.space.canonical(g)
                    if key not in cache:
                        ev = run.evaluator.evaluate(run.space.decode(g), run.val)
                        cache[key] = (ev.error, ev.params)
                    seen.append(key)
                    F.append(cache[key])
                algo.tell(X, np.asarray(F))
            pts = np.array([cache[k] for k in dict.fromkeys(seen)])
            front = pts[pareto_indices(pts)]
            hv = HV(ref_point=np.array([1.0, 1.1]))(np.column_stack([front[:, 0], front[:, 1] / scale]))
            row = {"variant": name, "seed": seed, "hypervolume": float(hv), "networks": len(set(seen)),
                   "front": front.tolist(), "best_accuracy": float(1 - front[:, 0].min()),
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(f"{name:28s} seed {seed}: hypervolume {hv:.4f}, best val accuracy {row['best_accuracy']:.3f}, "
                  f"{row['networks']} networks ({row['seconds']} s)", flush=True)
            (out / "ablation.json").write_text(json.dumps({"config_overrides": list(args.set), "rows": rows}, indent=1))
    lines = ["| variant | hypervolume (mean over seeds) | per seed | best val accuracy |", "| --- | ---: | --- | ---: |"]
    for name in VARIANTS:
        r = [x for x in rows if x["variant"] == name]
        lines.append(f"| {name} | {np.mean([x['hypervolume'] for x in r]):.4f} | "
                     + ", ".join(f"{x['hypervolume']:.4f}" for x in r)
                     + f" | {max(x['best_accuracy'] for x in r):.3f} |")
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
