"""Writes what an accelerator session needs and cannot fetch: the CIFAR ResNet knowledge base and
a dataset bundle (train images in the protocol's seeded order + the validation split).

    python -m modulenet_jax.benchmarks.prepare_device_bundle --out .device \\
        --data ../shared/data/cifar10-jpeg --weights-dir ../shared/weights/cifar-resnet   # ~55 MB, for the run

Without `--data` and `--weights-dir`, CIFAR-10 comes from TFDS and the checkpoints from the
download cache (downloaded if missing), as in the default config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np

from modulenet_jax.errors import run_script
from modulenet_jax.zoo.common import unflatten


def save_kb(kb, path) -> None:
    """The knowledge base's params as a plain .npz (no orbax, so the device's version does not matter)."""
    flat = {"/".join([src, *(str(getattr(k, "key", k)) for k in path)]): np.asarray(leaf)
            for src, params in kb.params.items()
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(path, models=np.array([f"{s.name}|{s.model}" for s in kb.sources.values()]), **flat)


def load_kb(path):
    """The knowledge base written by `save_kb`, rebuilt from its params."""
    from modulenet_jax.knowledge import KnowledgeBase

    with np.load(path) as z:
        models = [str(m).split("|") for m in z["models"]]
        params = unflatten((key.split("/"), z[key]) for key in z.files if key != "models")
    return KnowledgeBase.build([(name, model, params[name], "bundle") for name, model in models])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default=".device")
    p.add_argument("--data", default="cifar10", help="a TFDS name, an ImageFolder root or a .npz bundle")
    p.add_argument("--weights-dir", nargs="*", default=(), help="folders searched for the checkpoints first")
    p.add_argument("--train", type=int, default=10240)
    return run_script(p, run_parsed, argv)


def run_parsed(args):
    from modulenet_jax.converters.knowledge import build_from_pretrained
    from modulenet_jax.data import load_dataset, save_bundle

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_kb(build_from_pretrained([f"cifar_resnet{d}" for d in (20, 32, 44, 56)], args.weights_dir), out / "kb.npz")
    save_bundle(load_dataset(args.data), out / "cifar10.npz", args.train, seed=0, test_split="val")
    print(f"wrote {out}/kb.npz and {out}/cifar10.npz")


if __name__ == "__main__":
    main()
