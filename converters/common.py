"""Reading PyTorch checkpoints safely and mapping their tensors onto a model's param tree."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from modulenet_jax.errors import UserError
from modulenet_jax.zoo import flat_param_shapes, get_model, list_models
from modulenet_jax.zoo.common import unflatten


class ConversionError(UserError):
    """A checkpoint that does not fit the architecture it was converted to (or is no checkpoint)."""


def load_state_dict(path) -> dict[str, np.ndarray]:
    """Loads a `.pth`/`.th` file with `weights_only=True` and returns its tensors as numpy.

    Accepts a bare state_dict or one wrapped as `{"state_dict": ...}` (or `"model"`), and
    strips a DataParallel `module.` prefix. A file that needs pickled code is refused,
    never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise ConversionError(f"{path}: not a PyTorch checkpoint (it starts with {magic!r}, not a zip archive or a "
                              f"pickle); give a .pth/.th file saved with torch.save")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConversionError(
            f"{path}: refused to load: the file needs pickled code, which is never executed "
            f"(torch.load(weights_only=True) said: {str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, KeyError) as e:  # torch.load's KeyError: a file that is no pickle at all
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e}); give a "
                              f".pth/.th file saved with torch.save") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ConversionError(f"{path}: does not hold a state_dict of tensors")
    out = {}
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[key] = value.detach().cpu().numpy()
    return out


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """OIHW -> HWIO."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


TRANSPOSE_TILE = 512


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """(out, in) -> (in, out), a new array. Copied tile by tile: a random float32 matrix of VGG's
    classifier shape (4096 x 25088) took 1.2-1.5 s as one strided copy (`ascontiguousarray(w.T)`)
    and 0.43 s in 512 x 512 tiles on the 2-core EPYC (256 x 256 tiles: 1.2 s, rows 16 KiB apart
    collide in the cache); wall time of each call, the strided copy in two runs, the tiles best
    of two."""
    out = np.empty(w.shape[::-1], w.dtype)
    for i in range(0, w.shape[0], TRANSPOSE_TILE):
        for j in range(0, w.shape[1], TRANSPOSE_TILE):
            out[j:j + TRANSPOSE_TILE, i:i + TRANSPOSE_TILE] = w[i:i + TRANSPOSE_TILE, j:j + TRANSPOSE_TILE].T
    return out


BN_FIELDS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
IGNORED_SUFFIXES = ("num_batches_tracked",)

Rule = Callable[[str], "tuple[tuple[str, ...], Callable[[np.ndarray], np.ndarray]] | None"]


def map_state_dict(state_dict: dict[str, np.ndarray], model_name: str, rule: Rule) -> dict:
    """Builds `model_name`'s param tree from a state_dict through a renaming `rule`.

    `rule(key)` gives the param path and a transform for a torch key (None for a key that
    has no place in the model). Missing, unexpected and wrongly shaped tensors are refused
    with an error that names the first offending key.
    """
    flat_expected = flat_param_shapes(model_name)
    flat = {}
    for key in sorted(state_dict):
        if key.endswith(IGNORED_SUFFIXES):
            continue
        mapped = rule(key)
        if mapped is None or mapped[0] not in flat_expected:
            raise ConversionError(f"{model_name}: unexpected key {key!r} in the state_dict")
        path, transform = mapped
        value = transform(state_dict[key])
        # float32, and never a view of the state_dict's tensor (copied only then: VGG's kernels are 400 MB)
        value = value.astype(np.float32, copy=np.may_share_memory(value, state_dict[key]))
        want = flat_expected[path]
        if value.shape != want:
            raise ConversionError(
                f"{model_name}: key {key!r} has shape {tuple(state_dict[key].shape)}, which maps to "
                f"{value.shape} but the model expects {want} at {'/'.join(path)}")
        flat[path] = value
    missing = [p for p in flat_expected if p not in flat]
    if missing:
        raise ConversionError(f"{model_name}: the state_dict has no tensor for {'/'.join(missing[0])} "
                              f"({len(missing)} params missing)")
    return unflatten(flat.items())


def naming_the_held_model(error: ConversionError, state_dict: dict[str, np.ndarray], model_name: str,
                          convert: Callable) -> ConversionError:
    """`error` (the state_dict does not fit `model_name`), saying which other model of its family
    (another depth or width) the state_dict fits exactly, when one does: the fix a user needs.
    `convert(state_dict, name)` is the family's converter. Only a model with one param per tensor
    is converted (the others are told apart by their param count alone)."""
    family = get_model(model_name).family
    tensors = sum(not key.endswith(IGNORED_SUFFIXES) for key in state_dict)
    for other in list_models():
        if other == model_name or get_model(other).family != family or len(flat_param_shapes(other)) != tensors:
            continue
        try:
            convert(state_dict, other)
        except UserError:  # not this model either
            continue
        return ConversionError(f"{error}: it holds {other}, not {model_name}; name {other} instead")
    return error
