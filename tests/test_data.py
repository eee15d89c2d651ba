"""Datasets: the real ImageFolder (exact counts), protocol splits, TFDS through mock_data."""

from pathlib import Path

import numpy as np
import pytest

from modulenet_jax.data import (Dataset, Split, load_bundle, load_dataset, load_image_folder, protocol_split,
                                save_bundle)
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


def test_train_and_test_with_other_class_folders_are_named(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    for split, classes in (("train", ("cat", "dog", "truck")), ("test", ("cat", "dog"))):
        for c in classes:
            (tmp_path / "data" / split / c).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "data" / split / c / "0.png")
    with pytest.raises(UserError, match=r"different class folders \(only in train/: truck\); give both the same"):
        load_dataset(str(tmp_path / "data"))


def test_two_processes_decoding_one_folder_at_once_both_get_it(tmp_path, monkeypatch):
    """Two loaders of one folder on a machine whose decode cache is empty (two test workers, two
    searches): each writes its own temporary file before moving it into place, so the one that
    finishes second neither fails nor leaves a mixed file. Here the second loader runs to the end
    while the first one is writing its file."""
    from PIL import Image

    from modulenet_jax import data

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    for c in ("cat", "dog"):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (4, 4), (40, 80, 120)).save(tmp_path / "data" / c / "0.png")
    savez, other = np.savez, []

    def meanwhile(path, **arrays):
        savez(path, **arrays)
        if not other:  # the other process, from its decode to its rename, while this one has written
            other.append(None)
            other[0] = load_image_folder(tmp_path / "data")

    monkeypatch.setattr(data.np, "savez", meanwhile)
    images, labels, classes = load_image_folder(tmp_path / "data")
    assert classes == other[0][2] == ["cat", "dog"] and labels.tolist() == [0, 1]
    assert np.array_equal(images, other[0][0])
    monkeypatch.setattr(data.np, "savez", savez)
    cached = load_image_folder(tmp_path / "data")
    assert np.array_equal(cached[0], images) and not list((tmp_path / "cache").glob("*.tmp*"))


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
    with pytest.raises(ValueError, match="drawn at random; pass its seed"):  # no silent seed
        protocol_split(ds, "train", 30)
    assert len(protocol_split(ds, "train")) == len(ds.train)  # the whole split: nothing random
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
    (tmp_path / "data" / ".ipynb_checkpoints").mkdir()  # a hidden folder is no class
    images, labels, classes = load_image_folder(tmp_path / "data")
    assert classes == ["a_cls", "b_cls"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images[4, 0, 0].tolist() == [200, 1, 0]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    again, _, _ = load_image_folder(tmp_path / "data")
    np.testing.assert_array_equal(again, images)
    # the same folder named relative to another directory, and through a link: no second decode
    monkeypatch.chdir(tmp_path / "data" / "a_cls")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    for other in (Path("..") / ".." / "data", tmp_path / "link"):
        np.testing.assert_array_equal(load_image_folder(other)[0], images)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # a changed file is decoded again
    Image.new("RGB", (4, 4), (7, 7, 7)).save(tmp_path / "data" / "b_cls" / "1.png")
    assert load_image_folder(tmp_path / "data")[0][4, 0, 0].tolist() == [7, 7, 7]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


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


def _image_folder(root, classes=("a_cls", "b_cls"), size=4, per_class=2):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (i, 0, 0)).save(root / c / f"{i}.png")
    return root


def test_an_image_that_cannot_be_decoded_is_named(tmp_path, monkeypatch):
    """A file that is not an image, and a JPEG cut short: each is named, with the fix."""
    from PIL import Image

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "junk")
    (folder / "a_cls" / "2.jpg").write_text("not an image")
    with pytest.raises(UserError, match=r"^1 image file of .*junk cannot be decoded: .*a_cls/2.jpg \(cannot identify "
                                        r"image file .*\); replace or delete them$"):
        load_image_folder(folder)
    folder = _image_folder(tmp_path / "cut", size=32)
    for name in ("2.jpg", "3.jpg"):
        Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "b_cls" / name)
        data = (folder / "b_cls" / name).read_bytes()
        (folder / "b_cls" / name).write_bytes(data[:len(data) // 2])
    with pytest.raises(UserError, match=r"^2 image files of .*cut cannot be decoded: .*b_cls/2.jpg \(.*\); "
                                        r".*b_cls/3.jpg \(.*\); replace or delete them$"):
        load_image_folder(folder)
    assert not (tmp_path / "cache").exists()  # nothing half-decoded is cached


def test_images_of_another_size_are_named(tmp_path, monkeypatch):
    from PIL import Image

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "data")
    Image.new("RGB", (6, 4)).save(folder / "b_cls" / "9.png")
    with pytest.raises(UserError, match=r"b_cls/9.png is 6x4 px, .*a_cls/0.png is 4x4 px; resize the images"):
        load_image_folder(folder)


def test_datasets_know_their_classes_and_bundles_keep_them(tmp_path, monkeypatch):
    from modulenet_jax.data import load_bundle, save_bundle

    monkeypatch.setenv("MODULENET_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        _image_folder(tmp_path / "data" / split, ("cat", "dog"))
    ds = load_dataset(str(tmp_path / "data"))
    assert ds.classes == ("cat", "dog") and ds.num_classes == 2
    assert load_bundle(save_bundle(ds, tmp_path / "b.npz", None, seed=0)).classes == ("cat", "dog")
    assert load_bundle(save_bundle(_dataset(), tmp_path / "c.npz", None, seed=0)).classes is None


def test_splits_that_do_not_fit_are_refused():
    ds = _dataset()
    with pytest.raises(UserError, match=r"labels must be in 0..9, got 1..10"):
        Split(ds.test.images, ds.test.labels + 1, 10, "t")
    with pytest.raises(UserError, match=r"images must be RGB, uint8 N x H x W x 3, got uint8 \(40, 8, 8, 1\)"):
        Split(ds.test.images[..., :1], ds.test.labels, 10, "t")
    with pytest.raises(UserError, match=r"train images are \(8, 8\) px, test images \(4, 4\) px"):
        Dataset("d", ds.train, Split(ds.test.images[:, :4, :4], ds.test.labels, 10, "t"))


def test_fit_split_takes_the_protocols_size_once():
    from modulenet_jax.data import fit_split
    from modulenet_jax.protocol import Protocol

    ds = _dataset()
    fit = fit_split(ds, Protocol(fit_images=30, stitch_images=10), seed=1)
    np.testing.assert_array_equal(fit.images, protocol_split(ds, "train", 30, seed=1).images)
    with pytest.raises(UserError, match="protocol.fit_images is 2048, but d has only 100 train images"):
        fit_split(ds, Protocol(), seed=0)


@pytest.mark.parametrize("split", ["val", "final"])
def test_a_bundle_of_one_test_split_keeps_its_positions(tmp_path, split):
    """A bundle of the validation or the final split only (what `prepare_device_bundle` writes)
    holds that split image for image, as its own split and as its test set, and the train subset
    drawn with its seed."""
    ds = _dataset()
    bundle = load_bundle(save_bundle(ds, tmp_path / "b.npz", 30, seed=1, test_split=split))
    for s in (split, "test"):
        np.testing.assert_array_equal(protocol_split(bundle, s).images, protocol_split(ds, split).images)
    np.testing.assert_array_equal(protocol_split(bundle, "train").images,
                                  protocol_split(ds, "train", 30, seed=1).images)
