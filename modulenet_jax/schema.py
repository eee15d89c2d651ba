"""Every config field in one table: its type and range, its value when a config leaves it out,
and what it means.

`validate(config)` checks a whole config against the table before anything is loaded, so a
wrong type or an out-of-range value is one line naming the field and the fix instead of a
traceback deep inside (or a failure after a whole generation). `setting(section, key)` reads a
field or, when the config leaves it out, the table's value for it. The README's config
reference is `reference_table(...)`'s output (a test keeps the two the same).

A new field is one row of `FIELDS`; a rule between fields is one function in `RULES`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import OBJECTIVES, PREFIX_MEMORY_MB
from modulenet_jax.protocol import BN_MODES, DTYPES, HEADS, Protocol
from modulenet_jax.search.operators import CROSSOVERS
from modulenet_jax.space import GRANULARITIES
from modulenet_jax.train import OPTIMIZERS

ALGORITHMS = ("nsga2", "random")
STRATEGIES = ("auto", "loop", "fused")
SPACE_KINDS = ("stages", "mixed")
FINAL_SPLITS = ("final", "val", "test")


@dataclasses.dataclass(frozen=True)
class Kind:
    """A field's type and range: `problem(value)` says what is wrong with a value (None: nothing);
    `coerce` turns a `--set` literal into the field's type (an int where a float is wanted)."""

    description: str
    accepts: Callable[[Any], bool]
    coerce: Callable[[Any], Any] | None = None

    def convert(self, value):
        """A `--set` literal as the field's type (e.g. `1` where a number is wanted is `1.0`)."""
        return self.coerce(value) if self.coerce else value

    def problem(self, value) -> str | None:
        """What is wrong with `value` ("must be ..., got ..."), or None."""
        return None if self.accepts(value) else f"must be {self.description}, got {value!r}"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, float)


def _between(lo, hi, lo_open=False) -> tuple[str, Callable[[Any], bool]]:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]", lambda v: lo <= v <= hi
    if lo is not None:
        return (f" > {lo}", lambda v: v > lo) if lo_open else (f" >= {lo}", lambda v: v >= lo)
    return "", lambda v: True


def integer(lo=None, hi=None) -> Kind:
    """An int (not a bool) in [lo, hi]; either bound may be None."""
    text, ok = _between(lo, hi)
    return Kind(f"an integer{text}", lambda v: _is_int(v) and ok(v))


def number(lo=None, hi=None, lo_open=False) -> Kind:
    """An int or float in [lo, hi] (or above lo, `lo_open`); an int given is stored as a float."""
    text, ok = _between(lo, hi, lo_open)
    return Kind(f"a number{text}", lambda v: _is_number(v) and math.isfinite(v) and ok(v),
                lambda v: float(v) if _is_int(v) else v)


def optional(kind: Kind) -> Kind:
    """None, or what `kind` accepts."""
    return Kind(f"None or {kind.description}", lambda v: v is None or kind.accepts(v), kind.coerce)


def one_of(*choices: str) -> Kind:
    """One of the named choices."""
    return Kind("one of " + ", ".join(map(repr, choices)), lambda v: v in choices)


def _as_tuple(v):
    return tuple(v) if isinstance(v, list) else v


def strings(nonempty=False) -> Kind:
    """A tuple of strings (a list given is stored as a tuple)."""
    return Kind("a non-empty tuple of strings" if nonempty else "a tuple of strings",
                lambda v: isinstance(v, tuple) and all(isinstance(s, str) for s in v) and (len(v) > 0 or not nonempty),
                _as_tuple)


def subset(*choices: str) -> Kind:
    """A non-empty tuple of distinct choices."""
    return Kind("a non-empty tuple of distinct names from " + ", ".join(map(repr, choices)),
                lambda v: isinstance(v, tuple) and 0 < len(v) == len(set(v)) and set(v) <= set(choices), _as_tuple)


