"""A search run: config in, run folder out, resumable at every generation.

The run folder holds `config.json`, `history.jsonl` (every network evaluated, with its
objectives, written as it is evaluated), `state.json` (the algorithm's state after the last
finished generation), `front.json` and `front.png` (the Pareto front on the validation
split) and `final.json` / `final.md` (the front and the source models evaluated under the
same protocol on the final test split). Re-running on the same folder resumes: the state
restores the algorithm and its random generator, the history restores every evaluation,
so the run ends exactly as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from modulenet_jax.config import to_dict
from modulenet_jax.data import Dataset, load_dataset, protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import OBJECTIVES, PREFIX_MEMORY_MB, Evaluation, Evaluator, evaluate_published
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.mixed_space import MixedSpace
from modulenet_jax.population import FusionError, PopulationEvaluator
from modulenet_jax.protocol import Protocol
from modulenet_jax.search.base import SearchAlgorithm, pareto_indices
from modulenet_jax.search.nsga2 import NSGA2
from modulenet_jax.search.random_search import RandomSearch
from modulenet_jax.space import Architecture, SearchSpace

ALGORITHMS = ("nsga2", "random")
TIMING_KEYS = ("seconds",)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_history(path: Path) -> list[dict]:
    """The history lines written so far; a torn last line (from a kill mid-write) is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines(keepends=True)
    records = []
    for line in lines:
        if not line.endswith("\n"):
            break
        records.append(json.loads(line))
    text = "".join(json.dumps(r) + "\n" for r in records)
    if text != path.read_text():
        _write_atomic(path, text)
    return records


def make_space(kb: KnowledgeBase, cfg) -> SearchSpace | MixedSpace:
    """`space.kind` "stages" (the default: `SearchSpace`) or "mixed" (`MixedSpace`, slots by
    reduction level, for sources of different families)."""
    sources = tuple(cfg.sources) if cfg.get("sources") else None
    kind = cfg.get("kind", "stages")
    if kind == "mixed":
        return MixedSpace(kb, max_depth=cfg.max_depth, sources=sources, min_reduction=cfg.get("min_reduction"))
    if kind != "stages":
        raise UserError(f"space.kind must be 'stages' or 'mixed', got {kind!r}")
    return SearchSpace(kb, cfg.granularity, min_depth=cfg.min_depth, max_depth=cfg.max_depth, sources=sources)


def make_algorithm(space: SearchSpace, cfg, seed: int) -> SearchAlgorithm:
    initial = tuple(space.encode_source(s) for s in space.sources
                    if cfg.seed_sources and space.fits_source(s))
    if cfg.algorithm == "nsga2":
        return NSGA2(space, cfg.population, seed, initial=initial, crossover_prob=cfg.crossover_prob,
                     mutation_prob=cfg.mutation_prob, continue_run_prob=cfg.continue_run_prob,
                     crossover=cfg.crossover)
    if cfg.algorithm == "random":
        return RandomSearch(space, cfg.population, seed, initial=initial)
    raise UserError(f"search.algorithm must be one of {ALGORITHMS}, got {cfg.algorithm!r}")


def load_knowledge(cfg) -> KnowledgeBase:
    """The configured knowledge base: a saved one, torchvision models (when the config names
    `weights`), or one built from the source checkpoints."""
    if cfg.get("path"):
        return KnowledgeBase.load(cfg.path)
    if cfg.get("weights") is not None:
        from modulenet_jax.converters.knowledge import build_from_torchvision  # torch lives in converters/

        return build_from_torchvision(tuple(cfg.sources), cfg.weights, cfg.get("input_size"),
                                      cfg.get("weights_seed", 0), tuple(cfg.weights_dirs))
    from modulenet_jax.converters.knowledge import build_from_pretrained  # torch lives in converters/

    return build_from_pretrained(tuple(cfg.sources), tuple(cfg.weights_dirs))


def load_data(cfg) -> Dataset:
    """The configured dataset: `source` a TFDS name, an ImageFolder root or a `.npz` bundle."""
    return load_dataset(cfg.source, cfg.get("data_dir"))


def make_protocol(cfg) -> Protocol:
    """The config's `protocol` section as a `Protocol`: a field out of range is the config's error."""
    try:
        return Protocol(**cfg.to_dict())
    except ValueError as e:
        raise UserError(f"{e}; fix it in the config or with --set protocol.<field>=...") from e


STRATEGIES = ("auto", "loop", "fused")


