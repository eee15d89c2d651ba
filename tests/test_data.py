"""Datasets: the real ImageFolder (exact counts), protocol splits, TFDS through mock_data."""

import numpy as np
import pytest

from modulenet_jax.data import Dataset, Split, load_dataset, load_image_folder, protocol_split
from modulenet_jax.errors import UserError
from tests.conftest import CIFAR_JPEG, needs_shared


@needs_shared
def test_real_cifar10_jpeg_counts(cifar_test):
    images, labels, classes = cifar_test
    assert images.shape == (10_000, 32, 32, 3) and images.dtype == np.uint8
    assert classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))
    assert np.all(labels[:1000] == 0)


def _dataset(n_train=100, n_test=40):
    rng = np.random.default_rng(0)
    tr = Split(rng.integers(0, 255, (n_train, 8, 8, 3), dtype=np.uint8), np.arange(n_train, dtype=np.int32) % 10, 10, "t")
    te = Split(rng.integers(0, 255, (n_test, 8, 8, 3), dtype=np.uint8), np.repeat(np.arange(10, dtype=np.int32), n_test // 10), 10, "t")
    return Dataset("d", tr, te)


def test_protocol_splits():
    ds = _dataset()
    val, final, test = (protocol_split(ds, s) for s in ("val", "final", "test"))
    assert len(val) == len(final) == 20 and len(test) == 40
    np.testing.assert_array_equal(val.images, ds.test.images[0::2])
    np.testing.assert_array_equal(final.images, ds.test.images[1::2])
    sub = protocol_split(ds, "val", 10)
    assert np.array_equal(np.bincount(sub.labels), np.ones(10))  # class-balanced
    fit = protocol_split(ds, "train", 30, seed=1)
    assert len(fit) == 30 and fit.description.endswith("seed 1]")
    assert not np.array_equal(fit.labels, np.sort(fit.labels))  # random order: every prefix is random
    assert np.array_equal(protocol_split(ds, "train", 30, seed=1).images, fit.images)
    with pytest.raises(ValueError, match="unknown split"):
        protocol_split(ds, "dev")


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image folder"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no class folders"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder and not a known TFDS name"):
        load_dataset(str(tmp_path / "nothing"))


def test_image_folder_decodes_and_caches(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    for c, color in (("b_cls", 200), ("a_cls", 10)):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4), (color, i, 0)).save(tmp_path / "data" / c / f"{i}.png")
    images, labels, classes = load_image_folder(tmp_path / "data")
    assert classes == ["a_cls", "b_cls"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images[4, 0, 0].tolist() == [200, 1, 0]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again, _, _ = load_image_folder(tmp_path / "data")
    np.testing.assert_array_equal(again, images)


def test_tfds_cifar10_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        ds = load_dataset("cifar10")
    assert ds.train.images.shape == (20, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.num_classes == 10 and len(ds.test) == 20
    assert len(protocol_split(ds, "val")) == 10


@pytest.mark.parametrize("missing", ["tensorflow", "importlib_resources"])
def test_preparing_tfds_without_the_prepare_extra_names_it(monkeypatch, missing):
    import tensorflow_datasets as tfds

    def data_source(*args, **kwargs):
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(tfds, "data_source", data_source)
    with pytest.raises(UserError, match=r"not prepared, and preparing it needs the prepare extra .* "
                                        r"pip install 'modulenet-jax\[prepare\]'"):
        load_dataset("cifar10")


@needs_shared
def test_shared_folder_is_a_dataset():
    assert (CIFAR_JPEG / "train").is_dir() and (CIFAR_JPEG / "test").is_dir()