TEXT = Kind("a string", lambda v: isinstance(v, str) and v != "")
FLAG = Kind("True or False", lambda v: isinstance(v, bool))
REQUIRED = object()  # a field every config must set
PROTOCOL = object()  # absent: `Protocol()`'s default


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: `key` (dotted), `kind`, `absent` (the value used when a config does not
    set it, `REQUIRED`, or `PROTOCOL` for `Protocol()`'s default), `meaning` (the README's words);
    `budget`: a resumed run may raise it (more generations extend a finished search)."""

    key: str
    kind: Kind
    absent: Any
    meaning: str
    budget: bool = False

    @property
    def default(self):
        """The value used when a config leaves the field out."""
        if self.absent is PROTOCOL:
            return Protocol.__dataclass_fields__[self.key.split(".", 1)[1]].default
        return self.absent


FIELDS = (
    Field("seed", integer(0), REQUIRED, "the search's random generator (the same config and seed give the same run)"),
    Field("data.source", TEXT, REQUIRED,
          "a TFDS name (`cifar10`, `cifar100`), an ImageFolder root with `train/` and `test/`, or a `.npz` bundle"),
    Field("data.data_dir", optional(TEXT), None, "TFDS's data folder (None: TFDS's default)"),
    Field("data.fit_seed", integer(0), REQUIRED, "which train images the protocol fits on (a seeded random order)"),
    Field("data.val_size", optional(integer(1)), REQUIRED,
          "validation images, class-balanced among the even test positions (None: all)"),
    Field("knowledge.path", optional(TEXT), None,
          "a saved knowledge base (`modulenet kb build`); otherwise built from `knowledge.sources`"),
    Field("knowledge.sources", strings(nonempty=True), REQUIRED,
          "known pretrained names (`cifar_resnet20`, ...) or torchvision models (`tv_resnet18`, ...)"),
    Field("knowledge.weights_dirs", strings(), REQUIRED,
          "folders searched for the sources' checkpoints first; then the download cache "
          "(`$MODULENET_CACHE/weights`), then the download"),
    Field("knowledge.weights", optional(TEXT), None,
          "torchvision sources: a weights name (`DEFAULT`, `IMAGENET1K_V1`) or `random`; None: the sources are "
          "CIFAR checkpoints"),
    Field("knowledge.weights_seed", integer(0), 0, "torchvision `random` weights: the seed of the first source"),
    Field("knowledge.input_size", optional(integer(1)), None,
          "torchvision sources: the image size the modules are cut and costed at (None: the model's own)"),
    Field("space.kind", one_of(*SPACE_KINDS), "stages",
          "`stages` (one family, stage by stage) or `mixed` (families mixed by reduction level)"),
    Field("space.granularity", one_of(*GRANULARITIES), "block",
          "`stages` space: `stage`, `run` or `block` (the genotype layout below)"),
    Field("space.min_depth", integer(1), 1, "`stages` space: fewest blocks per stage"),
    Field("space.max_depth", optional(integer(0)), None,
          "most blocks per stage (`mixed`: per reduction level; None: the deepest source's)"),
    Field("space.sources", strings(), (), "the knowledge base's sources the space draws from (empty: all)"),
    Field("space.min_reduction", optional(integer(1)), None,
          "`mixed` space: every network reaches at least this output stride"),
    Field("protocol.stitch", FLAG, PROTOCOL, "a 1×1 least-squares stitch at every junction"),
    Field("protocol.stitch_images", integer(1), PROTOCOL,
          "fit images the stitches are solved on (at most `fit_images`)"),
    Field("protocol.stitch_ridge", number(0), PROTOCOL, "relative ridge penalty of the stitch solves"),
    Field("protocol.bn", one_of(*BN_MODES), PROTOCOL,
          "`from_junction` (source statistics up to the first junction, the fit images' from it on), "
          "`recalibrate` (the fit images' everywhere) or `source` (as published everywhere)"),
    Field("protocol.head", one_of(*HEADS), PROTOCOL, "`logistic` (L-BFGS) or `ridge` (closed form)"),
    Field("protocol.head_l2", number(0), PROTOCOL, "L2 penalty of the logistic head (standardised features)"),
    Field("protocol.head_ridge", number(0), PROTOCOL, "penalty of the ridge head"),
    Field("protocol.head_steps", integer(1), PROTOCOL, "L-BFGS iterations of the logistic head"),
    Field("protocol.fit_images", integer(1), PROTOCOL, "train images for BatchNorm statistics and the head"),
    Field("protocol.batch_size", integer(1), PROTOCOL, "images per compiled call"),
    Field("protocol.dtype", one_of(*DTYPES), PROTOCOL,
          "`tensorfloat32`: fp32 with TF32 convolutions on GPUs that have it (PyTorch's GPU default; fp32 "
          "elsewhere); `bfloat16`: convolutions and products in bf16, fp32 accumulation"),
    Field("protocol.stitch_steps", integer(0), PROTOCOL, "Adam steps on stitches and head after the fits (0: none)"),
    Field("protocol.stitch_lr", number(0, lo_open=True), PROTOCOL, "the learning rate of those steps"),
    Field("protocol.input_size", optional(integer(1)), PROTOCOL,
          "resize images to this size before the first module (None: as they are; must be the knowledge base's "
          "size)"),
    Field("evaluator.strategy", one_of(*STRATEGIES), REQUIRED,
          "`fused` (population program; GPU/TPU), `loop` (per-module calls; CPU), `auto` picks by device"),
    Field("evaluator.chunk_size", optional(integer(1)), None,
          "genotypes per fused call (None: from the device's free memory, cut to equal chunks of the search's "
          "population)"),
    Field("evaluator.group", optional(integer(1)), None,
          "fused path: genotypes of a chunk run side by side (vmapped), the groups one after another (None: one "
          "on a CPU, the whole chunk on GPU/TPU)"),
    Field("evaluator.grouped_layout", FLAG, False,
          "fused path: fit and score each group with its genotypes inside the channel axis (no transposes between "
          "convolutions; CIFAR ResNet ops) instead of vmapped: the same counts; not yet measured faster"),
    Field("evaluator.group_width", integer(0), 0,
          "grouped layout: neighbouring genotypes' convolutions packed into groups of up to this many channels "
          "(block-diagonal kernels: more multiplications, wider groups; 0: none): the same counts; not yet measured"),
    Field("evaluator.prefix_memory_mb", integer(0), PREFIX_MEMORY_MB,
          "module path: most memory kept for the states of module prefixes a generation shares (0: no sharing)"),
    Field("search.algorithm", one_of(*ALGORITHMS), REQUIRED, "`nsga2` or `random`"),
    Field("search.population", integer(2), REQUIRED, "networks per generation"),
    Field("search.generations", integer(1), REQUIRED, "generations (may be raised on resume: the search goes on)",
          budget=True),
    Field("search.objectives", subset(*OBJECTIVES), REQUIRED, "minimised: any of `error`, `params`, `flops`"),
    Field("search.seed_sources", FLAG, REQUIRED, "start from the source models themselves"),
    Field("search.crossover", one_of(*CROSSOVERS), REQUIRED,
          "`stage` (whole stages from one parent) or `uniform` (gene by gene)"),
    Field("search.crossover_prob", number(0, 1), REQUIRED, "probability of crossover"),
    Field("search.mutation_prob", optional(number(0, 1)), REQUIRED, "per gene (None: 1 / number of genes)"),
    Field("search.immigrants", integer(0), 0, "NSGA-II: fresh samples among each generation's offspring "
          "(random immigrants; below search.population)"),
    Field("search.shrink_prob", number(0, 1), 0.0, "NSGA-II: share of offspring that are a tournament winner "
          "with one stage one block shorter"),
    Field("search.continue_run_prob", number(0, 1), REQUIRED,
          "a sampled or mutated block gene continues its predecessor's run (fewer junctions; 0: uniform sampling)"),
    Field("final.split", one_of(*FINAL_SPLITS), REQUIRED, "the final table's split (`final`: the odd test positions)"),
    Field("final.size", optional(integer(1)), REQUIRED, "its class-balanced subset (None: all)"),
    Field("final.finetune.epochs", integer(0), 0,
          "the \"after fine-tune\" column: every row (sources too) exported and trained end to end for this many "
          "epochs with the settings below (0: no column)"),
    Field("final.finetune.images", optional(integer(1)), 10_240, "train images per epoch (None: the whole split)"),
    Field("final.finetune.batch_size", integer(1), 128, "images per step"),
    Field("final.finetune.learning_rate", number(0, lo_open=True), 0.01, "peak learning rate (cosine decay)"),
    Field("final.finetune.optimizer", one_of(*OPTIMIZERS), "sgd", "`sgd` (Nesterov momentum) or `adamw`"),
)
BY_KEY = {f.key: f for f in FIELDS}
BUDGET_KEYS = tuple(f.key for f in FIELDS if f.budget)


def field(key: str) -> Field:
    """The table's row for `key` (a `UserError` listing the section's fields if there is none)."""
    if key not in BY_KEY:
        section = key.rsplit(".", 1)[0] + "." if "." in key else ""
        known = [k for k in BY_KEY if k.startswith(section) and "." not in k[len(section):]]
        raise UserError(f"no config field {key!r}; fields there: {', '.join(known)}")
    return BY_KEY[key]


def lookup(config, key: str):
    """`(present, value)` of a dotted key in a config (a ConfigDict or plain dict)."""
    node = config
    for name in key.split("."):
        if not hasattr(node, "keys") or name not in node:
            return False, None
        node = node[name]
    return True, node


def setting(config, key: str):
    """The config's value of `key`, or the table's value for a config that leaves it out.
    `config` is the whole config or the section `key` is in (`setting(config.space, "space.kind")`)."""
    whole = key.split(".")[0] in config  # else `config` is the section the key's last name is in
    present, value = lookup(config, key) if whole else lookup(config, key.rpartition(".")[2])
    if present:
        return value
    row = field(key)
    if row.absent is REQUIRED:
        raise UserError(f"the config has no {key}; add it (README: config reference)")
    return row.default


def _protocol(config) -> list[str]:
    """The rules between protocol fields are `Protocol`'s own (a library user meets the same)."""
    names = [row.key.split(".", 1)[1] for row in FIELDS if row.absent is PROTOCOL]
    try:
        Protocol(**{name: setting(config, f"protocol.{name}") for name in names})
    except UserError as e:
        return [str(e)]
    return []


