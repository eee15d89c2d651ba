"""End-to-end training: augmentation on the device, seeded; a run killed after an epoch and
resumed from its checkpoint ends bit-identical to an uninterrupted one."""

import json
import math
import shutil

import jax
import numpy as np
import pytest

from modulenet_jax import train
from modulenet_jax.data import protocol_split
from modulenet_jax.errors import UserError
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.network import evaluate, from_fitted
from modulenet_jax.protocol import Protocol
from modulenet_jax.space import SearchSpace

SETTINGS = train.Settings(epochs=3, images=64, batch_size=16, learning_rate=0.05, warmup=0.2, clip_norm=5.0)


def test_augmentation_crops_and_flips_deterministically_per_seed():
    images = np.random.default_rng(0).integers(1, 256, (64, 8, 8, 3)).astype(np.uint8)  # no zero pixel
    out = np.asarray(train.augment(jax.random.key(1), images))
    assert np.array_equal(out, np.asarray(train.augment(jax.random.key(1), images)))
    assert not np.array_equal(out, np.asarray(train.augment(jax.random.key(2), images)))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    seen = set()
    for original, augmented in zip(padded, out):
        found = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                 if np.array_equal(augmented, (original[dy:dy + 8, dx:dx + 8][:, ::-1] if flip
                                               else original[dy:dy + 8, dx:dx + 8]))]
        assert found, "every output is a crop of the padded image, flipped or not"
        seen.update(found)
    assert {f for _, _, f in seen} == {False, True}
    assert len({(dy, dx) for dy, dx, _ in seen}) > 10 and any((dy, dx) != (4, 4) for dy, dx, _ in seen)


@pytest.fixture(scope="module")
def network(tiny_kb, tiny_dataset):
    """A tiny network with junctions, fitted by the protocol, as `(model, variables)`."""
    protocol = Protocol(fit_images=64, stitch_images=32, batch_size=32, head_steps=10)
    evaluator = Evaluator(tiny_kb, protocol, protocol_split(tiny_dataset, "train", 64, seed=0))
    space, rng = SearchSpace(tiny_kb, "block"), np.random.default_rng(5)
    arch = space.decode(space.sample(rng))
    while arch.num_junctions(tiny_kb) < 2:
        arch = space.decode(space.sample(rng))
    models = tuple(tiny_kb.source(tiny_kb.record(m).source).model for m in arch.modules)
    return from_fitted(evaluator.fit(arch), models)


class Killed(Exception):
    pass


def _leaves(variables):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(variables)]


def _without_seconds(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_killed_and_resumed_equals_uninterrupted(network, tiny_dataset, tmp_path, optimizer):
    model, variables = network
    settings = train.Settings(**{**SETTINGS.to_json(), "optimizer": optimizer})
    kw = {"evaluation": tiny_dataset.test, "eval_batch_size": 32}
    full, metrics = train.fit(model, variables, tiny_dataset.train, settings, checkpoints=tmp_path / "a",
                              metrics_path=tmp_path / "a.jsonl", log=lambda m: None, **kw)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]

    def die_after_epoch_1(message):
        if message.startswith("epoch 1/"):
            raise Killed

    with pytest.raises(Killed):
        train.fit(model, variables, tiny_dataset.train, settings, checkpoints=tmp_path / "b",
                  metrics_path=tmp_path / "b.jsonl", log=die_after_epoch_1, **kw)
    logs = []
    resumed, _ = train.fit(model, variables, tiny_dataset.train, settings, checkpoints=tmp_path / "b",
                           metrics_path=tmp_path / "b.jsonl", log=logs.append, **kw)
    assert logs[0] == "resuming after epoch 1 of 3"
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(full), _leaves(resumed)))
    assert _without_seconds(tmp_path / "a.jsonl") == _without_seconds(tmp_path / "b.jsonl")
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(full), _leaves(variables)))
    assert evaluate(model, full, tiny_dataset.test, 32) == (metrics[-1]["eval_correct"], len(tiny_dataset.test))


