"""Checks before work: what fits passes, what does not is named (the command-line cases are in
test_bad_input.py)."""

import dataclasses

import numpy as np
import pytest

from modulenet_jax.checks import check_images, check_published, check_writable, classes_differ
from modulenet_jax.config import load_config
from modulenet_jax.data import Dataset, Split
from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.pretrained import CIFAR10_CLASSES
from modulenet_jax.search.runner import Run, final_table, search
from tests.conftest import random_models
from tests.test_runner import CONFIG, SMALL


def _data(size, classes=CIFAR10_CLASSES):
    split = Split(np.zeros((20, size, size, 3), np.uint8), np.arange(20, dtype=np.int32) % 10, 10, "d")
    return Dataset("d", split, split, classes=classes)


@pytest.fixture(scope="module")
def cifar_named_kb():
    names = {source: CIFAR10_CLASSES for source in ("cifar_resnet8", "cifar_resnet14")}
    return KnowledgeBase.build(random_models(), classes=names)


def test_images_of_another_size_pass_when_the_protocol_resizes_them_to_the_bases(tiny_kb):
    check_images(tiny_kb, _data(32), None)
    check_images(tiny_kb, _data(64), 32)
    with pytest.raises(UserError, match="d's images are 64x64 px, but the knowledge base's modules were cut"):
        check_images(tiny_kb, _data(64), None)


def test_as_published_needs_the_sources_classes_in_their_order(cifar_named_kb):
    check_published(cifar_named_kb, "cifar_resnet8", _data(32))
    assert classes_differ(cifar_named_kb, "cifar_resnet8", _data(32, CIFAR10_CLASSES[::-1])) == (
        f"cifar_resnet8 was trained on the classes {', '.join(CIFAR10_CLASSES)}; d has "
        f"{', '.join(CIFAR10_CLASSES[::-1])}")
    with pytest.raises(UserError, match="as-published accuracy needs the source's classes in its order"):
        check_published(cifar_named_kb, "cifar_resnet8", _data(32, CIFAR10_CLASSES[::-1]))
    assert classes_differ(cifar_named_kb, "cifar_resnet8", _data(32, None)) is None  # names unknown: counts agree


def test_a_writable_folder_passes_and_nothing_is_made(tmp_path):
    check_writable(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []


def test_other_classes_in_a_search_are_a_transfer_said_once(cifar_named_kb, tiny_dataset, tmp_path):
    """The protocol fits its own head, so a search may use other classes; it says so, and the final
    table has no as-published accuracy for those sources."""
    data = dataclasses.replace(tiny_dataset, classes=tuple("abcdefghij"))
    logs = []
    run = Run.from_config(load_config(CONFIG, SMALL + ["search.generations=1"]), kb=cifar_named_kb, dataset=data,
                          log=logs.append)
    assert len(logs) == 2 and all(line.startswith("note: cifar_resnet") and "the protocol fits a head for tiny's "
                                  "classes" in line for line in logs)
    rows = final_table(run, search(run, tmp_path, log=lambda m: None), tmp_path, log=lambda m: None)
    assert [r["published_final_accuracy"] for r in rows if r["kind"] == "source"] == [None, None]


def test_check_size_accepts_exactly_the_images_there_are(tiny_dataset):
    from modulenet_jax.checks import check_size
    from modulenet_jax.data import available
    from modulenet_jax.errors import UserError

    have = available(tiny_dataset, "val")
    check_size(tiny_dataset, "val", have, "data.val_size")
    with pytest.raises(UserError, match=f"data.val_size is {have + 1}"):
        check_size(tiny_dataset, "val", have + 1, "data.val_size")
