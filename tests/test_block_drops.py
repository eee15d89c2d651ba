"""`benchmarks/block_drops.py`: which blocks it drops and which combinations it scores."""

import types

from modulenet_jax.benchmarks import block_drops
from modulenet_jax.data import protocol_split
from modulenet_jax.evaluate import Evaluator
from modulenet_jax.protocol import Protocol
from modulenet_jax.space import Architecture


def _run(kb, dataset):
    fit = protocol_split(dataset, "train", 128, seed=0)
    return types.SimpleNamespace(kb=kb, evaluator=Evaluator(kb, Protocol(fit_images=128, stitch_images=64), fit))


def test_every_block_but_a_stages_downsampling_one_is_droppable(tiny_kb, tiny_dataset):
    run = _run(tiny_kb, tiny_dataset)
    assert [m.split("/")[1] for m in block_drops.droppable(run, "cifar_resnet14")] == [
        "stage1.block0", "stage1.block1", "stage2.block1", "stage3.block1"]
    dropped = block_drops.without(run, "cifar_resnet14", ["cifar_resnet14/stage2.block1"])
    assert len(dropped.modules) == len(Architecture.of_source(tiny_kb, "cifar_resnet14").modules) - 1
    assert dropped.num_junctions(tiny_kb) == 1  # stage3.block0 now follows stage2.block0: a stitch


def test_combinations_take_the_best_drops_per_stage_within_the_window(tiny_kb, tiny_dataset):
    run = _run(tiny_kb, tiny_dataset)
    base = "cifar_resnet14"
    singles = {f"{base}/stage1.block0": 10, f"{base}/stage1.block1": 20, f"{base}/stage2.block1": 5,
               f"{base}/stage3.block1": 7}
    s1, s2, s3 = (f"{base}/{m}" for m in ("stage1.block1", "stage2.block1", "stage3.block1"))
    # one drop per stage (stage1.block1, the least harmful there), sets of two or more, in the base's order
    assert list(block_drops.combinations(run, base, singles, 1, 0, 10 ** 9)) == [[s1, s2], [s1, s3], [s2, s3],
                                                                                [s1, s2, s3]]
    triple = run.evaluator.cost(block_drops.without(run, base, [s1, s2, s3]))[0]
    assert list(block_drops.combinations(run, base, singles, 1, triple, triple)) == [[s1, s2, s3]]
    assert list(block_drops.combinations(run, base, singles, 1, 0, triple - 1)) == []
