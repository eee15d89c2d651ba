"""Known pretrained checkpoints: where to find them locally, where to download them from.

A checkpoint is looked up by file name in the given folders first (for example the shared
`weights/cifar-resnet` folder), then in the download cache; otherwise it is downloaded from
its public source. Every file is checked against the SHA-256 prefix in its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import urllib.request
from pathlib import Path

from modulenet_jax.atomic import replacing
from modulenet_jax.data import cache_dir
from modulenet_jax.errors import UserError

AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A known checkpoint: the zoo model it fits, where it comes from, and the classes it was
    trained on (in the order of its outputs)."""

    model: str
    filename: str
    url: str
    sha256_prefix: str
    license: str
    classes: tuple[str, ...]


PRETRAINED = {
    f"cifar_resnet{d}": Pretrained(f"cifar_resnet{d}", f"resnet{d}-{h}.th", f"{AKAMASTER}/resnet{d}-{h}.th", h,
                                   "BSD-2-Clause (akamaster/pytorch_resnet_cifar10)", CIFAR10_CLASSES)
    for d, h in ((20, "12fca82f"), (32, "d509ac18"), (44, "014dd654"), (56, "4bfd9763"))
}


def _weights_cache() -> Path:
    return cache_dir() / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def get_pretrained(name: str) -> Pretrained:
    try:
        return PRETRAINED[name]
    except KeyError:
        raise UserError(f"no known pretrained checkpoint {name!r}; known: {', '.join(sorted(PRETRAINED))}") from None


def find_verified(filename: str, dirs, sha256_prefix: str | None, fix: str) -> Path | None:
    """The first `dir/filename` of `dirs` that exists (None: none), checked against the start of
    its SHA-256 where one is known: a corrupt copy is a `UserError` ending in `fix`, and so is a
    folder of `dirs` that does not exist (a mistyped weights folder, not a reason to download)."""
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"weights folder {d} does not exist; fix the path (--weights-dir, knowledge.weights_dirs)")
        path = d / filename
        if path.is_file():
            if sha256_prefix and not _sha256(path).startswith(sha256_prefix):
                raise UserError(f"{path}: SHA-256 does not start with {sha256_prefix}; the file is corrupt: {fix}")
            return path
    return None


def fetch(name: str, search_dirs=()) -> Path:
    """Local path of a known checkpoint: found in `search_dirs` or the cache, else downloaded."""
    info = get_pretrained(name)
    fix = f"delete it (it is downloaded again) or replace it with {info.url}"
    local = find_verified(info.filename, search_dirs, info.sha256_prefix, fix)
    if local is None and _weights_cache().is_dir():
        local = find_verified(info.filename, [_weights_cache()], info.sha256_prefix, fix)
    if local is not None:
        return local
    dest = _weights_cache() / info.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as tmp:  # in place only when whole and verified; two fetches at once: both whole
        try:
            urllib.request.urlretrieve(info.url, tmp)
        except OSError as e:
            raise UserError(f"could not download {info.url} ({e}); check the network, or put {info.filename} "
                            f"into a folder of knowledge.weights_dirs / --weights-dir") from None
        if not _sha256(tmp).startswith(info.sha256_prefix):
            raise UserError(f"downloaded {info.url} does not match SHA-256 prefix {info.sha256_prefix}; fetch the "
                            f"file by hand and put it into a folder of knowledge.weights_dirs / --weights-dir")
    return dest
