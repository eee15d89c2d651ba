"""A search run: config in, run folder out, resumable at every generation.

The run folder (`run_folder.py`) holds `config.json`, `history.jsonl` (every network
evaluated, with its objectives, written as it is evaluated), `state.json` (the algorithm's
state after the last finished generation), `log.txt`, `front.json` and `front.png` (the Pareto
front on the validation split) and `final.json` / `final.md` (the front and the source models
evaluated under the same protocol on the final test split; with `final.finetune`, also after
fine-tuning each of them, exported to `models/<name>`). Re-running on the same folder
resumes: the state restores the algorithm and its random generator, the history restores
every evaluation, so the run ends exactly as an uninterrupted one; a larger
`search.generations` extends a finished run exactly as a run started with that budget.

Everything that can be checked before work is (`schema`, `checks`, `RunFolder.check`): the
config, the output folder, then the data, then the knowledge base against both.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np

from modulenet_jax import schema
from modulenet_jax.atomic import write_atomic
from modulenet_jax.checks import check_images, check_sizes, classes_differ
from modulenet_jax.config import to_dict
from modulenet_jax.data import Dataset, fit_split, load_dataset, protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import Evaluation, Evaluator, evaluate_published
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.mixed_space import MixedSpace
from modulenet_jax.population import FusionError, PopulationEvaluator, choose_strategy, default_group
from modulenet_jax.progress import NO_PROGRESS, Progress
from modulenet_jax.protocol import Protocol
from modulenet_jax.runs import HV_REFERENCE, hypervolume
from modulenet_jax.schema import setting
from modulenet_jax.search.base import SearchAlgorithm, pareto_indices
from modulenet_jax.search.models import finetune_rows
from modulenet_jax.search.nsga2 import NSGA2
from modulenet_jax.search.random_search import RandomSearch
from modulenet_jax.search.run_folder import HISTORY, RESTART_HINT, STATE, RunFolder, read_history
from modulenet_jax.space import Architecture, SearchSpace

TIMING_KEYS = ("seconds",)


def make_space(kb: KnowledgeBase, cfg) -> SearchSpace | MixedSpace:
    """The config's `space` section: `space.kind` "stages" (`SearchSpace`) or "mixed"
    (`MixedSpace`, slots by reduction level, for sources of different families)."""
    sources = tuple(setting(cfg, "space.sources")) or None
    max_depth = setting(cfg, "space.max_depth")
    if setting(cfg, "space.kind") == "mixed":
        return MixedSpace(kb, max_depth=max_depth, sources=sources, min_reduction=setting(cfg, "space.min_reduction"))
    return SearchSpace(kb, setting(cfg, "space.granularity"), min_depth=setting(cfg, "space.min_depth"),
                       max_depth=max_depth, sources=sources)


def make_algorithm(space: SearchSpace, cfg, seed: int) -> SearchAlgorithm:
    """The config's `search` section as an algorithm, seeded with the sources the space holds
    (`search.seed_sources`)."""
    initial = tuple(space.encode_source(s) for s in space.sources
                    if cfg.seed_sources and space.fits_source(s))
    if cfg.algorithm == "nsga2":
        return NSGA2(space, cfg.population, seed, initial=initial, crossover_prob=cfg.crossover_prob,
                     mutation_prob=cfg.mutation_prob, continue_run_prob=cfg.continue_run_prob,
                     crossover=cfg.crossover, immigrants=setting(cfg, "search.immigrants"),
                     shrink_prob=setting(cfg, "search.shrink_prob"))
    return RandomSearch(space, cfg.population, seed, initial=initial, continue_run_prob=cfg.continue_run_prob)


def load_knowledge(cfg, progress: Progress = NO_PROGRESS) -> KnowledgeBase:
    """The knowledge base the config's `knowledge` section names: a saved one, torchvision
    models (when it names `weights`), or one built from the source checkpoints."""
    if setting(cfg, "knowledge.path"):
        return KnowledgeBase.load(cfg.path)
    if setting(cfg, "knowledge.weights") is not None:
        from modulenet_jax.converters.knowledge import build_from_torchvision  # torch lives in converters/

        return build_from_torchvision(tuple(cfg.sources), cfg.weights, setting(cfg, "knowledge.input_size"),
                                      setting(cfg, "knowledge.weights_seed"), tuple(cfg.weights_dirs), progress)
    from modulenet_jax.converters.knowledge import build_from_pretrained  # torch lives in converters/

    return build_from_pretrained(tuple(cfg.sources), tuple(cfg.weights_dirs), progress)


def load_data(cfg, progress: Progress = NO_PROGRESS) -> Dataset:
    """The dataset the config's `data` section names: a TFDS name, an ImageFolder root or a `.npz` bundle."""
    return load_dataset(cfg.source, setting(cfg, "data.data_dir"), progress)


