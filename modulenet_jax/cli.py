"""The `modulenet` command: a thin layer over the library (every step is importable).

Human-readable output by default, `--json` for scripts; log lines and progress bars (on a
terminal) go to stderr, `--quiet` turns both off. Checkpoint conversion imports
`modulenet_jax.converters` (and so torch) only in the commands that read PyTorch files.

Bad input (a `UserError`, a bad argument, or a path that is missing or of the wrong kind)
prints one line, `modulenet <command>: error: <message>`, and exits with status 2; `--debug`
shows its traceback instead. Any other exception is a bug: it is not caught, so its traceback
shows and the status is 1. Ctrl-C prints one line and exits with status 130 (a search says
what it kept and the command that resumes it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import shlex
import sys
from pathlib import Path

from modulenet_jax.errors import PATH_ERRORS, UserError, one_line, report, require_extra

EXIT_INTERRUPTED = 130
CONFIG_HELP = "a packaged config's name (e.g. cifar10_resnet) or a path to a .py file"


class UsageError(UserError):
    """A bad command line (argparse's complaint), told by the parser `prog` it belongs to."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command kept and how to go on."""


def ctrl_c(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C behind `error`, if any. Python raises KeyboardInterrupt at whatever line runs,
    and one raised inside a C extension's callback (numpy's dtype lookup, for one) reaches us as
    that extension's SystemError with the KeyboardInterrupt as its cause."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def ctrl_c_stops():
    """A first Ctrl-C as a request: the `stop()` this yields raises KeyboardInterrupt once one
    came (the search calls it after every network); a second Ctrl-C raises at once. Python's own
    KeyboardInterrupt lands wherever the program is, also inside a C extension's callback (a jit
    cache comparing its keys), which may wrap it or lose it; the flag this handler sets cannot be lost."""
    requested = []

    def request(signum, frame):
        requested.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("stopping after the network in progress (Ctrl-C again: at once)", file=sys.stderr, flush=True)

    def stop():
        if requested:
            raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, request)
    except ValueError:  # not the main thread, which alone receives signals: Python's own handling stays
        yield lambda: None
        return
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised (one line, status 2, like every other bad input)."""

    def error(self, message):
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def _number(convert, lowest, what):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < lowest:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what
    return parse


POSITIVE = _number(int, 1, "a positive integer")
COUNT = _number(int, 0, "an integer >= 0")
POSITIVE_FLOAT = _number(float, 1e-300, "a positive number")
NONNEGATIVE_FLOAT = _number(float, 0.0, "a number >= 0")


@contextlib.contextmanager
def _reporting(args):
    """`(log, progress)` for a command: log lines on stderr, and rich's progress bars when
    stderr is a terminal; with --quiet, neither."""
    from modulenet_jax.progress import NO_PROGRESS, RichProgress

    if args.quiet:
        yield (lambda message: None), NO_PROGRESS
        return
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    if not console.is_terminal:
        yield (lambda message: print(message, file=sys.stderr, flush=True)), NO_PROGRESS
        return
    with RichProgress(console) as progress:
        yield progress.print, progress


def _check_out(args, replaces: tuple[str, str] | None = None) -> None:
    """The `--out` folder can be written: checked before anything is loaded. `replaces`: (the
    file that marks, what) the command writes over; a non-empty folder without it is refused."""
    from modulenet_jax.checks import check_writable

    check_writable(args.out, "--out")
    out = Path(args.out)
    if replaces and out.is_dir() and any(out.iterdir()) and not (out / replaces[0]).is_file():
        raise UserError(f"--out {out} holds something else than {replaces[1]}; choose a new or empty folder")


def _console():
    from rich.console import Console

    # a pipe or a file gets full-width rows instead of rich's 80-column default
    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def _print_table(title: str | None, rows: list[dict], columns: list[str]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), (int, float)) else "left")
    def cell(v):
        if v is None:
            return "—"
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.4f}"
        return str(v)

    for r in rows:
        table.add_row(*[cell(r[c]) for c in columns])
    _console().print(table)


def _emit(args, payload: dict, human) -> None:
    if args.json:
        print(json.dumps(payload, indent=1))
    else:
        human()


# -- convert ------------------------------------------------------------------------------

def cmd_convert(args) -> int:
    from modulenet_jax.converters.knowledge import convert_checkpoint
    from modulenet_jax.checkpoints import save_model
    from modulenet_jax.cost import count_params

    _check_out(args, replaces=("model.json", "a converted model"))
    model_name, params = convert_checkpoint(args.weights, args.model)
    path = save_model(args.out, model_name, params, {"weights": str(Path(args.weights).resolve())})
    payload = {"model": model_name, "out": str(path), "params": count_params(params)}
    _emit(args, payload, lambda: print(f"converted {args.weights} -> {path} ({model_name}, "
                                       f"{payload['params']:,} parameters)"))
    return 0


# -- kb -----------------------------------------------------------------------------------

def cmd_kb_build(args) -> int:
    from modulenet_jax.checkpoints import load_model
    from modulenet_jax.knowledge import INDEX_FILE, KnowledgeBase

    _check_out(args, replaces=(INDEX_FILE, "a knowledge base"))
    with _reporting(args) as (_, progress):
        if args.pretrained:
            from modulenet_jax.converters.knowledge import build_from_pretrained

            kb = build_from_pretrained(args.pretrained, args.weights_dir, progress)
        elif args.checkpoints:
            from modulenet_jax.converters.knowledge import build_from_checkpoints

            kb = build_from_checkpoints(args.checkpoints, progress=progress)
        else:
            models = []
            for d in args.models:
                name, params, meta = load_model(d)
                models.append((Path(d).name, name, params, meta.get("weights", str(d))))
            kb = KnowledgeBase.build(models, progress=progress)
    kb.save(args.out)
    payload = {"out": args.out, "sources": list(kb.sources), "modules": len(kb.records)}
    _emit(args, payload, lambda: print(f"knowledge base with {len(kb.records)} modules of "
                                       f"{len(kb.sources)} sources written to {args.out}"))
    return 0


def cmd_kb_show(args) -> int:
    from modulenet_jax.knowledge import KnowledgeBase

    kb = KnowledgeBase.load(args.path)
    rows = kb.table()
    for r in rows:
        r["MFLOPs"] = round(r["flops"] / 1e6, 2)
    _emit(args, {"sources": [s.__dict__ for s in kb.sources.values()], "modules": rows},
          lambda: _print_table(f"{args.path}: {len(rows)} modules of {', '.join(kb.sources)}", rows,
                               ["id", "kind", "stage", "index", "in", "out", "stride", "resolution",
                                "params", "MFLOPs"]))
    return 0


# -- search -------------------------------------------------------------------------------

def cmd_search(args) -> int:
    from modulenet_jax.config import load_config
    from modulenet_jax.search.runner import run_all

    config = load_config(args.config, args.set)
    out = args.out or str(Path("runs") / Path(args.config).stem)
    folder = _identity(out)
    try:
        with _reporting(args) as (log, progress), ctrl_c_stops() as stop:
            result = run_all(config, out, resume=not args.restart, log=log, progress=progress, stop=stop)
    except BaseException as e:
        if ctrl_c(e) is None:
            raise
        pending = args.restart and folder is not None and _identity(out) == folder  # a restart replaces the folder
        raise Interrupted(_resume_hint(args, out, pending)) from e

    def human():
        for r in result["final"]:
            r["MFLOPs"] = round(r["flops"] / 1e6, 1)
        tuned = ["finetuned_accuracy"] if any("finetuned_accuracy" in r for r in result["final"]) else []
        _print_table(f"final split, same protocol ({out}/final.md)", result["final"],
                     ["name", "kind", "params", "MFLOPs", "junctions", "val_accuracy", "final_accuracy", *tuned])
        print(f"{result['evaluated']} networks evaluated; front: {out}/front.json, plot: {out}/front.png")

    _emit(args, result, human)
    return 0


def _identity(path: str):
    """Which folder `path` is (None: none): a restart that took place put another one there."""
    try:
        stat = os.stat(path)
    except OSError:  # none there, or a path through a file: the run folder check says which
        return None
    return stat.st_dev, stat.st_ino


def _resume_hint(args, out: str, restart_pending: bool) -> str:
    """What an interrupted search kept, and the command that goes on from there (with --restart
    only if the restart had not yet replaced the old run)."""
    from modulenet_jax.search.run_folder import CONFIG, HISTORY, STATE, read_history

    argv = [a for a in args.argv if a != "--restart" or restart_pending]
    if args.out is None:
        argv += ["--out", out]
    command = shlex.join(["modulenet", *argv])
    folder = Path(out)
    if restart_pending:
        return f"the restart had evaluated no network, so {out} holds the old run, whole; restart with: {command}"
    if not (folder / CONFIG).is_file():
        return f"nothing was evaluated yet, so {out} is as it was; start again with: {command}"
    state = json.loads((folder / STATE).read_text()) if (folder / STATE).is_file() else {}
    evaluated, done = len(read_history(folder / HISTORY, repair=False)), state.get("generation", 0)
    return (f"{out} keeps {_count(evaluated, 'evaluated network')} and {_count(done, 'finished generation')}; "
            f"resume with: {command}")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


# -- evaluate -----------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from modulenet_jax.data import load_dataset, protocol_split

    if not args.config and not (args.source and (args.weights or args.kb)):
        raise UserError("give --source NAME with --weights FILE or --kb DIR (a source as published), "
                        "or --config with --genotype '[...]' or --source NAME (under the config's protocol)")
    if args.config and not (args.genotype or args.source):
        raise UserError("--config needs the network: --genotype '[...]' or --source NAME")
    if args.config and (args.kb or args.weights):
        raise UserError("--kb and --weights evaluate a source as published; under --config the knowledge base is the "
                        "config's (change it with --set knowledge.path=DIR), so drop them")
    if not args.config and (args.genotype or args.set):
        raise UserError("--genotype and --set need --config (a network under a config's protocol)")
    if args.kb and args.weights:
        raise UserError("give --weights FILE (a checkpoint) or --kb DIR (a knowledge base), not both")
    genotype = _parse_genotype(args.genotype) if args.genotype else None
    config = None
    if args.config:
        from modulenet_jax.config import load_config

        config = load_config(args.config, args.set)
    with _reporting(args) as (_, progress):
        dataset = load_dataset(args.data, progress=progress)
    from modulenet_jax.checks import check_size

    check_size(dataset, args.split, args.size, "--size")
    split = protocol_split(dataset, args.split, args.size)
    if config is not None:
        return _evaluate_protocol(args, config, dataset, split, genotype)
    from modulenet_jax.checks import check_published
    from modulenet_jax.evaluate import evaluate_published
    from modulenet_jax.knowledge import KnowledgeBase

    if args.weights:
        from modulenet_jax.converters.knowledge import convert_checkpoint
        from modulenet_jax.pretrained import PRETRAINED

        name, params = convert_checkpoint(args.weights, args.source)
        known = PRETRAINED.get(args.source)
        classes = {args.source: known.classes} if known and Path(args.weights).name == known.filename else None
        kb = KnowledgeBase.build([(args.source, name, params, str(args.weights))], classes=classes)
    else:
        kb = KnowledgeBase.load(args.kb)
    check_published(kb, args.source, dataset)
    correct, total = evaluate_published(kb, args.source, split, args.batch_size)
    payload = {"source": args.source, "mode": "published", "split": split.description,
               "correct": correct, "total": total, "accuracy": correct / total}
    _emit(args, payload, lambda: print(f"{args.source} (as published) on {split.description}: "
                                       f"{correct}/{total} correct ({100 * correct / total:.2f}%)"))
    return 0


def _parse_genotype(text: str):
    """`--genotype`: a JSON list of integers, as `front.json` and `history.jsonl` write them."""
    import numpy as np

    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"--genotype {text!r} is not JSON ({e}); give a list of integers, e.g. '[0, 3, 1]'") from e
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10 ** 18
                                                for v in values):
        raise UserError(f"--genotype {text!r} is not a list of integers (each of at most 18 digits); give one like '[0, 3, 1]'")
    return np.asarray(values, np.int64)


def _evaluate_protocol(args, config, dataset, split, genotype) -> int:
    from modulenet_jax.search.runner import Run

    with _reporting(args) as (log, progress):
        run = Run.from_config(config, dataset=dataset, log=log, progress=progress, evaluate_only=True)
    if genotype is None:
        genotype = run.space.encode_source(args.source)
    arch = run.space.decode(genotype)
    ev = run.evaluator.evaluate(arch, split)
    payload = {"architecture": arch.describe(), "mode": "protocol", "split": split.description,
               "genotype": genotype.tolist(), **ev.to_json()}
    _emit(args, payload, lambda: print(f"{arch.describe()}\n  {split.description}: {ev.correct}/{ev.total} "
                                       f"({100 * ev.accuracy:.2f}%), {ev.params:,} params, "
                                       f"{ev.flops / 1e6:.1f} MFLOPs, {ev.junctions} junctions"))
    return 0


# -- fidelity -----------------------------------------------------------------------------

def cmd_fidelity(args) -> int:
    import dataclasses

    from modulenet_jax.checks import check_size
    from modulenet_jax.config import load_config
    from modulenet_jax.fidelity import FINETUNE, VARIANTS, measure, sample_genotypes
    from modulenet_jax.search.runner import load_data, load_knowledge, make_protocol
    from modulenet_jax.space import Architecture

    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        raise UserError(f"unknown --variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    config = load_config(args.config, args.set)
    protocol = make_protocol(config.protocol)
    _check_out(args)
    ft = dataclasses.replace(FINETUNE, images=args.finetune_images, epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, seed=args.seed)
    with _reporting(args) as (log, progress):
        dataset = load_data(config.data, progress)
        check_size(dataset, "val", args.val_size, "--val-size")
        kb = load_knowledge(config.knowledge, progress)
        networks = sample_genotypes(kb, args.granularities, args.per_granularity, args.seed)
        networks += [("source", Architecture.of_source(kb, s)) for s in kb.sources]
        report = measure(kb, dataset, protocol, {v: VARIANTS[v] for v in args.variants},
                         networks, ft, args.val_size, config.data.fit_seed, args.out, log)
    _emit(args, {k: v for k, v in report.items() if k != "rows"},
          lambda: print((Path(args.out) / "report.md").read_text()))
    return 0


# -- export -------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from modulenet_jax.search.models import export_named

    _check_out(args)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print  # its one line is the result: stdout
    description = export_named(args.run, args.name, args.out, log)
    verified = description["verified"]
    _emit(args, {"out": args.out, **description}, lambda: print(
        f"load it with: model, variables = modulenet_jax.export.load({str(args.out)!r})"))
    if not verified["matches"]:
        print(f"modulenet export: the exported network counts {verified['correct']}/{verified['total']}, "
              f"final.json records {description['origin']['final_correct']}/{description['origin']['final_total']}",
              file=sys.stderr)
        return 1
    return 0


# -- finetune -----------------------------------------------------------------------------

def cmd_finetune(args) -> int:
    from modulenet_jax import export
    from modulenet_jax.finetune import finetune_folder
    from modulenet_jax.train import Settings

    export.read_description(args.dir)  # not an exported network: one line, before any data is read
    settings = Settings(epochs=args.epochs, images=args.images, batch_size=args.batch_size,
                        learning_rate=args.lr, optimizer=args.optimizer, momentum=args.momentum,
                        weight_decay=args.weight_decay, warmup=args.warmup, clip_norm=args.clip_norm,
                        augment=not args.no_augment, seed=args.seed)
    with _reporting(args) as (log, progress):
        result = finetune_folder(args.dir, settings, data=args.data, restart=args.restart, progress=progress,
                                 log=log)
    last = result["metrics"]

    def human():
        if last is not None:
            print(f"fine-tuned {args.dir}: {last['eval_correct']}/{last['eval_total']} correct on {result['eval']} "
                  f"after {last['epoch']} epochs (metrics: {args.dir}/finetune/metrics.jsonl)")
        print(f"load it with: model, variables = modulenet_jax.export.load({str(args.dir)!r})")

    _emit(args, result, human)
    return 0


# -- bench --------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    import dataclasses

    import jax

    from modulenet_jax.benchmarks import throughput
    from modulenet_jax.config import load_config
    from modulenet_jax.knowledge import KnowledgeBase
    from modulenet_jax.search.runner import load_data, load_knowledge, make_protocol

    baselines = []  # what asks for PyTorch: checked before anything is loaded or timed
    if args.torch_modes:
        baselines.append(f"--torch-modes {' '.join(args.torch_modes)}")
    if args.paired:
        baselines.append(f"--paired {args.paired}")
    if baselines:
        require_extra("torch", "torch", f"timing the PyTorch baselines ({', '.join(baselines)})",
                      instead="pass --torch-modes with no value (and no --paired) to time JAX alone")
    if args.name is not None and (Path(args.name).name != args.name or args.name.startswith(".")):
        raise UserError(f"--name {args.name!r} must be a file stem in --out (no folders, no leading dot); "
                        f"put the folder into --out")
    config = load_config(args.config, args.set)
    protocol = make_protocol(config.protocol)
    _check_out(args)
    if args.batch_size:
        protocol = dataclasses.replace(protocol, batch_size=args.batch_size)
    gpu = jax.devices()[0].platform == "gpu"
    default_dtypes = ("float32", "tensorfloat32", "bfloat16") if gpu else ("float32", "bfloat16")
    with _reporting(args) as (log, progress):
        dataset = load_data(config.data, progress)
        kb = KnowledgeBase.load(args.kb) if args.kb else load_knowledge(config.knowledge, progress)
        report = throughput.run(kb, dataset, protocol, granularity=config.space.granularity,
                                val_size=args.val_size, fit_seed=config.data.fit_seed,
                                populations=tuple(args.populations), dtypes=tuple(args.dtypes or default_dtypes),
                                workloads=tuple(args.workloads), torch_modes=tuple(args.torch_modes),
                                torch_max_w1=args.torch_max_w1, torch_max_w2=args.torch_max_w2,
                                torch_max_network=args.torch_max_network,
                                strategy=args.strategy, budget_s=args.budget, row_cap_s=args.row_cap,
                                seed=args.seed, paired=args.paired, paired_rounds=args.paired_rounds,
                                phase_population=args.phase_population,
                                groups=tuple(g or None for g in args.groups), groups_until=args.groups_until,
                                group_widths=tuple(args.group_widths), log=log)
    stem = args.name or throughput.device_name().lower().replace(" ", "-").replace("(", "").replace(")", "").replace(",", "")
    out = throughput.save(report, args.out, stem)
    _emit(args, report, lambda: print(throughput.markdown(report) + f"\n\nwritten to {out}/{stem}.{{json,md,png}}"))
    return 0


# -- runs ---------------------------------------------------------------------------------

def cmd_runs_show(args) -> int:
    from modulenet_jax.runs import front_rows, load_run, plot_runs

    run = load_run(args.run)
    rows = front_rows(run)
    plot = plot_runs([run], args.plot, _reference(args)) if args.plot else (
        run.path / "front.png" if (run.path / "front.png").is_file() else None)
    status = "finished" if run.finished else "unfinished"
    payload = {**run.describe(_reference(args)), "status": status, "front": rows,
               "plot": None if plot is None else str(plot)}

    def human():
        columns = [c for c in rows[0] if c != "genotype"] if rows else []
        print(f"{run.path}: {status}, generation {run.generations_done}/{run.generations}, {len(run.history)} "
              f"networks, hypervolume {payload['hypervolume']:.4f}")
        _print_table(None, rows, columns)
        print(f"genotypes: {run.path}/front.json (--json shows them); plot: {plot or 'none yet (--plot FILE)'}")

    _emit(args, payload, human)
    return 0


def cmd_runs_compare(args) -> int:
    from modulenet_jax.runs import load_run, plot_runs

    runs = [load_run(r) for r in args.runs]
    reference = _reference(args)
    rows = [r.describe(reference) for r in runs]
    plot = plot_runs(runs, args.plot, reference)
    payload = {"reference": list(reference), "runs": rows, "plot": str(plot)}

    def human():
        _print_table(f"hypervolume: (validation error, parameters) against ({reference[0]}, {reference[1]:,})",
                     rows, ["run", "algorithm", "generations", "evaluated", "val_images", "front", "hypervolume",
                            "best_accuracy", "best_params"])
        print(f"plot: {plot}")

    _emit(args, payload, human)
    return 0


def _reference(args) -> tuple[float, int]:
    from modulenet_jax.runs import HV_REFERENCE

    return (args.reference[0], int(args.reference[1])) if args.reference else HV_REFERENCE


def _add_runs_commands(sub, common) -> None:
    """`modulenet runs show RUN` and `modulenet runs compare RUN...`."""
    runs = sub.add_parser("runs", help="show a run folder's front, or compare several runs").add_subparsers(
        dest="runs_command", required=True)
    reference = dict(nargs=2, type=POSITIVE_FLOAT, metavar=("ERROR", "PARAMS"),
                     help="the hypervolume's reference point (default: 1 and 1,000,000; see the README)")
    show = runs.add_parser("show", parents=[common], help="a run's front as a table (and a plot)",
                           description="a run's front on the validation split as a table, its hypervolume, "
                                       "and its plot (finished or not)")
    show.add_argument("run", help="a run folder")
    show.add_argument("--plot", help="draw the run as it stands into this PNG file")
    show.add_argument("--reference", **reference)
    show.set_defaults(fn=cmd_runs_show)
    compare = runs.add_parser("compare", parents=[common], help="several runs' fronts and hypervolumes",
                              description="several runs side by side: fronts, hypervolumes, one plot")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--plot", default="compare.png", help="the plot of all fronts (default compare.png)")
    compare.add_argument("--reference", **reference)
    compare.set_defaults(fn=cmd_runs_compare)


# -- parser -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="modulenet", description="ModuleNet: knowledge-inherited NAS in JAX.")
    p.add_argument("--distributed", action="store_true",
                   help="join a multi-host run first: jax.distributed.initialize(), then one all-gather (see the README)")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback of an input error or an interrupt instead of one line")
    sub = p.add_subparsers(dest="command", required=True)
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bars and no log lines")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,  # also after the command
                        help="show the traceback of an input error or an interrupt instead of one line")

    def add(name, help_, fn):
        sp = sub.add_parser(name, parents=[common], help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    c = add("convert", "convert a PyTorch checkpoint into Flax params + model spec (orbax)", cmd_convert)
    c.add_argument("--weights", required=True, help="a .th/.pth checkpoint (read with weights_only=True)")
    c.add_argument("--model", help="zoo model name (inferred for CIFAR ResNets)")
    c.add_argument("--out", required=True, help="output folder")

    kb = sub.add_parser("kb", help="build or show a knowledge base").add_subparsers(dest="kb_command", required=True)
    b = kb.add_parser("build", parents=[common], help="cut source models into modules and save them",
                      description="cut source models into modules and save them")
    b.add_argument("--out", required=True)
    g = b.add_mutually_exclusive_group(required=True)
    g.add_argument("--pretrained", nargs="+", help="known pretrained names, e.g. cifar_resnet20 cifar_resnet56")
    g.add_argument("--checkpoints", nargs="+", help="PyTorch checkpoint files")
    g.add_argument("--models", nargs="+", help="folders written by `modulenet convert`")
    b.add_argument("--weights-dir", nargs="*", default=(), help="where to look for --pretrained files first")
    b.set_defaults(fn=cmd_kb_build)
    s = kb.add_parser("show", parents=[common], help="list a knowledge base's modules",
                      description="list a knowledge base's modules")
    s.add_argument("path")
    s.set_defaults(fn=cmd_kb_show)

    sr = add("search", "run (or resume) a search from a config; writes a run folder", cmd_search)
    sr.add_argument("--config", required=True, help=CONFIG_HELP)
    sr.add_argument("--out", help="run folder (default runs/<config name>)")
    _add_overrides(sr)
    sr.add_argument("--restart", action="store_true", help="start the run folder over instead of resuming")

    e = add("evaluate", "evaluate a source model as published, or a network under a config's protocol",
            cmd_evaluate)
    e.add_argument("--data", required=True, help="a folder with train/ and test/, or a TFDS name")
    e.add_argument("--split", default="test", choices=["train", "test", "val", "final"],
                   help="test: the whole test split; val/final: its even/odd positions")
    e.add_argument("--size", type=POSITIVE, help="a class-balanced subset of this many images")
    e.add_argument("--source", help="a source model name (as published with --weights/--kb)")
    e.add_argument("--weights", help="the source's PyTorch checkpoint")
    e.add_argument("--kb", help="a knowledge base folder holding the source")
    e.add_argument("--config", help="evaluate under this config's protocol and space: " + CONFIG_HELP)
    _add_overrides(e)
    e.add_argument("--genotype", help="with --config: a genotype as a JSON list (README: the genotype layout)")
    e.add_argument("--batch-size", type=POSITIVE, default=500)

    f = add("fidelity", "measure how well no-tuning scores rank networks like a short fine-tune (Kendall tau)",
            cmd_fidelity)
    f.add_argument("--config", required=True, help="knowledge base, data and base protocol: " + CONFIG_HELP)
    _add_overrides(f)
    f.add_argument("--out", default="runs/fidelity", help="results folder (resumable)")
    f.add_argument("--granularities", nargs="+", default=["run", "block"], choices=["stage", "run", "block"])
    f.add_argument("--per-granularity", type=COUNT, default=12, help="random networks per granularity")
    f.add_argument("--variants", nargs="+", default=["plain", "plain+bn", "stitch", "stitch+bn",
                                                     "stitch+bn-from-junction", "stitch+ridge", "stitch+bn+ridge",
                                                     "stitch-256", "stitch-2048"])
    f.add_argument("--val-size", type=POSITIVE, default=1000)
    f.add_argument("--finetune-images", type=POSITIVE, default=5120)
    f.add_argument("--epochs", type=POSITIVE, default=1)
    f.add_argument("--batch-size", type=POSITIVE, default=128)
    f.add_argument("--lr", type=POSITIVE_FLOAT, default=0.01)
    f.add_argument("--seed", type=COUNT, default=0)

    ex = add("export", "write a network of a run's final table as a standalone Flax model (+ orbax checkpoint)",
             cmd_export)
    ex.add_argument("run", help="a run folder written by `modulenet search` (with final.json)")
    ex.add_argument("name", help="a row of its final table: a front network (e.g. front3) or a source")
    ex.add_argument("--out", required=True, help="output folder (new or empty)")

    ft = add("finetune", "train an exported network end to end (resumable; metrics in DIR/finetune/)",
             cmd_finetune)
    ft.add_argument("dir", help="a folder written by `modulenet export`")
    ft.add_argument("--epochs", type=POSITIVE, default=1)
    ft.add_argument("--images", type=POSITIVE, help="train images per epoch (default: the whole train split)")
    ft.add_argument("--batch-size", type=POSITIVE, default=128)
    ft.add_argument("--lr", type=POSITIVE_FLOAT, default=0.01, help="peak learning rate (cosine schedule)")
    ft.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"],
                    help="sgd: Nesterov momentum, PyTorch-style weight decay; adamw: decoupled weight decay")
    ft.add_argument("--momentum", type=NONNEGATIVE_FLOAT, default=0.9)
    ft.add_argument("--weight-decay", type=NONNEGATIVE_FLOAT, default=5e-4)
    ft.add_argument("--warmup", type=NONNEGATIVE_FLOAT, default=0.0, help="fraction of the steps with a linear warm-up")
    ft.add_argument("--clip-norm", type=POSITIVE_FLOAT,
                    help="clip the gradients' global norm to this (default: no clipping)")
    ft.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    ft.add_argument("--seed", type=COUNT, default=0, help="image order and augmentation")
    ft.add_argument("--data", help="a dataset instead of the run's (TFDS name, ImageFolder root or .npz bundle)")
    ft.add_argument("--restart", action="store_true", help="discard an earlier fine-tune of the folder")

    bn = add("bench", "throughput of the JAX evaluator against PyTorch eager and torch.compile, same process",
             cmd_bench)
    bn.add_argument("--config", default="cifar10_resnet", help="knowledge base, data, protocol, space: " + CONFIG_HELP)
    _add_overrides(bn)
    bn.add_argument("--kb", help="a saved knowledge base (instead of the config's checkpoints)")
    bn.add_argument("--out", default="benchmarks/results", help="folder for <device>.json/.md/.png")
    bn.add_argument("--name", help="file stem (default: the device's name)")
    bn.add_argument("--populations", nargs="+", type=POSITIVE, default=[1, 8, 64, 256])
    bn.add_argument("--dtypes", nargs="+", choices=["float32", "tensorfloat32", "bfloat16"],
                    help="JAX numerics timed (default: float32 and bfloat16, and on a GPU tensorfloat32: TF32 "
                         "convolutions, against PyTorch's TF32 row)")
    bn.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=["W1", "W2"])
    bn.add_argument("--torch-modes", nargs="*", default=["eager", "compile", "compile-network"],
                    choices=["eager", "compile", "compile-network"],
                    help="PyTorch baselines to time (the torch extra): eager, torch.compile per module shape, and "
                         "(W1 only) each whole network compiled as one graph; with no value, JAX alone")
    bn.add_argument("--torch-max-network", type=POSITIVE, default=2,
                    help="most networks a compile-network row compiles and times (one graph each)")
    bn.add_argument("--torch-max-w1", type=POSITIVE, default=64, help="most networks PyTorch runs per W1 point")
    bn.add_argument("--torch-max-w2", type=POSITIVE, default=16, help="most networks PyTorch runs per W2 point")
    bn.add_argument("--strategy", default="auto", choices=["auto", "fused", "loop"],
                    help="JAX path: fused (one vmapped program per chunk) or loop (a call per module)")
    bn.add_argument("--val-size", type=POSITIVE, default=5000, help="validation images (of the 5,000 even positions)")
    bn.add_argument("--batch-size", type=POSITIVE, help="images per batch (default: the config's protocol)")
    bn.add_argument("--budget", type=POSITIVE_FLOAT, help="stop starting new measurements after this many seconds")
    bn.add_argument("--row-cap", type=POSITIVE_FLOAT,
                    help="seconds after which a row (workload, implementation, numerics) starts no larger population")
    bn.add_argument("--phase-population", type=POSITIVE, metavar="P",
                    help="also time the fused W2 program phase by phase at this population")
    bn.add_argument("--groups", nargs="+", type=COUNT, default=[0], metavar="G",
                    help="fused path: a row per group size, G genotypes side by side at a time (0: the whole "
                         "chunk as one vmap)")
    bn.add_argument("--groups-until", type=POSITIVE, metavar="P",
                    help="above this population only the group that ran fastest so far (default: every group at "
                         "every population)")
    bn.add_argument("--group-widths", nargs="+", type=POSITIVE, default=[], metavar="W",
                    help="fused path: the grouped layout's rows (and its probe) also with neighbouring genotypes' "
                         "convolutions packed into groups of up to W channels (jax-grouped-wW: block-diagonal "
                         "kernels, more multiplications in wider groups)")
    bn.add_argument("--seed", type=COUNT, default=0)
    bn.add_argument("--paired", type=COUNT, default=0, metavar="N",
                    help="also time W1 for N networks alternating JAX and PyTorch eager per network")
    bn.add_argument("--paired-rounds", type=POSITIVE, default=2, help="rounds of the paired W1 timing")
    _add_runs_commands(sub, common)
    return p


def _add_overrides(parser) -> None:
    """`--set KEY=VALUE ...`, config overrides; several `--set` add up."""
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config overrides (several --set add up)")


def main(argv=None) -> int:
    from modulenet_jax import cpu_runtime

    cpu_runtime.configure()  # before JAX starts its CPU backend: measured speed-ups, same results
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return report(e.prog, e)
    args.argv = argv
    command = " ".join(filter(None, (args.command, getattr(args, "kb_command", None),
                                     getattr(args, "runs_command", None))))
    try:
        if args.distributed:
            from modulenet_jax import distributed

            distributed.initialize()
        return args.fn(args)
    except (UserError, *PATH_ERRORS) as e:
        if args.debug:
            raise
        return report(f"modulenet {command}", e)
    except BaseException as e:
        if args.debug or ctrl_c(e) is None:
            raise
        said = f": {one_line(e)}" if isinstance(e, Interrupted) else ""
        print(f"modulenet {command}: interrupted{said}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
