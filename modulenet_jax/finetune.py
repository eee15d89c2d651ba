"""Fine-tuning an exported network in its folder: `modulenet finetune DIR`.

The network trains end to end (`train.fit`) from the variables it was exported with, on the
train split of the dataset its run searched on (every train image; `Settings.images` per
epoch), and is evaluated after every epoch on the run's final split, in the protocol's batch
size, so its accuracy compares with the final table's. In the folder (`export.py`):

- `finetune/settings.json`: the settings and the splits; a folder holding another fine-tune
  is refused (`restart` starts over);
- `finetune/checkpoints/`: orbax checkpoints after every epoch: a killed fine-tune resumes
  from the last one and ends exactly as an uninterrupted one;
- `finetune/metrics.jsonl`: per epoch, train loss and accuracy, eval correct/total/accuracy;
- `finetuned/` and `model.json`'s `finetune` entry once it has finished: `export.load` then
  gives the fine-tuned variables.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from modulenet_jax import export, train
from modulenet_jax.checkpoints import save_tree
from modulenet_jax.data import Dataset, load_dataset, protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.jsonfile import difference, read_json
from modulenet_jax.progress import NO_PROGRESS, Progress

WORK_DIR = "finetune"


def finetune_folder(path, settings: train.Settings, dataset: Dataset | None = None, data: str | None = None,
                    restart: bool = False, progress: Progress = NO_PROGRESS,
                    log: Callable[[str], None] = print) -> dict:
    """Fine-tunes the exported network in `path` (resuming one that was interrupted); returns
    `model.json`'s `finetune` entry. `dataset` (already loaded) or `data` (a dataset source)
    replace the run's dataset; `restart` discards an earlier fine-tune of the folder."""
    path = Path(path)
    description = export.read_description(path)
    origin = description.get("origin", {})
    if dataset is None:
        if data is None and "data" not in origin:
            raise UserError(f"{path} does not say which dataset it came from; give one with --data")
        dataset = load_dataset(data or origin["data"]["source"], None if data else origin["data"]["data_dir"])
    _check_data(description["network"], dataset)
    train_split = protocol_split(dataset, "train")
    final = origin.get("final", {"split": "final", "size": None})
    evaluation = protocol_split(dataset, final["split"], final["size"])
    record = {"settings": settings.to_json(), "train": train_split.description, "eval": evaluation.description}
    settings.steps_per_epoch(len(train_split))  # a batch larger than an epoch: refused before anything is written
    work = path / WORK_DIR
    if restart:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(path / export.FINETUNED_DIR, ignore_errors=True)
        description.pop("finetune", None)
        export.write_description(path, description)
    if (work / "settings.json").is_file():
        there = read_json(work / "settings.json", "fine-tune's settings", "pass --restart to start the fine-tune over")
        changed = difference({**there.get("settings", {}), **there}, {**record["settings"], **record},
                             ignore=("settings",))
        if changed:
            raise UserError(f"{path} holds a fine-tune with other settings or data ({changed}); pass --restart to "
                            f"start it over")
    if export.is_finetuned(path):
        log(f"{path} is already fine-tuned with these settings")
        return description["finetune"]
    work.mkdir(exist_ok=True)
    (work / "settings.json").write_text(json.dumps(record, indent=1) + "\n")
    model, variables = export.load(path, finetuned=False)
    batch_size = origin.get("protocol", {}).get("batch_size", 500)
    variables, metrics = train.fit(model, variables, train_split, settings, evaluation, batch_size,
                                   checkpoints=work / "checkpoints", metrics_path=work / "metrics.jsonl",
                                   progress=progress, log=log)
    save_tree(path / export.FINETUNED_DIR, variables)
    description["finetune"] = {**record, "metrics": metrics[-1] if metrics else None}
    export.write_description(path, description)
    return description["finetune"]


def _check_data(network: dict, dataset: Dataset) -> None:
    """The data fits the exported network: its head's classes, and the image size its modules
    were cut at (unless the network resizes its input)."""
    if dataset.num_classes != network["num_classes"]:
        raise UserError(f"{dataset.name} has {dataset.num_classes} classes, the network's head {network['num_classes']}; "
                        f"fine-tune on data with the classes it was searched on")
    size, cut = dataset.train.image_size[0], network["modules"][0]["input_resolution"]
    if network["input_size"] is None and size != cut:
        raise UserError(f"{dataset.name}'s images are {size} px, the network's modules were cut at {cut} px; give data "
                        f"of {cut} px")