def make_protocol(cfg) -> Protocol:
    """The config's `protocol` section as a `Protocol`: a field out of range is the config's error."""
    try:
        return Protocol(**cfg.to_dict())
    except ValueError as e:
        raise UserError(f"{e}; fix it in the config or with --set protocol.<field>=...") from e


def make_population(config, space, protocol: Protocol, fit, evaluator: Evaluator,
                    log: Callable[[str], None] = print) -> PopulationEvaluator | None:
    """The fused population evaluator the config's `evaluator.strategy` asks for, or None for
    the per-module path. The fused program needs a staged space whose slot candidates share
    their shapes and ops: under `auto` another space falls back to the per-module path (the
    reason logged), under `fused` it is an error. `evaluator.grouped_layout` asks for its
    fit pass and scoring in the grouped layout (an error where an op has no grouped form),
    `evaluator.group_width` for its convolutions packed (`PopulationEvaluator`)."""
    strategy = config.evaluator.strategy
    if choose_strategy(strategy) != "fused":
        return None
    try:
        if isinstance(space, MixedSpace):
            raise FusionError("a mixed-family space has slots whose candidates differ in shape")
        group = setting(config, "evaluator.group") or default_group(jax.devices()[0].platform)
        population = PopulationEvaluator(space, protocol, fit, chunk_size=setting(config, "evaluator.chunk_size"),
                                         evaluator=evaluator, group=group, largest=config.search.population)
    except FusionError as e:
        if strategy == "fused":
            raise UserError(f"evaluator.strategy=fused cannot run this space ({e}); use loop or auto") from None
        log(f"evaluating module by module: the fused program cannot run this space ({e})")
        return None
    if setting(config, "evaluator.grouped_layout"):
        lacking = population.without_grouped_form()
        if lacking:
            raise UserError(f"evaluator.grouped_layout=True: no grouped form of {lacking} "
                            "(only the CIFAR ResNet ops have one); set it False")
        population.grouped_layout = setting(config, "evaluator.group_width") or True
    elif setting(config, "evaluator.group_width"):
        raise UserError("evaluator.group_width packs the grouped layout's convolutions: set "
                        "evaluator.grouped_layout=True too, or evaluator.group_width=0")
    return population


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
                    log: Callable[[str], None] = print, progress: Progress = NO_PROGRESS,
                    evaluate_only: bool = False) -> "Run":
        """Everything the config names, each part checked against the others as soon as it is
        there: the config itself, the data (split sizes; with `evaluate_only`, only the fit
        images: no search will read the validation and final subsets), the knowledge base
        (image size)."""
        schema.validate(config)
        protocol = make_protocol(config.protocol)
        dataset = dataset or load_data(config.data, progress)
        if not evaluate_only:
            check_sizes(config, dataset)
        kb = kb or load_knowledge(config.knowledge, progress)
        check_images(kb, dataset, protocol.input_size)
        space = make_space(kb, config.space)
        for reason in filter(None, (classes_differ(kb, s, dataset) for s in space.sources)):
            log(f"note: {reason}: the protocol fits a head for {dataset.name}'s classes; the final table has no "
                f"as-published accuracy for that source")
        fit = fit_split(dataset, protocol, config.data.fit_seed)
        val = protocol_split(dataset, "val", config.data.val_size)
        algorithm = make_algorithm(space, config.search, config.seed)
        evaluator = Evaluator(kb, protocol, fit, prefix_memory=setting(config, "evaluator.prefix_memory_mb") << 20)
        population = make_population(config, space, protocol, fit, evaluator, log)
        return cls(config, kb, space, evaluator, algorithm, dataset, val, tuple(config.search.objectives),
                   population)


def _record(generation, genotype, space, ev: Evaluation, seconds) -> dict:
    arch = space.decode(genotype)
    return {"generation": generation, "genotype": [int(v) for v in genotype],
            "canonical": list(space.canonical(genotype)), "architecture": arch.describe(),
            "modules": list(arch.modules), **ev.to_json(), "error": ev.error, "seconds": round(seconds, 3)}


def go_on() -> None:
    """The default `stop` check of `search`, `final_table` and `run_all`: never stops."""


