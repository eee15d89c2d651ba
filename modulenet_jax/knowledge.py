"""The knowledge base: trained source models cut into modules that keep their weights.

Each module is a record (id, source, spec, input/output resolution, parameter count, FLOPs)
plus its frozen params. The base is saved as a readable `index.json` and an orbax
checkpoint of `{source: {module name: params}}`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

import jax
import jax.numpy as jnp

from modulenet_jax import zoo
from modulenet_jax.checkpoints import check_params, load_tree, save_tree
from modulenet_jax.cost import count_flops, count_params
from modulenet_jax.errors import UserError
from modulenet_jax.jsonfile import read_json
from modulenet_jax.progress import NO_PROGRESS, Progress
from modulenet_jax.zoo.registry import ModuleSpec

INDEX_FILE = "index.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ModuleRecord:
    """One module of the knowledge base and what it costs at the base's input size."""

    id: str
    source: str
    spec: ModuleSpec
    input_resolution: int
    output_resolution: int
    params_count: int
    flops: int

    def to_json(self) -> dict:
        spec = dataclasses.asdict(self.spec)
        spec["static"] = [list(kv) for kv in self.spec.static]
        return {"id": self.id, "source": self.source, "spec": spec,
                "input_resolution": self.input_resolution,
                "output_resolution": self.output_resolution,
                "params_count": self.params_count, "flops": self.flops}

    @classmethod
    def from_json(cls, d: dict) -> "ModuleRecord":
        spec = dict(d["spec"])
        spec["static"] = tuple(tuple(kv) for kv in spec["static"])
        return cls(d["id"], d["source"], ModuleSpec(**spec), d["input_resolution"],
                   d["output_resolution"], d["params_count"], d["flops"])


@dataclasses.dataclass(frozen=True)
class Source:
    """A trained model the base was cut from: its architecture, where its weights came from and,
    when known, the names of the classes it was trained on (in the order of its outputs)."""

    name: str
    model: str
    weights: str
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))


