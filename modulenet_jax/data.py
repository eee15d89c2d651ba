"""Datasets (an ImageFolder tree or a named TFDS dataset) and the search protocol's splits.

Images are kept as uint8 NHWC arrays; preprocessing (scale to [0, 1], normalise) happens on
the device inside the evaluator. The protocol (../shared/README.md): the train split fits
stitches, BatchNorm statistics and heads; the even positions of the test split are the
search's validation set (`val`); the odd positions are the final test set (`final`), never read
by a search. `test` is the whole test split, as the dataset publishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

from modulenet_jax.atomic import replacing
from modulenet_jax.errors import UserError
from modulenet_jax.progress import NO_PROGRESS, Progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TFDS_NAMES = ("cifar10", "cifar100")
SPLITS = ("train", "test", "val", "final")
PREPARE_MODULES = ("tensorflow", "importlib_resources")  # what TFDS imports to prepare a dataset: extra `prepare`


@dataclasses.dataclass(frozen=True)
class Split:
    """Images (uint8, N x H x W x 3) with integer labels, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    description: str

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise UserError(f"{self.description}: images must be RGB, uint8 N x H x W x 3, got "
                            f"{self.images.dtype} {self.images.shape}; convert them to 8-bit RGB")
        if len(self.labels) != len(self.images):
            raise UserError(f"{self.description}: {len(self.labels)} labels for {len(self.images)} images")
        if len(self.labels) and not 0 <= int(np.min(self.labels)) <= int(np.max(self.labels)) < self.num_classes:
            raise UserError(f"{self.description}: labels must be in 0..{self.num_classes - 1}, got "
                            f"{int(np.min(self.labels))}..{int(np.max(self.labels))}")

    def __len__(self):
        return len(self.labels)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images."""
        return tuple(self.images.shape[1:3])

    def take(self, indices, description: str) -> "Split":
        indices = np.asarray(indices)
        return Split(self.images[indices], self.labels[indices], self.num_classes, description)


def cache_dir() -> Path:
    """The download and decode cache: $MODULENET_CACHE, by default ~/.cache/modulenet_jax."""
    return Path(os.environ.get("MODULENET_CACHE", Path.home() / ".cache" / "modulenet_jax"))


def _list_image_folder(root: Path):
    # hidden folders (.ipynb_checkpoints, .git) are not classes
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    files, labels = [], []
    for label, name in enumerate(classes):
        names = sorted(f for f in os.listdir(root / name) if f.lower().endswith(IMAGE_SUFFIXES))
        files += [root / name / f for f in names]
        labels += [label] * len(names)
    if not files:
        raise FileNotFoundError(f"{root}: no images with suffixes {IMAGE_SUFFIXES}")
    return classes, files, np.asarray(labels, np.int32)


UNDECODABLE_NAMED = 5  # the most undecodable files one error message names


def _decode(path: Path) -> np.ndarray | str:
    """One image file as uint8 RGB, or why it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        return str(e)