def search(run: Run, out_dir, resume: bool = True, log: Callable[[str], None] = print,
           progress: Progress = NO_PROGRESS, stop: Callable[[], None] = go_on) -> dict:
    """Runs (or resumes, or extends) the configured number of generations in the run folder
    `out_dir`; returns the front on `val`. `resume=False` starts the folder over (the old run
    stays whole until the new one has evaluated its first network). A state the algorithm cannot
    resume (another space's genotypes, non-finite objectives) is refused before the folder changes."""
    folder = RunFolder.open(out_dir, to_dict(run.config), restart=not resume, log=log,
                            resume=lambda state: _restore(run.algorithm, state, Path(out_dir) / STATE))
    try:
        return _search(run, folder, folder.teed(log), progress, stop)
    except BaseException:
        folder.abandon()  # only while nothing is evaluated: a new run leaves nothing, a restart the old run
        raise


def _restore(algorithm: SearchAlgorithm, state: dict, path: Path) -> None:
    try:
        algorithm.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} does not hold a {algorithm.name} search state ({type(e).__name__}: {e}); restore "
                        f"it, or {RESTART_HINT}") from None


def search_generation(algorithm: SearchAlgorithm, space, known: Callable[[tuple], bool],
                      evaluate: Callable[[dict], None], objectives: Callable[[tuple], list]):
    """One generation of any search: ask; `evaluate` the networks not `known` yet, each once, as
    {canonical key: genotype}; tell every asked genotype its network's `objectives`. Returns (the
    asked genotypes, their networks' keys, the keys evaluated)."""
    X = algorithm.ask()
    keys = [space.canonical(g) for g in X]
    new = {}
    for key, g in zip(keys, X):
        if not known(key) and key not in new:
            new[key] = g
    evaluate(new)
    algorithm.tell(X, np.asarray([objectives(key) for key in keys]))
    return X, keys, list(new)


def _search(run: Run, folder: RunFolder, log: Callable[[str], None], progress: Progress,
            stop: Callable[[], None]) -> dict:
    log(f"space: {run.space.describe()}")
    cache = {tuple(r["canonical"]): r for r in folder.history()}
    if run.algorithm.generation:  # restored by `search`
        log(f"resuming {folder.target} after generation {run.algorithm.generation} "
            f"({len(cache)} networks already evaluated)")
    generations = run.config.search.generations
    with progress.task("search", generations, "generations", done=run.algorithm.generation) as advance_search:
        while run.algorithm.generation < generations:
            gen = run.algorithm.generation
            t0 = time.time()

            def evaluate(new, gen=gen):
                # written as evaluated (the module path: per network; fused: per chunk), so a kill loses little
                keys, todo = list(new), list(new.values())
                with progress.task(f"generation {gen + 1}/{generations}", len(todo), "networks") as advance:
                    for i, ev, seconds in run.evaluate_iter([run.space.decode(g) for g in todo], run.val):
                        cache[keys[i]] = _record(gen, todo[i], run.space, ev, seconds)
                        folder.append_history(cache[keys[i]])
                        advance()
                        stop()  # where an interruption loses nothing: the network is in the history

            X, _, new = search_generation(run.algorithm, run.space, cache.__contains__, evaluate,
                                       lambda key: [cache[key][o] for o in run.objectives])
            folder.write_state(run.algorithm.state_dict())
            front = front_records(list(cache.values()), run.objectives)
            best = max(front, key=lambda r: r["accuracy"])
            log(f"generation {gen + 1}/{generations}: {len(new)} evaluated, {len(X) - len(new)} cached, "
                f"front {len(front)}, best val accuracy {best['accuracy']:.4f} "
                f"at {best['params']:,} params ({time.time() - t0:.1f} s)")
            advance_search()
    folder.commit()
    records = list(cache.values())
    front = front_records(records, run.objectives)
    write_atomic(folder.path / "front.json", json.dumps(front, indent=1) + "\n")
    sources = {Architecture.of_source(run.kb, s).modules for s in run.space.sources}
    found_front = front_records([r for r in records if tuple(r["modules"]) not in sources], run.objectives)
    return {"evaluated": len(records), "front": front, "found_front": found_front}


def front_records(records: list[dict], objectives) -> list[dict]:
    """The non-dominated records (on the search's objectives), sorted by parameters."""
    if not records:
        return []
    F = np.array([[r[o] for o in objectives] for r in records])
    front = ({k: v for k, v in records[i].items() if k not in TIMING_KEYS} for i in pareto_indices(F))
    return sorted(front, key=lambda r: (r["params"], r["error"]))