def test_a_damaged_checkpoint_is_one_error_that_says_how_to_go_on(network, tiny_dataset, tmp_path):
    model, variables = network

    def die_after_epoch_1(message):
        if message.startswith("epoch 1/"):
            raise Killed

    with pytest.raises(Killed):
        train.fit(model, variables, tiny_dataset.train, SETTINGS, checkpoints=tmp_path / "c", log=die_after_epoch_1)
    for f in (tmp_path / "c" / "1").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(UserError, match=r"c/1/default cannot be read \(.*cut short or changed; delete .*c/1 to resume from "
                                        r"the epoch saved before it \(or from the start\)$"):
        train.fit(model, variables, tiny_dataset.train, SETTINGS, checkpoints=tmp_path / "c", log=lambda m: None)


def test_training_fits_the_train_images(network, tiny_dataset):
    """Ten epochs on 64 images: the train loss falls and running statistics move."""
    model, variables = network
    settings = train.Settings(epochs=10, images=64, batch_size=16, learning_rate=0.05, augment=False)
    tuned, metrics = train.fit(model, variables, tiny_dataset.train, settings, log=lambda m: None)
    assert metrics[-1]["train_loss"] < 0.5 * metrics[0]["train_loss"]
    old, new = variables["batch_stats"]["module1"], tuned["batch_stats"]["module1"]
    assert not np.array_equal(np.asarray(old["bn1"]["mean"]), np.asarray(new["bn1"]["mean"]))


def test_optimizer_schedule_warms_up_then_decays_to_zero():
    """8 steps, a quarter of them warm-up: 0, 0.05, then from 0.1 a cosine that reaches 0 at step 8."""
    settings = train.Settings(learning_rate=0.1, warmup=0.25, optimizer="sgd", momentum=0.0, weight_decay=0.0)
    tx = train.optimizer(settings, 8)
    params = {"w": np.ones(())}
    state, rates = tx.init(params), []
    for _ in range(9):
        updates, state = tx.update({"w": np.ones(())}, state, params)
        rates.append(-float(updates["w"]))
    assert rates[0] == 0.0 and rates[1] == pytest.approx(0.05) and rates[2] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates[2:8], rates[3:8]))
    # step s >= 2: 0.1 * (1 + cos(pi * (s - 2) / 6)) / 2, zero from step 8 on
    assert rates[7] == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 6)))
    assert rates[8] == pytest.approx(0.0, abs=1e-9)


def test_resuming_before_a_deleted_checkpoint_cuts_the_metrics_back(network, tiny_dataset, tmp_path):
    """What the damaged-checkpoint error says to do: delete it and resume from the epoch before.
    The deleted epoch's metrics are dropped and written again: the file ends as an uninterrupted run's."""
    model, variables = network
    train.fit(model, variables, tiny_dataset.train, SETTINGS, checkpoints=tmp_path / "a",
              metrics_path=tmp_path / "a.jsonl", log=lambda m: None)

    def die_after_epoch_2(message):
        if message.startswith("epoch 2/"):
            raise Killed

    with pytest.raises(Killed):
        train.fit(model, variables, tiny_dataset.train, SETTINGS, checkpoints=tmp_path / "b",
                  metrics_path=tmp_path / "b.jsonl", log=die_after_epoch_2)
    shutil.rmtree(tmp_path / "b" / "2")
    _, metrics = train.fit(model, variables, tiny_dataset.train, SETTINGS, checkpoints=tmp_path / "b",
                           metrics_path=tmp_path / "b.jsonl", log=lambda m: None)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert _without_seconds(tmp_path / "a.jsonl") == _without_seconds(tmp_path / "b.jsonl")


def test_every_epoch_draws_a_new_order():
    s = train.Settings(batch_size=10, images=50, seed=3)
    a, b = train.epoch_order(s, 0, 100), train.epoch_order(s, 1, 100)
    assert len(set(a.tolist())) == len(a) == 50 and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, train.epoch_order(s, 0, 100))  # seeded: a resumed run draws it again