def load_image_folder(root, progress: Progress = NO_PROGRESS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decodes `root/<class>/<file>` (classes in alphabetical order, files sorted by name).

    The decoded arrays are cached under $MODULENET_CACHE (default ~/.cache/modulenet_jax),
    keyed by the folder's resolved path and its files' names, sizes and modification times, so a
    changed folder is decoded again and one folder named two ways (`../shared/...` from one
    directory, an absolute path from another, a link) is decoded once.
    Files that cannot be decoded are a `UserError` naming each of them (the first few, and how
    many there are); so are images of different sizes.
    """

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no image folder at {root}")
    classes, files, labels = _list_image_folder(root)
    key = hashlib.sha256(f"{root.resolve()}\n".encode())
    for f in files:
        st = f.stat()
        key.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    cache = cache_dir() / f"imagefolder-{key.hexdigest()[:24]}.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return z["images"], z["labels"], classes
    images, undecodable = [], []
    with progress.task(f"decoding {root}", len(files), "images") as advance:
        for f in files:
            image = _decode(f)
            if isinstance(image, str):
                undecodable.append(f"{f} ({image})")
            elif images and image.shape != images[0][1].shape:
                raise UserError(f"{f} is {_size(image)} px, {images[0][0]} is {_size(images[0][1])} px; resize the "
                                f"images of {root} to one size first")
            else:
                images.append((f, image))
            advance()
    if undecodable:
        named = "; ".join(undecodable[:UNDECODABLE_NAMED]) + ("; ..." if len(undecodable) > UNDECODABLE_NAMED else "")
        raise UserError(f"{len(undecodable)} image file{'s' if len(undecodable) > 1 else ''} of {root} cannot be "
                        f"decoded: {named}; replace or delete them")
    images = np.stack([image for _, image in images])
    cache.parent.mkdir(parents=True, exist_ok=True)
    with replacing(cache) as tmp, open(tmp, "wb") as f:  # two processes decoding at once: both whole
        np.savez(f, images=images, labels=labels)
    return images, labels, classes


def _size(image: np.ndarray) -> str:
    return f"{image.shape[1]}x{image.shape[0]}"


def load_tfds(name: str, split: str, data_dir=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads a prepared TFDS dataset with `tfds.data_source` (no TensorFlow needed to read).

    Preparing (downloading) a dataset does need TensorFlow: install the `prepare` extra.
    Returns the images, the labels and the class names.
    """
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    verbosity, said = absl_logging.get_verbosity(), io.StringIO()
    try:  # TFDS prints to stdout (where --json goes) and warns through absl: kept from a failure's one line
        absl_logging.set_verbosity(absl_logging.ERROR)
        with contextlib.redirect_stdout(said):
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=True)
        sys.stderr.write(said.getvalue())
    except ImportError as e:
        if not any(m in str(e).lower() for m in PREPARE_MODULES):
            raise
        raise UserError(
            f"TFDS dataset {name!r} is not prepared, and preparing it needs the prepare extra ({e}): "
            f"pip install 'modulenet-jax[prepare]', or give an ImageFolder root or .npz bundle instead "
            f"(--data, or --set data.source=...)") from None
    finally:
        absl_logging.set_verbosity(verbosity)
    records = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(r["image"], np.uint8) for r in records])
    labels = np.asarray([int(r["label"]) for r in records], np.int32)
    return images, labels, list(source.dataset_info.features["label"].names)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's raw train and test splits.

    `test_positions` are the positions of the stored test images in the full test split
    (None: all of it, in order), so a bundle that keeps only part of the test split still
    splits it into the protocol's even (`val`) and odd (`final`) positions correctly.
    `classes` are the class names in label order (None: not known).
    """

    name: str
    train: Split
    test: Split
    test_positions: np.ndarray | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.train.num_classes != self.test.num_classes:
            raise UserError(f"{self.name}: the train split has {self.train.num_classes} classes, the test split "
                            f"{self.test.num_classes}; give both the same classes")
        if self.classes is not None and len(self.classes) != self.train.num_classes:
            raise UserError(f"{self.name}: {len(self.classes)} class names for {self.train.num_classes} classes")
        if self.train.image_size != self.test.image_size:
            raise UserError(f"{self.name}: train images are {self.train.image_size} px, test images "
                            f"{self.test.image_size} px; resize them to one size")

    @property
    def num_classes(self) -> int:
        return self.train.num_classes


def save_bundle(dataset: Dataset, path, train_size: int | None, *, seed: int, test_split: str = "test") -> Path:
    """Writes a subset of a dataset as one `.npz` (e.g. to carry data to a remote accelerator):
    `train_size` train images in the order `seed` gives (as `fit_split` with that seed orders
    them) and one protocol test split."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    train = protocol_split(dataset, "train", train_size, seed=seed)
    start, step = {"test": (0, 1), "val": (0, 2), "final": (1, 2)}[test_split]
    positions = np.arange(len(dataset.test)) if dataset.test_positions is None else dataset.test_positions
    keep = np.flatnonzero((positions - start) % step == 0) if step > 1 else np.arange(len(positions))
    np.savez(path, train_images=train.images, train_labels=train.labels, test_images=dataset.test.images[keep],
             test_labels=dataset.test.labels[keep], test_positions=positions[keep],
             num_classes=dataset.num_classes, name=dataset.name, classes=np.asarray(dataset.classes or (), str))
    return path


def load_bundle(path) -> Dataset:
    """A dataset written by `save_bundle` (its train split is already in the protocol's order)."""
    try:
        z = np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path}: not a readable .npz bundle ({e}); write it again with save_bundle") from None
    with z:
        missing = sorted({"train_images", "train_labels", "test_images", "test_labels", "test_positions",
                          "num_classes", "name"} - set(z.files))
        if missing:
            raise UserError(f"{path}: not a dataset bundle (no {', '.join(missing)}); write it with save_bundle")
        n = int(z["num_classes"])
        name = str(z["name"])
        classes = tuple(str(c) for c in z["classes"]) if "classes" in z.files and len(z["classes"]) else None
        try:
            return Dataset(name, Split(z["train_images"], z["train_labels"], n, f"{name}:train"),
                           Split(z["test_images"], z["test_labels"], n, f"{name}:test"), z["test_positions"], classes)
        except UserError as e:
            raise UserError(f"{path} ({e}): write the bundle again with save_bundle") from None