def _evaluate_all(run: Run, archs, split, advance, stop: Callable[[], None]) -> list[Evaluation]:
    """`run.evaluate_iter`'s evaluations in the order of `archs`, `advance()` and `stop()` after each."""
    out: list[Evaluation | None] = [None] * len(archs)
    for i, ev, _ in run.evaluate_iter(archs, split):
        out[i] = ev
        advance()
        stop()
    return out


def final_table(run: Run, result: dict, out_dir, log: Callable[[str], None] = print,
                progress: Progress = NO_PROGRESS, stop: Callable[[], None] = go_on) -> list[dict]:
    """Every source model and the found networks' own front (`search`'s `found_front`: the found
    networks no other found network dominates on `val`), under the same protocol, on the final
    split. The found networks' front, not the joint one, so that a found network just behind a
    source on `val` (a noisy estimate) is still measured where it counts.

    Sources also get their as-published accuracy (own BN statistics and head) for reference,
    where the data has their classes (`checks.classes_differ`; None otherwise).
    """
    cfg = run.config.final
    final = protocol_split(run.dataset, cfg.split, cfg.size)
    rows = []
    by_modules = {tuple(r["modules"]): r for r in result["front"]}
    sources = list(run.space.sources)
    source_archs = [Architecture.of_source(run.kb, s) for s in sources]
    found = list(enumerate(result["found_front"]))
    archs = source_archs + [Architecture(tuple(r["modules"])) for _, r in found]
    missing_val = [a for a in source_archs if a.modules not in by_modules]
    published = [s for s in sources if classes_differ(run.kb, s, run.dataset) is None]
    with progress.task("final table", len(archs) + len(missing_val) + len(published), "networks") as advance:
        evs = _evaluate_all(run, archs, final, advance, stop)
        val_of = {a.modules: e.accuracy
                  for a, e in zip(missing_val, _evaluate_all(run, missing_val, run.val, advance, stop))}
        pub = {}
        for source in published:
            pub[source] = evaluate_published(run.kb, source, final, run.evaluator.protocol.batch_size,
                                             input_size=run.evaluator.protocol.input_size)[0] / len(final)
            advance()
            stop()
    for source, arch, ev in zip(sources, source_archs, evs):
        rec = by_modules.get(arch.modules)
        rows.append({"name": source, "kind": "source", "architecture": arch.describe(), "modules": list(arch.modules),
                     "params": ev.params, "flops": ev.flops, "junctions": ev.junctions,
                     "val_accuracy": rec["accuracy"] if rec else val_of[arch.modules],
                     "final_correct": ev.correct, "final_total": ev.total,
                     "final_accuracy": ev.accuracy, "published_final_accuracy": pub.get(source),
                     "on_front": rec is not None})
        log(f"final: {source}: {ev.correct}/{ev.total}")
    for (i, rec), ev in zip(found, evs[len(sources):]):
        rows.append({"name": f"front{i}", "kind": "found", "architecture": rec["architecture"],
                     "modules": rec["modules"], "params": ev.params, "flops": ev.flops, "junctions": ev.junctions,
                     "val_accuracy": rec["accuracy"], "final_correct": ev.correct, "final_total": ev.total,
                     "final_accuracy": ev.accuracy, "published_final_accuracy": None,
                     "on_front": tuple(rec["modules"]) in by_modules})
        log(f"final: front{i}: {ev.correct}/{ev.total}")
    rows.sort(key=lambda r: (r["params"], r["name"]))
    costs = cost_objectives(run.objectives)
    _write_final(Path(out_dir), final.description, rows, costs)
    if setting(run.config, "final.finetune.epochs") > 0:
        finetune_rows(run, out_dir, rows, log)
        _write_final(Path(out_dir), final.description, rows, costs)
    return rows


def _write_final(out: Path, split: str, rows: list[dict], costs: tuple[str, ...]) -> None:
    write_atomic(out / "final.json", json.dumps({"split": split, "costs": list(costs), "rows": rows}, indent=1) + "\n")
    write_atomic(out / "final.md", markdown_table(rows, split, costs) + "\n")


COST_NAMES = {"params": "parameters", "flops": "FLOPs"}


def cost_objectives(objectives) -> tuple[str, ...]:
    """The costs the final table judges a found network on against the sources: the search's
    objectives other than the error (parameters where it has none)."""
    return tuple(o for o in objectives if o != "error") or ("params",)


def beats(row: dict, sources: list[dict], costs=("params",)) -> list[str]:
    """The sources this row beats: more accurate on the final split at no more of any cost."""
    return [s["name"] for s in sources
            if row["final_accuracy"] > s["final_accuracy"] and all(row[c] <= s[c] for c in costs)]


