"""The largest difference between every torchvision zoo family and torchvision itself.

    python -m modulenet_jax.benchmarks.torchvision_equivalence            # every model at 32 px, 1-2 per family at 224
    python -m modulenet_jax.benchmarks.torchvision_equivalence --all-224  # every model at 224 px as well

Each model is torchvision's with random weights and random BatchNorm statistics
(`modulenet_jax.converters.verify.randomized_model`), converted, and run on 2 random images in fp32, eval
mode. Per family and input size it prints the largest |jax - torch| / max |torch| over the
models checked: over every module (each on torchvision's own input to it) and over the
logits (end to end). The acceptance bound is 1e-4. Prints a markdown table (the one in
docs/torchvision.md) and, with --json, writes every model's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from modulenet_jax.converters.torchvision_models import FAMILIES, convert, torch_state_dict
from modulenet_jax.converters.verify import AT_224, TOLERANCE, compare, randomized_model, single_torch_thread
from modulenet_jax.errors import run_script
from modulenet_jax import zoo


def measure(names, all_224: bool, seed: int, log) -> list[dict]:
    rows = []
    for name in names:
        model = randomized_model(name, seed)
        params = convert(torch_state_dict(model), name)
        for size in (32, 224) if (all_224 or name in AT_224) else (32,):
            t = time.time()
            r = compare(name, size, batch=2, seed=seed, model=model, params=params)
            worst = r.worst_module
            rows.append({"model": name, "family": zoo.get_model(name).family, "size": size,
                         "module_rel": worst[1] / worst[2], "worst_module": worst[0],
                         "logits_rel": r.logits_diff / r.logits_scale, "logits_diff": r.logits_diff,
                         "logits_scale": r.logits_scale, "ok": not r.failures()})
            log(f"{name} {size}px: modules {rows[-1]['module_rel']:.2e} ({worst[0]}), "
                f"logits {rows[-1]['logits_rel']:.2e} ({time.time() - t:.1f} s)")
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| family | models (32 px / 224 px) | modules, 32 px | logits, 32 px | modules, 224 px | logits, 224 px |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for family in FAMILIES:
        cells, names = [], []
        for size in (32, 224):
            sel = [r for r in rows if r["family"] == family and r["size"] == size]
            names.append(", ".join(r["model"].removeprefix("tv_") for r in sel) or "-")
            cells += [f"{max(r['module_rel'] for r in sel):.1e}" if sel else "-",
                      f"{max(r['logits_rel'] for r in sel):.1e}" if sel else "-"]
        lines.append(f"| {family} | {names[0]} / {names[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tv_*", help="zoo name pattern (default: every torchvision model)")
    p.add_argument("--all-224", action="store_true", help="check every model at 224 px too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every model's numbers here")
    return run_script(p, run_parsed, argv)


def run_parsed(args) -> int:
    names = zoo.list_models(args.models)
    if not names:
        raise SystemExit(f"no zoo model matches {args.models!r}")
    with single_torch_thread():
        rows = measure(names, args.all_224, args.seed, lambda m: print(m, file=sys.stderr, flush=True))
    print(f"Largest |jax - torch| / max |torch| (bound {TOLERANCE:g}); {len(names)} models, 2 random images, "
          f"fp32, seed {args.seed}.\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    failed = [f"{r['model']} at {r['size']} px" for r in rows if not r["ok"]]
    if failed:
        print(f"\nover the bound: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