def _depths(config) -> list[str]:
    lo, hi = setting(config, "space.min_depth"), setting(config, "space.max_depth")
    return [] if hi is None or lo <= hi else [
        f"space.min_depth ({lo}) must be at most space.max_depth ({hi})"]


RULES: tuple[Callable[[Any], list[str]], ...] = (_protocol, _depths)


def problems(config) -> list[str]:
    """Everything wrong with a config, one line each: unknown fields, missing required ones,
    wrong types or ranges, and broken rules between fields."""
    found = []
    for key in _leaf_keys(config):
        if key not in BY_KEY:
            found.append(f"unknown config field {key!r}; remove it (README: config reference lists the fields)")
    for row in FIELDS:
        present, value = lookup(config, row.key)
        if not present:
            if row.absent is REQUIRED:
                found.append(f"the config has no {row.key}; add it (README: config reference)")
            continue
        problem = row.kind.problem(value)
        if problem:
            found.append(f"{row.key} {problem}; fix it in the config or with --set {row.key}=...")
    if not found:
        found += [p for rule in RULES for p in rule(config)]
    return found


def validate(config) -> None:
    """A `UserError` naming the first problem of the config (and how many more there are)."""
    found = problems(config)
    if found:
        more = f" (and {len(found) - 1} more problem{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise UserError(found[0] + more)


def _leaf_keys(config, prefix: str = "") -> list[str]:
    keys = []
    for name in config.keys():
        value = config[name]
        if hasattr(value, "keys"):
            keys += _leaf_keys(value, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _cell(value) -> str:
    if value is REQUIRED:
        return "required"
    return f"`{value!r}`"


def reference_table(config, name: str = "cifar10_resnet") -> str:
    """The README's config reference: every field, its value in `config` (called `name`), the
    value used when a config leaves it out, and its meaning."""
    lines = [f"| field | `{name}` | when absent | meaning |", "| --- | --- | --- | --- |"]
    for row in FIELDS:
        present, value = lookup(config, row.key)
        lines.append(f"| `{row.key}` | {_cell(value) if present else '—'} | {_cell(row.default)} | {row.meaning} |")
    return "\n".join(lines)