def choose_strategy(strategy: str) -> str:
    """`auto`: the fused population program on accelerators, one call per module on a CPU
    (where vmapping over different kernels is slower than a loop)."""
    if strategy not in STRATEGIES:
        raise UserError(f"evaluator.strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "loop" if jax.devices()[0].platform == "cpu" else "fused"
    return strategy


def make_population(config, space, protocol: Protocol, fit, evaluator: Evaluator,
                    log: Callable[[str], None] = print) -> PopulationEvaluator | None:
    """The fused population evaluator the config's `evaluator.strategy` asks for, or None for
    the per-module path. The fused program needs a staged space whose slot candidates share
    their shapes and ops: under `auto` another space falls back to the per-module path (the
    reason logged), under `fused` it is an error."""
    strategy = config.evaluator.strategy
    if choose_strategy(strategy) != "fused":
        return None
    try:
        if isinstance(space, MixedSpace):
            raise FusionError("a mixed-family space has slots whose candidates differ in shape")
        return PopulationEvaluator(space, protocol, fit, chunk_size=config.evaluator.chunk_size, evaluator=evaluator)
    except FusionError as e:
        if strategy == "fused":
            raise UserError(f"evaluator.strategy=fused cannot run this space ({e}); use loop or auto") from None
        log(f"evaluating module by module: the fused program cannot run this space ({e})")
        return None


@dataclasses.dataclass
class Run:
    """Everything a search needs, built from a config."""

    config: object
    kb: KnowledgeBase
    space: SearchSpace
    evaluator: Evaluator
    algorithm: SearchAlgorithm
    dataset: Dataset
    val: object
    objectives: tuple[str, ...]
    population: PopulationEvaluator | None = None

    def evaluate_many(self, archs, split) -> list[Evaluation]:
        """Evaluations of several networks: one fused program per chunk, or module by module with
        each shared prefix computed once."""
        if self.population is not None:
            return self.population.evaluate(archs, split)
        return self.evaluator.evaluate_many(archs, split)

    def evaluate_iter(self, archs, split):
        """`(index, evaluation, seconds)` as they are done: per network on the module path (the
        seconds of its own modules beyond a prefix computed earlier), per chunk when fused (the
        chunk's seconds shared equally)."""
        t = time.time()
        if self.population is None:
            for i, ev in self.evaluator.evaluate_iter(archs, split):
                yield i, ev, time.time() - t
                t = time.time()
            return
        step = self.population.chunk_size
        for start in range(0, len(archs), step):
            evs = self.population.evaluate(archs[start:start + step], split)
            seconds, t = (time.time() - t) / len(evs), time.time()
            for i, ev in enumerate(evs):
                yield start + i, ev, seconds

    @classmethod
    def from_config(cls, config, kb: KnowledgeBase | None = None, dataset: Dataset | None = None,
                    log: Callable[[str], None] = print) -> "Run":
        unknown = sorted(set(config.search.objectives) - set(OBJECTIVES))
        if unknown:
            raise UserError(f"search.objectives: unknown {unknown}; choose from {', '.join(OBJECTIVES)}")
        protocol = make_protocol(config.protocol)
        kb = kb or load_knowledge(config.knowledge)
        dataset = dataset or load_data(config.data)
        fit = protocol_split(dataset, "train", protocol.fit_images, seed=config.data.fit_seed)
        if len(fit) < protocol.fit_images:
            raise UserError(f"protocol.fit_images is {protocol.fit_images}, but {dataset.name} has only {len(fit)} "
                            f"train images; lower protocol.fit_images")
        val = protocol_split(dataset, "val", config.data.val_size)
        space = make_space(kb, config.space)
        algorithm = make_algorithm(space, config.search, config.seed)
        prefix_memory = int(config.evaluator.get("prefix_memory_mb", PREFIX_MEMORY_MB)) << 20
        evaluator = Evaluator(kb, protocol, fit, prefix_memory=prefix_memory)
        population = make_population(config, space, protocol, fit, evaluator, log)
        return cls(config, kb, space, evaluator, algorithm, dataset, val, tuple(config.search.objectives),
                   population)


def _record(generation, genotype, space, ev: Evaluation, seconds) -> dict:
    arch = space.decode(genotype)
    return {"generation": generation, "genotype": [int(v) for v in genotype],
            "canonical": list(space.canonical(genotype)), "architecture": arch.describe(),
            "modules": list(arch.modules), **ev.to_json(), "error": ev.error, "seconds": round(seconds, 3)}


def search(run: Run, out_dir, resume: bool = True, log: Callable[[str], None] = print) -> dict:
    """Runs (or resumes) the configured number of generations; returns the front on `val`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_json = json.dumps(to_dict(run.config), indent=2, sort_keys=True) + "\n"
    cfg_path, state_path, hist_path = out / "config.json", out / "state.json", out / "history.jsonl"
    if cfg_path.is_file() and resume:
        if cfg_path.read_text() != config_json:
            raise UserError(f"{out} holds a run of a different config; choose a new --out, or "
                             f"pass --restart to start this folder over")
    elif not resume:
        for p in (state_path, hist_path):
            p.unlink(missing_ok=True)
    _write_atomic(cfg_path, config_json)
    history = _read_history(hist_path)
    cache = {tuple(r["canonical"]): r for r in history}
    if resume and state_path.is_file():
        run.algorithm.load_state_dict(json.loads(state_path.read_text()))
        log(f"resuming {out} after generation {run.algorithm.generation} "
            f"({len(cache)} networks already evaluated)")
    generations = run.config.search.generations
    with open(hist_path, "a") as hist:
        while run.algorithm.generation < generations:
            gen = run.algorithm.generation
            t0 = time.time()
            X = run.algorithm.ask()
            new = {}
            for g in X:
                key = run.space.canonical(g)
                if key not in cache and key not in new:
                    new[key] = g
            # written as evaluated (the module path: per network; fused: per chunk), so a kill loses little
            todo = list(new.values())
            for i, ev, seconds in run.evaluate_iter([run.space.decode(g) for g in todo], run.val):
                cache[run.space.canonical(todo[i])] = _record(gen, todo[i], run.space, ev, seconds)
                hist.write(json.dumps(cache[run.space.canonical(todo[i])]) + "\n")
                hist.flush()
            fresh = len(new)
            F = [[cache[run.space.canonical(g)][o] for o in run.objectives] for g in X]
            run.algorithm.tell(X, np.asarray(F))
            _write_atomic(state_path, json.dumps(run.algorithm.state_dict()) + "\n")
            front = front_records(list(cache.values()), run.objectives)
            best = max(front, key=lambda r: r["accuracy"])
            log(f"generation {gen + 1}/{generations}: {fresh} evaluated, {len(X) - fresh} cached, "
                f"front {len(front)}, best val accuracy {best['accuracy']:.4f} "
                f"at {best['params']:,} params ({time.time() - t0:.1f} s)")
    records = list(cache.values())
    front = front_records(records, run.objectives)
    _write_atomic(out / "front.json", json.dumps(front, indent=1) + "\n")
    return {"evaluated": len(records), "front": front}


def front_records(records: list[dict], objectives) -> list[dict]:
    """The non-dominated records (on the search's objectives), sorted by parameters."""
    if not records:
        return []
    F = np.array([[r[o] for o in objectives] for r in records])
    front = ({k: v for k, v in records[i].items() if k not in TIMING_KEYS} for i in pareto_indices(F))
    return sorted(front, key=lambda r: (r["params"], r["error"]))


def final_table(run: Run, front: list[dict], out_dir, log: Callable[[str], None] = print) -> list[dict]:
    """The front's networks and every source model, under the same protocol, on the final split.

    Sources also get their as-published accuracy (own BN statistics and head) for reference.
    """
    cfg = run.config.final
    final = protocol_split(run.dataset, cfg.split, cfg.size)
    rows = []
    by_modules = {tuple(r["modules"]): r for r in front}
    sources = list(run.space.sources)
    source_archs = [Architecture.of_source(run.kb, s) for s in sources]
    found = [(i, r) for i, r in enumerate(front) if tuple(r["modules"]) not in {a.modules for a in source_archs}]
    archs = source_archs + [Architecture(tuple(r["modules"])) for _, r in found]
    evs = run.evaluate_many(archs, final)
    missing_val = [a for a in source_archs if a.modules not in by_modules]
    val_of = {a.modules: e.accuracy for a, e in zip(missing_val, run.evaluate_many(missing_val, run.val))}
    for source, arch, ev in zip(sources, source_archs, evs):
        rec = by_modules.get(arch.modules)
        pub, _ = evaluate_published(run.kb, source, final, run.evaluator.protocol.batch_size,
                                    input_size=run.evaluator.protocol.input_size)
        rows.append({"name": source, "kind": "source", "architecture": arch.describe(),
                     "params": ev.params, "flops": ev.flops, "junctions": ev.junctions,
                     "val_accuracy": rec["accuracy"] if rec else val_of[arch.modules],
                     "final_correct": ev.correct, "final_total": ev.total,
                     "final_accuracy": ev.accuracy, "published_final_accuracy": pub / ev.total,
                     "on_front": rec is not None})
        log(f"final: {source}: {ev.correct}/{ev.total}")
    for (i, rec), ev in zip(found, evs[len(sources):]):
        rows.append({"name": f"front{i}", "kind": "found", "architecture": rec["architecture"],
                     "params": ev.params, "flops": ev.flops, "junctions": ev.junctions,
                     "val_accuracy": rec["accuracy"], "final_correct": ev.correct, "final_total": ev.total,
                     "final_accuracy": ev.accuracy, "published_final_accuracy": None, "on_front": True})
        log(f"final: front{i}: {ev.correct}/{ev.total}")
    rows.sort(key=lambda r: (r["params"], r["name"]))
    out = Path(out_dir)
    _write_atomic(out / "final.json", json.dumps({"split": final.description, "rows": rows}, indent=1) + "\n")
    _write_atomic(out / "final.md", markdown_table(rows, final.description) + "\n")
    return rows


def beats(row: dict, sources: list[dict]) -> list[str]:
    """The sources this row beats: more accurate on the final split at no more parameters."""
    return [s["name"] for s in sources
            if row["final_accuracy"] > s["final_accuracy"] and row["params"] <= s["params"]]


def markdown_table(rows: list[dict], split: str) -> str:
    sources = [r for r in rows if r["kind"] == "source"]
    lines = [f"Final split: {split}. Protocol accuracy = fitted stitches/BN/head as in the search; "
             f"published = the source's own BN statistics and head.", "",
             "| name | params | MFLOPs | junctions | val acc | final acc | published final acc | beats |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        pub = "" if r["published_final_accuracy"] is None else f"{r['published_final_accuracy']:.4f}"
        won = ", ".join(beats(r, sources)) if r["kind"] == "found" else ""
        lines.append(f"| {r['name']} | {r['params']:,} | {r['flops'] / 1e6:.1f} | {r['junctions']} | "
                     f"{r['val_accuracy']:.4f} | {r['final_accuracy']:.4f} ({r['final_correct']}/{r['final_total']}) "
                     f"| {pub} | {won} |")
    return "\n".join(lines)


def plot_front(history: list[dict], front: list[dict], rows: list[dict], path, objectives) -> None:
    """Validation error vs parameters of every evaluated network, the front, and the sources."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    ax.scatter([r["params"] for r in history], [100 * r["accuracy"] for r in history], s=8, c="0.7",
               label=f"evaluated ({len(history)})")
    ax.step([r["params"] for r in front], [100 * r["accuracy"] for r in front], where="post", c="C3",
            marker="o", label="Pareto front")
    src = [r for r in rows if r["kind"] == "source"]
    ax.scatter([r["params"] for r in src], [100 * r["val_accuracy"] for r in src], marker="*", s=150,
               c="C0", label="source models", zorder=3)
    ax.set(xlabel="parameters", ylabel="validation accuracy (%)", title=f"search ({' vs '.join(objectives)})")
    ax.legend()
    ax = axes[1]
    found = [r for r in rows if r["kind"] == "found"]
    ax.plot([r["params"] for r in found], [100 * r["final_accuracy"] for r in found], "o-", c="C3",
            label="found (protocol)")
    ax.scatter([r["params"] for r in src], [100 * r["final_accuracy"] for r in src], marker="*", s=150,
               c="C0", label="sources (protocol)", zorder=3)
    ax.scatter([r["params"] for r in src], [100 * r["published_final_accuracy"] for r in src], marker="x",
               s=60, c="C2", label="sources (published)", zorder=3)
    for r in src:
        ax.annotate(r["name"].replace("cifar_", ""), (r["params"], 100 * r["final_accuracy"]), fontsize=8)
    ax.set(xlabel="parameters", ylabel="final test accuracy (%)", title="final split, same protocol")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(config, out_dir, resume: bool = True, log: Callable[[str], None] = print) -> dict:
    """Search, then the final table and the plot: the main job."""
    run = Run.from_config(config, log=log)
    log(f"space: {run.space.describe()}")
    result = search(run, out_dir, resume, log)
    rows = final_table(run, result["front"], out_dir, log)
    history = _read_history(Path(out_dir) / "history.jsonl")
    plot_front(history, result["front"], rows, Path(out_dir) / "front.png", run.objectives)
    return {"out": str(out_dir), "evaluated": result["evaluated"], "front": result["front"], "final": rows}
