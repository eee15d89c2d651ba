"""A run's networks as standalone models: `modulenet export RUN NAME`, and the final table's
"after fine-tune" column.

A network of a run's final table (a front row such as `front3`, or a source) is fitted again
with the run's own config (`Evaluator.fit`: deterministic, so the very stitches, BatchNorm
statistics and head the final table scored), written as an exported folder (`export.py`),
loaded back from disk and scored on the run's final split: the count must equal the
`final_correct` that `final.json` records, and the folder's `model.json` says whether it did.

With the config's `final.finetune.epochs` > 0, the final table exports every row (the sources
too) to `RUN/models/NAME` and fine-tunes each with the same settings and seed (`finetune.py`),
on the same final split: `finetune_rows`. A resumed run reuses the exports and fine-tunes it
finds (an interrupted fine-tune resumes from its last epoch).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from modulenet_jax import export, train
from modulenet_jax.data import protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.jsonfile import read_json
from modulenet_jax.finetune import finetune_folder
from modulenet_jax.network import evaluate, from_fitted
from modulenet_jax.schema import setting
from modulenet_jax.search.run_folder import read_config
from modulenet_jax.space import Architecture

MODELS_DIR = "models"  # in a run folder: the final table's exported (and fine-tuned) networks


def read_final(run_dir) -> list[dict]:
    """The rows of a finished run's `final.json` (a `UserError` naming what is missing)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); give a folder written by `modulenet search`")
    if not (run_dir / "final.json").is_file():
        raise UserError(f"{run_dir} has no final.json: the search has not finished; run `modulenet search` on it "
                        f"to the end first")
    final = read_json(run_dir / "final.json", "final table",
                      "delete it and run `modulenet search` on the folder again to rewrite it")
    rows = final.get("rows")
    if not isinstance(rows, list) or any(not isinstance(r, dict) or "modules" not in r for r in rows):
        raise UserError(f"{run_dir}/final.json lists no modules (an older version wrote it); run `modulenet search` "
                        f"on the folder again to rewrite its final table")
    return rows


def find_row(rows: list[dict], name: str) -> dict:
    """The final-table row called `name` (a `UserError` listing the names there are)."""
    for r in rows:
        if r["name"] == name:
            return r
    raise UserError(f"no network {name!r} in the final table; its names: {', '.join(r['name'] for r in rows)}")


def open_run(run_dir, log: Callable[[str], None] = print):
    """The `Run` of a run folder, from its `config.json`, evaluating module by module (what
    `Evaluator.fit` needs; the fused and per-module drivers count the same)."""
    from modulenet_jax.search.runner import (
        Run,  # runner imports this module (its final table fine-tunes)
    )

    config = read_config(run_dir)
    config.evaluator.strategy = "loop"
    return Run.from_config(config, log=log)


def export_row(run, run_dir, row: dict, out, log: Callable[[str], None] = print) -> dict:
    """Fits the row's network under the run's protocol, exports it to `out`, loads it back and
    scores it on the run's final split; returns the description written to `model.json`
    (`verified.matches`: the count equals the row's `final_correct`)."""
    protocol = run.evaluator.protocol
    arch = Architecture(tuple(row["modules"]))
    records = [run.kb.record(m) for m in arch.modules]
    models = tuple(run.kb.source(r.source).model for r in records)
    model, variables = from_fitted(run.evaluator.fit(arch), models, protocol.dtype)
    params, flops = run.evaluator.cost(arch)
    cfg = run.config
    origin = {"run": str(Path(run_dir).resolve()), "name": row["name"], "kind": row["kind"],
              "data": {"source": cfg.data.source, "data_dir": cfg.data.get("data_dir")},
              "final": {"split": cfg.final.split, "size": cfg.final.size},
              "protocol": cfg.protocol.to_dict(), "fit_seed": cfg.data.fit_seed,
              "val_accuracy": row["val_accuracy"], "final_correct": row["final_correct"],
              "final_total": row["final_total"], "final_accuracy": row["final_accuracy"]}
    description = {"architecture": arch.describe(), "params": params, "flops": flops,
                   "junctions": sum(model.junctions), "origin": origin}
    export.save(out, model, variables, records, description)
    final = protocol_split(run.dataset, cfg.final.split, cfg.final.size)
    correct, total = evaluate(*export.load(out, finetuned=False), final, protocol.batch_size)
    description = export.read_description(out)
    description["verified"] = {"split": final.description, "correct": correct, "total": total,
                               "matches": (correct, total) == (row["final_correct"], row["final_total"])}
    export.write_description(out, description)
    log(f"exported {row['name']} to {out}: {correct}/{total} correct on {final.description} "
        + ("(as final.json records)" if description["verified"]["matches"]
           else f"(final.json records {row['final_correct']}/{row['final_total']}: NOT reproduced)"))
    return description


def export_named(run_dir, name: str, out, log: Callable[[str], None] = print) -> dict:
    """`modulenet export RUN NAME --out DIR`: the inputs checked first (the run, the name, the
    destination), then `export_row`."""
    export.check_out(out)
    row = find_row(read_final(run_dir), name)
    return export_row(open_run(run_dir, log), run_dir, row, out, log)


def finetune_settings(config) -> train.Settings:
    """The config's `final.finetune` block as trainer settings (seeded by the run's seed)."""
    def ft(name):
        return setting(config, f"final.finetune.{name}")

    return train.Settings(epochs=ft("epochs"), images=ft("images"), batch_size=ft("batch_size"),
                          learning_rate=ft("learning_rate"), optimizer=ft("optimizer"), seed=config.seed)


def _exported(folder: Path, row: dict) -> bool:
    """Does `folder` hold a finished, verified export of this row's network?"""
    if not (folder / export.MODEL_FILE).is_file():
        return False
    description = export.read_description(folder)
    return "verified" in description and [m["id"] for m in description["network"]["modules"]] == list(row["modules"])


def finetune_rows(run, run_dir, rows: list[dict], log: Callable[[str], None] = print) -> None:
    """Exports every final-table row to `run_dir/models/<name>` (kept from an earlier pass if
    its export finished) and fine-tunes it with the config's `final.finetune`; adds
    `finetuned_correct`, `finetuned_total` and `finetuned_accuracy` to each row."""
    settings = finetune_settings(run.config)
    for row in rows:
        folder = Path(run_dir) / MODELS_DIR / row["name"]
        if not _exported(folder, row):
            shutil.rmtree(folder, ignore_errors=True)  # an export cut short, or of another network (an extended run)
            export_row(run, run_dir, row, folder, log)
        last = finetune_folder(folder, settings, dataset=run.dataset, log=log)["metrics"]
        row.update({"finetuned_correct": last["eval_correct"], "finetuned_total": last["eval_total"],
                    "finetuned_accuracy": last["eval_accuracy"]})
        log(f"final: {row['name']} after fine-tune: {last['eval_correct']}/{last['eval_total']}")