def markdown_table(rows: list[dict], split: str, costs=("params",)) -> str:
    """`final.md`: the final table's rows, with the sources each found network beats on accuracy
    and `costs` (the search's, `cost_objectives`)."""
    sources = [r for r in rows if r["kind"] == "source"]
    tuned = any("finetuned_accuracy" in r for r in rows)
    lines = [f"Final split: {split}. Protocol accuracy = fitted stitches/BN/head as in the search; "
             f"published = the source's own BN statistics and head"
             + ("; after fine-tune = every row exported and fine-tuned with the config's final.finetune." if tuned
                else "."), "",
             "| name | params | MFLOPs | junctions | val acc | final acc | published final acc | beats |"
             + (" after fine-tune |" if tuned else ""),
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |" + (" ---: |" if tuned else "")]
    for r in rows:
        pub = "" if r["published_final_accuracy"] is None else f"{r['published_final_accuracy']:.4f}"
        won = ", ".join(beats(r, sources, costs)) if r["kind"] == "found" else ""
        after = (f" {r['finetuned_accuracy']:.4f} ({r['finetuned_correct']}/{r['finetuned_total']}) |"
                 if tuned else "")
        lines.append(f"| {r['name']} | {r['params']:,} | {r['flops'] / 1e6:.1f} | {r['junctions']} | "
                     f"{r['val_accuracy']:.4f} | {r['final_accuracy']:.4f} ({r['final_correct']}/{r['final_total']}) "
                     f"| {pub} | {won} |{after}")
    found = [r for r in rows if r["kind"] == "found"]
    free = [r["name"] for r in found if not dominated_by(r, sources, costs)]
    named = " and ".join(COST_NAMES[c] for c in costs)
    lines += ["", f"Found networks no source dominates on the final split in accuracy and {named} (more accurate, "
                  f"or as accurate and cheaper, than every source at most as costly): {', '.join(free) or 'none'}.",
              f"Hypervolume of the final split's (error, parameters) front, whatever the search's costs so that "
              f"runs compare (reference: error {HV_REFERENCE[0]}, {HV_REFERENCE[1]:,} parameters): the sources alone "
              f"{final_hypervolume(sources):.4f}, with the found networks {final_hypervolume(rows):.4f}."]
    return "\n".join(lines)


def final_hypervolume(rows: list[dict]) -> float:
    """`runs.hypervolume` of final-table rows' (final-split error, parameters)."""
    return hypervolume([{"error": 1 - r["final_accuracy"], "params": r["params"]} for r in rows])


def dominated_by(row: dict, sources: list[dict], costs=("params",)) -> list[str]:
    """The sources that dominate this row on the final split: at least as accurate at no more of
    any of `costs`, and better in one of them."""
    def key(r):
        return (r["final_accuracy"], *(r[c] for c in costs))

    return [s["name"] for s in sources
            if s["final_accuracy"] >= row["final_accuracy"] and all(s[c] <= row[c] for c in costs)
            and key(s) != key(row)]


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
    pub = [r for r in src if r["published_final_accuracy"] is not None]
    ax.scatter([r["params"] for r in pub], [100 * r["published_final_accuracy"] for r in pub], marker="x",
               s=60, c="C2", label="sources (published)", zorder=3)
    for r in src:
        ax.annotate(r["name"].replace("cifar_", ""), (r["params"], 100 * r["final_accuracy"]), fontsize=8)
    ax.set(xlabel="parameters", ylabel="final test accuracy (%)", title="final split, same protocol")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_all(config, out_dir, resume: bool = True, log: Callable[[str], None] = print,
            progress: Progress = NO_PROGRESS, stop: Callable[[], None] = go_on) -> dict:
    """Search, then the final table and the plot: the main job. The run folder is checked
    before anything is loaded (a different config, a corrupt state: an error at once). `stop()`
    is called after every network (raising there stops the job where it loses nothing: `modulenet
    search` raises KeyboardInterrupt after a Ctrl-C)."""
    RunFolder.check(out_dir, to_dict(config), restart=not resume)
    run = Run.from_config(config, log=log, progress=progress)
    result = search(run, out_dir, resume, log, progress, stop)
    say = RunFolder(Path(out_dir), staged=False).teed(log)
    rows = final_table(run, result, out_dir, say, progress, stop)
    history = read_history(Path(out_dir) / HISTORY)
    plot_front(history, result["front"], rows, Path(out_dir) / "front.png", run.objectives)
    say(f"done: {result['evaluated']} networks evaluated, {len(result['front'])} on the front")
    return {"out": str(out_dir), "evaluated": result["evaluated"], "front": result["front"], "final": rows}