class KnowledgeBase:
    """Modules of several trained source models, addressable by id `source/module`."""

    def __init__(self, sources: Iterable[Source], records: Iterable[ModuleRecord], params: dict,
                 input_size: int):
        self.sources = {s.name: s for s in sources}
        self.records = tuple(records)
        self._by_id = {r.id: r for r in self.records}
        self.params = params
        self.input_size = input_size
        for r in self.records:
            if r.source not in self.sources:
                raise ValueError(f"record {r.id} names unknown source {r.source!r}")
            if r.spec.name not in params.get(r.source, {}):
                raise ValueError(f"record {r.id} has no params")

    @classmethod
    def build(cls, models: Iterable[tuple[str, str, dict, str]], input_size: int | None = None,
              classes: dict[str, tuple[str, ...]] | None = None, progress: Progress = NO_PROGRESS):
        """Cuts `(source name, model name, params, weights label)` models into modules, costed at
        `input_size` px (None: each model's own). `classes`: {source: its class names}, where known."""
        models = list(models)
        sources, records, params = [], [], {}
        with progress.task("cutting modules", sum(len(zoo.get_model(m[1]).modules) for m in models),
                           "modules") as advance:
            for source, model_name, model_params, weights in models:
                if source in params:
                    raise UserError(f"duplicate source name {source!r}; give each source model its own name")
                check_params(model_name, model_params)
                params[source] = jax.device_put(model_params)  # not jnp.asarray: see zoo.common._init_model
                records += cls._cut(source, model_name, params[source], input_size, advance)
                sources.append(Source(source, model_name, weights, (classes or {}).get(source)))
        if not sources:
            raise UserError("a knowledge base needs at least one source model")
        sizes = {input_size or zoo.get_model(s.model).input_size for s in sources}
        return cls(sources, records, params, sizes.pop() if len(sizes) == 1 else input_size)

    @staticmethod
    def _cut(source: str, model_name: str, model_params, input_size, advance) -> list[ModuleRecord]:
        """The records of one source model's modules, with their costs at `input_size` px."""
        model = zoo.get_model(model_name)
        size = input_size or model.input_size
        x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
        records = []
        for spec in model.modules:
            p = model_params[spec.name]
            def module(p, x, spec=spec):
                return zoo.apply_module(spec, p, x)[0]

            flops = count_flops(module, p, x)
            y = jax.eval_shape(module, p, x)
            res_in = x.shape[1] if len(x.shape) == 4 else 1
            res_out = y.shape[1] if len(y.shape) == 4 else 1
            records.append(ModuleRecord(f"{source}/{spec.name}", source, spec, res_in, res_out,
                                        count_params(p), flops))
            x = y
            advance()
        return records

    def record(self, module_id: str) -> ModuleRecord:
        """The record of a module id (`source/module`; a KeyError naming it if there is none)."""
        try:
            return self._by_id[module_id]
        except KeyError:
            raise KeyError(f"no module {module_id!r} in the knowledge base") from None

    def module_params(self, module_id: str):
        r = self.record(module_id)
        return self.params[r.source][r.spec.name]

    def source(self, name: str) -> Source:
        """The source model called `name` (an error naming the base's sources if there is none)."""
        if name not in self.sources:
            raise UserError(f"no source {name!r} in the knowledge base; its sources: {', '.join(self.sources)}")
        return self.sources[name]

    def modules_of(self, source: str) -> tuple[ModuleRecord, ...]:
        """The records of one source, in the order of its forward pass."""
        self.source(source)
        return tuple(r for r in self.records if r.source == source)

    def predecessor(self, module_id: str) -> str | None:
        """The id of the module that feeds `module_id` inside its own source model."""
        r = self.record(module_id)
        prev = zoo.get_model(self.sources[r.source].model).predecessor(r.spec.name)
        return None if prev is None else f"{r.source}/{prev}"

    def source_model(self, source: str):
        return zoo.get_model(self.source(source).model)

    def save(self, path) -> Path:
        """Writes `index.json` (readable) and the params (orbax) into the folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_tree(path / PARAMS_DIR, self.params)
        index = {"format": FORMAT_VERSION, "input_size": self.input_size,
                 "sources": [dataclasses.asdict(s) for s in self.sources.values()],
                 "records": [r.to_json() for r in self.records]}
        (path / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "KnowledgeBase":
        """A knowledge base written by `save` (a `UserError` if the folder is not one, or is corrupt)."""
        path = Path(path)
        if not (path / INDEX_FILE).is_file():
            raise FileNotFoundError(f"{path}: not a knowledge base (no {INDEX_FILE}); "
                                    f"build one with `modulenet kb build`")
        rebuild = "build the knowledge base again with `modulenet kb build`"
        index = read_json(path / INDEX_FILE, "knowledge base index", rebuild)
        if index.get("format") != FORMAT_VERSION:
            raise UserError(f"{path}: knowledge base format {index.get('format')}, this version reads "
                            f"{FORMAT_VERSION}; build it again with `modulenet kb build`")
        try:
            sources = [Source(**s) for s in index["sources"]]
            for source in sources:
                zoo.get_model(source.model)  # a model this version does not know is the index's problem
            records = [ModuleRecord.from_json(r) for r in index["records"]]
            input_size = index["input_size"]
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path / INDEX_FILE} is not a knowledge base index ({type(e).__name__}: {e}); "
                            f"{rebuild}") from None
        params = load_tree(path / PARAMS_DIR, rebuild)
        for s in sources:
            check_params(s.model, params[s.name])
        params = jax.device_put(params)
        return cls(sources, records, params, input_size)

    def table(self) -> list[dict]:
        """One row per module, for `modulenet kb show`."""
        return [{"id": r.id, "kind": r.spec.kind, "stage": r.spec.stage, "index": r.spec.index,
                 "in": r.spec.in_channels, "out": r.spec.out_channels, "stride": r.spec.stride,
                 "resolution": f"{r.input_resolution}->{r.output_resolution}",
                 "params": r.params_count, "flops": r.flops} for r in self.records]
