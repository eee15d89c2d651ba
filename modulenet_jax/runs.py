"""Reading run folders back: one run's front at a glance (`modulenet runs show`), several runs
side by side (`modulenet runs compare`), with their hypervolumes and one plot.

The hypervolume is pymoo's indicator over every network a run evaluated, on the objectives
(validation error, parameters / 10⁶), against the fixed reference point `HV_REFERENCE`
(error 1, 1,000,000 parameters): the share of that box the run's front dominates, between 0
and 1. Fixed, so that any two runs compare (whatever their search objectives were; networks
beyond the reference count nothing: give another with `--reference` for spaces of larger
networks). It is a number of the validation split: runs with different `data.val_size`
measure it on different images.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from modulenet_jax.errors import UserError
from modulenet_jax.search.base import pareto_indices
from modulenet_jax.search.run_folder import CONFIG, HISTORY, read_history, read_json, read_state

HV_REFERENCE = (1.0, 1_000_000)  # (validation error, parameters)


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run folder holds: its config, how far it is, every network it evaluated, its
    front on (error, params) and, once it has one, its final table."""

    path: Path
    config: dict
    generations_done: int
    history: list[dict]
    final: dict | None

    @property
    def generations(self) -> int:
        """The run's budget (`search.generations`)."""
        return self.config["search"]["generations"]

    @property
    def finished(self) -> bool:
        """Has the search done its budget? (The final table may still be missing.)"""
        return self.generations_done >= self.generations

    @property
    def front(self) -> list[dict]:
        """The networks no other network of the run beats on both validation error and parameters,
        by parameters."""
        if not self.history:
            return []
        F = np.array([[r["error"], r["params"]] for r in self.history])
        return sorted((self.history[i] for i in pareto_indices(F)), key=lambda r: (r["params"], r["error"]))

    def hypervolume(self, reference=HV_REFERENCE) -> float:
        """`hypervolume` of every network the run evaluated."""
        return hypervolume(self.history, reference)

    def describe(self, reference=HV_REFERENCE) -> dict:
        """The run in one JSON-able row (for `runs compare`), its hypervolume against `reference`."""
        best = max(self.history, key=lambda r: r["accuracy"], default=None)
        return {"run": str(self.path), "algorithm": self.config["search"]["algorithm"],
                "generations": f"{self.generations_done}/{self.generations}", "evaluated": len(self.history),
                "val_images": best["total"] if best else None, "front": len(self.front),
                "hypervolume": round(self.hypervolume(reference), 6),
                "best_accuracy": best["accuracy"] if best else None,
                "best_params": best["params"] if best else None}


def hypervolume(records: list[dict], reference=HV_REFERENCE) -> float:
    """pymoo's hypervolume of the records' (error, params / 10⁶) against `reference`
    (error, parameters), normalised so that the whole reference box is 1."""
    from pymoo.indicators.hv import HV

    if not records:
        return 0.0
    scale = np.array([reference[0], reference[1]], np.float64)
    F = np.array([[r["error"], r["params"]] for r in records], np.float64) / scale
    return float(HV(ref_point=np.ones(2))(F))


def load_run(path) -> RunSummary:
    """A run folder as it stands (finished or not); a `UserError` if it is not one."""
    path = Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"{path} is not a run folder (no {CONFIG}); give a folder `modulenet search` wrote")
    config = read_json(path / CONFIG, "config")
    if not isinstance(config.get("search"), dict) or not isinstance(config["search"].get("generations"), int):
        raise UserError(f"{path / CONFIG} has no search.generations: it is not a run's config; give a folder "
                        f"`modulenet search` wrote")
    final = read_json(path / "final.json", "final table") if (path / "final.json").is_file() else None
    if final is not None and not isinstance(final.get("rows"), list):
        raise UserError(f"{path / 'final.json'} has no rows: it was changed outside modulenet; resume the run "
                        f"(modulenet search with --out {path}) to write it again")
    return RunSummary(path, config, read_state(path).get("generation", 0), read_history(path / HISTORY, repair=False),
                      final)


def front_rows(run: RunSummary) -> list[dict]:
    """The front as table rows, with each network's final accuracy where the final table has it."""
    final = {r["architecture"]: r for r in (run.final or {}).get("rows", [])}
    rows = []
    for i, r in enumerate(run.front):
        row = {"#": i, "params": r["params"], "MFLOPs": round(r["flops"] / 1e6, 1), "junctions": r["junctions"],
               "val_accuracy": r["accuracy"]}
        if run.final is not None:
            row["final_accuracy"] = final[r["architecture"]]["final_accuracy"] if r["architecture"] in final else None
        rows.append({**row, "genotype": json.dumps(r["genotype"]), "architecture": r["architecture"]})
    return rows


def plot_runs(runs: list[RunSummary], path, reference=HV_REFERENCE) -> Path:
    """One plot: every run's evaluated networks and its front (validation accuracy against
    parameters), the hypervolume in the legend; returns the file written (`path`, with `.png`
    added where it has no extension). A folder or a format matplotlib does not write is a `UserError`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--plot {path} is a folder; give a file name, e.g. {path / 'front.png'}")
    path = path if path.suffix else path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise UserError(f"--plot {path}: matplotlib cannot write {path.suffix!r} files; end the name in .png "
                        f"(or {', '.join('.' + f for f in sorted(formats) if f != 'png')})")

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run in enumerate(runs):
        colour = f"C{i % 10}"
        ax.scatter([r["params"] for r in run.history], [100 * r["accuracy"] for r in run.history], s=6, c=colour,
                   alpha=0.25)
        front = run.front
        ax.step([r["params"] for r in front], [100 * r["accuracy"] for r in front], where="post", c=colour,
                marker="o", label=f"{run.path.name} (HV {run.hypervolume(reference):.4f})")
    ax.set(xlabel="parameters", ylabel="validation accuracy (%)",
           title=f"fronts on the validation split; HV reference (error {reference[0]}, {reference[1]:,} params)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