def load_dataset(source: str, data_dir=None, progress: Progress = NO_PROGRESS) -> Dataset:
    """`source` is a TFDS name (cifar10, cifar100), a folder with train/ and test/ ImageFolders,
    or a `.npz` bundle written by `save_bundle`. Bad data (an image that cannot be decoded,
    images of different sizes, train and test with different classes) is a `UserError`."""
    if str(source).endswith(".npz"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"no dataset bundle at {source}")
        return load_bundle(source)
    if source in TFDS_NAMES:
        splits = {}
        for split in ("train", "test"):
            images, labels, classes = load_tfds(source, split, data_dir)
            splits[split] = Split(images, labels, len(classes), f"{source}:{split}")
        return Dataset(source, splits["train"], splits["test"], classes=tuple(classes))
    root = Path(source)
    if not root.is_dir():
        relative = "" if root.is_absolute() else f"; a relative path is read from the current folder, {Path.cwd()}"
        raise FileNotFoundError(
            f"dataset {source!r}: not a folder and not a known TFDS name ({', '.join(TFDS_NAMES)}){relative}")
    splits = {}
    class_lists = {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root}: no {split}/ folder (expected {root}/{split}/<class>/<image>)")
        images, labels, classes = load_image_folder(root / split, progress=progress)
        class_lists[split] = classes
        splits[split] = Split(images, labels, len(classes), f"{root.name}:{split}")
    if class_lists["train"] != class_lists["test"]:
        only = {s: sorted(set(class_lists[s]) - set(class_lists[t])) for s, t in (("train", "test"), ("test", "train"))}
        said = "; ".join(f"only in {s}/: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
                         for s, names in only.items() if names)
        raise UserError(f"{root}: train/ and test/ have different class folders ({said}); give both the same classes")
    return Dataset(root.name, splits["train"], splits["test"], classes=tuple(class_lists["train"]))


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """`k` indices spread evenly over range(n) (all of them if k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.floor(np.arange(k) * (n / k)).astype(np.int64)


def _test_positions(dataset: Dataset, split: str) -> np.ndarray:
    """Indices into `dataset.test` of a protocol split of the test images (`test`, `val`, `final`)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    start, step = {"test": (0, 1), "val": (0, 2), "final": (1, 2)}[split]
    stored = np.arange(len(dataset.test)) if dataset.test_positions is None else dataset.test_positions
    return np.flatnonzero((stored - start) % step == 0) if step > 1 else np.arange(len(stored))


def available(dataset: Dataset, split: str) -> int:
    """How many images a protocol split has to draw from."""
    return len(dataset.train) if split == "train" else len(_test_positions(dataset, split))


def protocol_split(dataset: Dataset, split: str, size: int | None = None, seed: int | None = None) -> Split:
    """One of the protocol's splits, optionally a subset of `size` images.

    - `train`: a random subset of the train split (for fitting) drawn with `seed` (required
      then: no silent seed), in random order, so that every prefix of it is a random subset too;
    - `test`: the whole test split (a class-balanced evenly spaced subset if `size` is set);
    - `val`: the even test positions, likewise;
    - `final`: the odd test positions, likewise.

    A `size` beyond what the split has gives the whole split (`checks.check_sizes` refuses
    such a config before a search starts).
    """
    if split == "train" and dataset.test_positions is not None:
        n = len(dataset.train)  # a bundle's train split is already a seeded random order
        idx = np.arange(n if size is None else min(size, n))
        return dataset.train.take(idx, f"{dataset.name}:train[{len(idx)} of a bundle]")
    if split == "train":
        n = len(dataset.train)
        if size is None or size >= n:
            idx = np.arange(n)
        elif seed is None:
            raise ValueError("protocol_split: a subset of the train split is drawn at random; pass its seed")
        else:
            idx = np.random.default_rng(seed).permutation(n)[:size]
        return dataset.train.take(idx, f"{dataset.name}:train[{len(idx)} of {n}, seed {seed}]")
    positions = _test_positions(dataset, split)
    idx = positions[evenly_spaced(len(positions), size)]
    which = {"test": "", "val": " even", "final": " odd"}[split]
    return dataset.test.take(idx, f"{dataset.name}:{split}[{len(idx)}{which} test positions]")


def check_fit_images(dataset: Dataset, fit_images: int) -> None:
    """The train split holds the protocol's `fit_images`: else a `UserError`."""
    if available(dataset, "train") < fit_images:
        raise UserError(f"protocol.fit_images is {fit_images}, but {dataset.name} has only "
                        f"{available(dataset, 'train'):,} train images; lower protocol.fit_images")


def fit_split(dataset: Dataset, protocol, seed: int) -> Split:
    """The images a protocol fits on: its `fit_images` train images in the order seeded by
    `seed` (the config's `data.fit_seed`). Too few train images is a `UserError`."""
    check_fit_images(dataset, protocol.fit_images)
    return protocol_split(dataset, "train", protocol.fit_images, seed)
