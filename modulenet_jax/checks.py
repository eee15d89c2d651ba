"""Checks that the data, the knowledge base, the config and the output folder fit together,
made before any network is evaluated: a mismatch is one `UserError` naming it and the fix,
instead of a wrong number (64 px images scored by 32 px models, FLOPs counted at the wrong
size) or a failure after minutes of work.

What "fit together" means:

- sizes: the protocol's fit images, the validation subset and the final table's subset exist
  in the data (`check_sizes`);
- images: the networks see images of the size the knowledge base was cut (and costed) at:
  the data's own size, or `protocol.input_size` when the protocol resizes them (`check_images`);
- classes: a source evaluated *as published* (its own head) needs data with its classes, in
  its order (`check_published`); a protocol score fits its own head, so there other classes
  are a transfer, not an error (`classes_differ` says so);
- output: `--out` is a folder that can be written (`check_writable`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modulenet_jax.data import Dataset, available, check_fit_images
from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase


def check_size(dataset: Dataset, split: str, size: int | None, name: str) -> None:
    """`size` images (None: all) of a protocol split exist in the data, and the split has any."""
    have = available(dataset, split)
    if have == 0:
        raise UserError(f"{dataset.name} has no images in the {split} split; give data whose test split has "
                        f"at least two images (even positions: val, odd: final)")
    if size is not None and size > have:
        every = "leave it out" if name.startswith("--") else "None"
        raise UserError(f"{name} is {size}, but {dataset.name} has only {have:,} images in the {split} split; "
                        f"lower {name} (or {every}: all of them)")


def check_sizes(config, dataset: Dataset) -> None:
    """The config's subsets exist in the data: fit images, validation images, final table."""
    from modulenet_jax.schema import setting

    check_fit_images(dataset, setting(config, "protocol.fit_images"))
    check_size(dataset, "val", config.data.val_size, "data.val_size")
    check_size(dataset, config.final.split, config.final.size, "final.size")


def _px(size) -> str:
    return f"{size[1]}x{size[0]} px" if isinstance(size, tuple) else f"{size}x{size} px"


def check_images(kb: KnowledgeBase, dataset: Dataset, input_size: int | None) -> None:
    """The networks see images of the knowledge base's size: the data's own, or `input_size`
    (the protocol resizes to it). Costs (FLOPs, resolutions) are counted at that size."""
    height, width = dataset.train.image_size
    if height != width:
        raise UserError(f"{dataset.name}: images are {_px((height, width))}, not square; crop or resize them")
    seen = input_size or height
    if kb.input_size is not None and seen != kb.input_size:
        how = f"protocol.input_size is {input_size}" if input_size else f"{dataset.name}'s images are {_px(height)}"
        raise UserError(f"{how}, but the knowledge base's modules were cut and costed at {_px(kb.input_size)}; set "
                        f"protocol.input_size={kb.input_size} (the protocol resizes the images) or give data of "
                        f"{_px(kb.input_size)}")


def classes_differ(kb: KnowledgeBase, source: str, dataset: Dataset) -> str | None:
    """Why `source`'s own head cannot score `dataset` (other classes, or another order), or None."""
    info = kb.source(source)
    count = kb.source_model(source).num_classes
    if count != dataset.num_classes:
        return f"{source} was trained on {count} classes, {dataset.name} has {dataset.num_classes}"
    if info.classes is not None and dataset.classes is not None and tuple(info.classes) != tuple(dataset.classes):
        return (f"{source} was trained on the classes {', '.join(info.classes)}; {dataset.name} has "
                f"{', '.join(dataset.classes)}")
    return None


def check_published(kb: KnowledgeBase, source: str, dataset: Dataset) -> None:
    """A source scored as published (its own BN statistics and head) needs its own classes, in
    its order, and images of the size it was trained on."""
    reason = classes_differ(kb, source, dataset)
    if reason:
        raise UserError(f"{reason}: as-published accuracy needs the source's classes in its order; evaluate "
                        f"under a config's protocol instead (--config), which fits a head for these classes")
    size = kb.input_size or kb.source_model(source).input_size
    if dataset.test.image_size != (size, size):
        raise UserError(f"{dataset.name}'s images are {_px(dataset.test.image_size)}, but {source} was trained on "
                        f"{_px(size)}; resize the images to {_px(size)}")


def check_writable(path, flag: str = "--out") -> None:
    """`path` is (or can become) a folder this process can write: not a file, and its nearest
    existing ancestor a folder where a file can be made (a temporary one is made and removed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path}: {existing} is a file, not a folder; choose another {flag}")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write in {existing} ({e.strerror}); choose a folder you can "
                        f"write") from None
