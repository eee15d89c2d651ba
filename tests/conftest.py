"""Shared fixtures: the real data and weights in ../shared, and a tiny random knowledge base."""

from __future__ import annotations

from pathlib import Path

from modulenet_jax import cpu_runtime

cpu_runtime.configure()  # as the `modulenet` command does, before JAX starts: the tests run what users run

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Compiled programs persist between test runs, every one however quickly it compiled (the tests
# compile thousands of small programs: 0.2 s as the threshold left test_layers, test_grouped and
# test_export at 84 s warm, 54 s with none); a rerun skips XLA's compiler, the results are the
# same programs'. The tests' subprocesses get the same settings through `COMPILE_CACHE_ENV`.
COMPILE_CACHE = ROOT / ".jax_cache"
COMPILE_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": str(COMPILE_CACHE), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
jax.config.update("jax_compilation_cache_dir", str(COMPILE_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "cifar-resnet"
CIFAR_JPEG = SHARED / "data" / "cifar10-jpeg"
CHECKPOINTS = {d: next(WEIGHTS.glob(f"resnet{d}-*.th"), None) for d in (20, 32, 44, 56)}

needs_shared = pytest.mark.skipif(not CIFAR_JPEG.is_dir() or not WEIGHTS.is_dir(),
                                  reason="../shared (real CIFAR-10 data and weights) is not beside the checkout")


@pytest.fixture(scope="session")
def cifar_test():
    """The real CIFAR-10 JPEG test split (10,000 images, label order)."""
    from modulenet_jax.data import load_image_folder

    images, labels, classes = load_image_folder(CIFAR_JPEG / "test")
    return images, labels, classes


@pytest.fixture(scope="session")
def real_kb():
    """Knowledge base of the four real CIFAR ResNets."""
    from modulenet_jax.converters.knowledge import build_from_checkpoints

    return build_from_checkpoints([CHECKPOINTS[d] for d in (20, 32, 44, 56)])


def normal(seed: int, shape) -> jax.Array:
    """Standard-normal float32 test data, drawn by numpy: XLA:CPU takes 2-5 s to compile
    `jax.random.normal` of a rank-4 shape, which data that needs no JAX should not cost."""
    return jax.device_put(np.random.default_rng(seed).standard_normal(shape, np.float32))


def uint8_images(seed: int, n: int, side: int = 32) -> jax.Array:
    """Random uint8 NHWC images (numpy-drawn, like `normal`)."""
    return jax.device_put(np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), np.uint8))


def random_models(depths=(8, 14), seed=0):
    """(source, model, params, label) tuples of randomly initialised CIFAR ResNets."""
    from modulenet_jax import zoo

    out = []
    for i, d in enumerate(depths):
        name = f"cifar_resnet{d}"
        out.append((name, name, zoo.get_model(name).init(jax.random.PRNGKey(seed + i)), "random"))
    return out


@pytest.fixture(scope="session")
def tiny_kb():
    """Two random CIFAR ResNets (8 and 14 layers): a fast knowledge base for unit tests."""
    from modulenet_jax.knowledge import KnowledgeBase

    return KnowledgeBase.build(random_models())


@pytest.fixture(scope="session")
def tiny_dataset():
    """A small synthetic dataset whose labels depend on the images (so heads can learn)."""
    from modulenet_jax.data import Dataset, Split

    rng = np.random.default_rng(0)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.int32)
        images = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        images[:, :4, :4, :] = (labels[:, None, None, None] * 25).astype(np.uint8)
        return images, labels

    tr, te = make(256), make(128)
    return Dataset("tiny", Split(*tr, 10, "tiny:train"), Split(*te, 10, "tiny:test"))
