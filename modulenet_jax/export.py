"""An exported network on disk: a folder that loads without the knowledge base.

    model, variables = modulenet_jax.export.load("runs/cifar10_resnet/models/front3")
    logits = model.apply(variables, images)        # uint8 NHWC images -> float32 logits

`model` is a `network.Network` (a `flax.linen` Module running the zoo ops) and `variables`
its `{"params", "batch_stats"}`. The folder holds:

- `model.json`: a readable description — every module (its op and static config, channels,
  the source and knowledge-base id it came from, its parameters and FLOPs, whether a stitch
  comes before it), the input normalisation, the head, totals, and where the network came from
  (run, name, protocol, the accuracy recorded there, the export's own check of it); after
  `modulenet finetune`, the fine-tune's settings and result;
- `variables/`: the exported variables (orbax), exactly what the protocol fitted;
- `finetuned/`: the variables after a finished fine-tune (orbax), which `load` then prefers;
- `finetune/`: the fine-tune's checkpoints and per-epoch metrics (`finetune.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from modulenet_jax.assemble import stitch_cost
from modulenet_jax.atomic import write_atomic
from modulenet_jax.checkpoints import load_tree, save_tree
from modulenet_jax.errors import UserError
from modulenet_jax.jsonfile import read_json
from modulenet_jax.knowledge import ModuleRecord
from modulenet_jax.network import Network

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"
FINETUNED_DIR = "finetuned"
FORMAT_VERSION = 1
LOAD_CALL = "model, variables = modulenet_jax.export.load(DIR); logits = model.apply(variables, images_uint8_nhwc)"


def network_json(model: Network, records: list[ModuleRecord]) -> dict:
    """The `network` section of `model.json`: the module's attributes (what `network_from_json`
    rebuilds it from), each module with its knowledge-base record (source, id, params, FLOPs)
    and the stitch before it (channels, params, FLOPs; None where there is no junction)."""
    modules = []
    for i, (rec, m, junction) in enumerate(zip(records, model.models, model.junctions)):
        stitch = None
        if junction:
            cin, cout = model.specs[i - 1].out_channels, rec.spec.in_channels
            params, flops = stitch_cost(cin, cout, rec.input_resolution)
            stitch = {"in_channels": cin, "out_channels": cout, "params": params, "flops": flops}
        modules.append({**rec.to_json(), "model": m, "junction": junction, "stitch": stitch})
    return {"modules": modules, "num_classes": model.num_classes, "mean": list(model.mean), "std": list(model.std),
            "input_size": model.input_size, "dtype": model.dtype, "bn_momentum": model.bn_momentum}


def network_from_json(d: dict) -> Network:
    """The `Network` a `network` section describes."""
    records = [ModuleRecord.from_json(m) for m in d["modules"]]
    return Network(specs=tuple(r.spec for r in records), models=tuple(m["model"] for m in d["modules"]),
                   junctions=tuple(bool(m["junction"]) for m in d["modules"]), num_classes=d["num_classes"],
                   mean=tuple(d["mean"]), std=tuple(d["std"]), input_size=d["input_size"], dtype=d["dtype"],
                   bn_momentum=d["bn_momentum"])


def check_out(path) -> Path:
    """`path` as an export's destination: a `UserError` if it exists and is not an empty folder."""
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} already exists and is not an empty folder; choose another --out or remove it")
    return path


def save(path, model: Network, variables: dict, records: list[ModuleRecord], description: dict) -> Path:
    """Writes the variables and `model.json` into `path` (which must not exist or be an empty
    folder): `description` with the format, the load call and the `network` section
    (`network_json` of the model and its modules' knowledge-base `records`) added."""
    path = check_out(path)
    path.mkdir(parents=True, exist_ok=True)
    save_tree(path / VARIABLES_DIR, variables)
    write_description(path, {"format": FORMAT_VERSION, "load": LOAD_CALL, **description,
                             "network": network_json(model, records)})
    return path


def write_description(path, description: dict) -> None:
    """(Re)writes `model.json` atomically."""
    write_atomic(Path(path) / MODEL_FILE, json.dumps(description, indent=1) + "\n")


def read_description(path) -> dict:
    """`model.json` of an exported network (a `UserError` if `path` is not one)."""
    path = Path(path)
    if not (path / MODEL_FILE).is_file():
        raise UserError(f"{path} is not an exported network (no {MODEL_FILE}); make one with `modulenet export`")
    d = read_json(path / MODEL_FILE, "exported network's description", "export the network again")
    if d.get("format") is None and "model" in d:
        raise UserError(f"{path} holds a converted model (`modulenet convert`), not an exported network; fine-tune "
                        f"a network exported with `modulenet export`")
    if d.get("format") != FORMAT_VERSION:
        raise UserError(f"{path}: export format {d.get('format')}, this version reads {FORMAT_VERSION}; export it again")
    return d


def is_finetuned(path) -> bool:
    """Does the folder hold a finished fine-tune?"""
    return (Path(path) / FINETUNED_DIR).is_dir() and "finetune" in read_description(path)


def load(path, finetuned: bool | None = None) -> tuple[Network, dict]:
    """`(model, variables)` of an exported network: `logits = model.apply(variables, images)`.

    `finetuned`: None gives the fine-tuned variables if a fine-tune has finished, else the
    exported ones; False the exported ones; True the fine-tuned ones (an error if there are
    none). Needs no knowledge base: the zoo's ops and the folder are all it reads."""
    path = Path(path)
    model = network_from_json(read_description(path)["network"])
    if finetuned is None:
        finetuned = is_finetuned(path)
    if finetuned and not is_finetuned(path):
        raise UserError(f"{path} holds no finished fine-tune; run `modulenet finetune {path}`")
    tree = load_tree(path / (FINETUNED_DIR if finetuned else VARIABLES_DIR),
                     "fine-tune it again (--restart)" if finetuned else "export the network again")
    return model, jax.device_put(tree)
