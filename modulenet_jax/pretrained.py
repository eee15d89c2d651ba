"""Known pretrained checkpoints: where to find them locally, where to download them from.

A checkpoint is looked up by file name in the given folders first (for example the shared
`weights/cifar-resnet` folder), then in the download cache; otherwise it is downloaded from
its public source. Every file is checked against the SHA-256 prefix in its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import urllib.request
from pathlib import Path

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


def _cache_dir() -> Path:
    return Path(os.environ.get("MODULENET_CACHE", Path.home() / ".cache" / "modulenet_jax")) / "weights"


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


def fetch(name: str, search_dirs=(), download: bool = True) -> Path:
    """Local path of a known checkpoint: found in `search_dirs` or the cache, else downloaded."""
    info = get_pretrained(name)
    for d in [*map(Path, search_dirs), _cache_dir()]:
        path = d / info.filename
        if path.is_file():
            if not _sha256(path).startswith(info.sha256_prefix):
                raise UserError(f"{path}: SHA-256 does not start with {info.sha256_prefix}; the file is corrupt: "
                                f"delete it (it is downloaded again) or replace it with {info.url}")
            return path
    if not download:
        raise FileNotFoundError(f"{info.filename} is not in {[str(d) for d in search_dirs]} or the cache")
    dest = _cache_dir() / info.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    try:
        urllib.request.urlretrieve(info.url, tmp)
    except OSError as e:
        raise UserError(f"could not download {info.url} ({e}); check the network, or put {info.filename} "
                        f"into a folder of knowledge.weights_dirs / --weights-dir") from None
    if not _sha256(tmp).startswith(info.sha256_prefix):
        tmp.unlink()
        raise UserError(f"downloaded {info.url} does not match SHA-256 prefix {info.sha256_prefix}; fetch the "
                        f"file by hand and put it into a folder of knowledge.weights_dirs / --weights-dir")
    tmp.replace(dest)
    return dest
