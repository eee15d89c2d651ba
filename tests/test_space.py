"""Search space: genotype validity, repair, decoding, junctions and the exact size."""

import itertools
import re

import numpy as np
import pytest

from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase
from modulenet_jax.space import Architecture, GenotypeError, SearchSpace
from tests.conftest import random_models


@pytest.mark.parametrize("granularity", ["stage", "run", "block"])
def test_sources_encode_and_decode_to_themselves(tiny_kb, granularity):
    space = SearchSpace(tiny_kb, granularity)
    for source in tiny_kb.sources:
        g = space.encode_source(source)
        space.validate(g)
        arch = space.decode(g)
        assert arch == Architecture.of_source(tiny_kb, source)
        assert arch.junctions(tiny_kb) == (False,) * len(arch.modules)


def _enumerate(space):
    ranges = [range(g.low, g.high + 1) for g in space.genes]
    keys = set()
    for g in itertools.product(*ranges):
        if space.is_valid(g):
            keys.add(space.decode(g).modules)
    return keys


@pytest.mark.parametrize("granularity", ["stage", "run", "block"])
def test_size_counts_distinct_networks(tiny_kb, granularity):
    space = SearchSpace(tiny_kb, granularity)
    assert space.size() == len(_enumerate(space))


def test_block_space_rules(tiny_kb):
    space = SearchSpace(tiny_kb, "block")
    # stage 1: any of the 1 + 2 stage-1 blocks anywhere; stages 2, 3: downsampling block first
    assert [r.id for r in space.first_choices[2]] == ["cifar_resnet8/stage2.block0", "cifar_resnet14/stage2.block0"]
    assert [r.id for r in space.other_choices[2]] == ["cifar_resnet14/stage2.block1"]
    assert len(space.first_choices[1]) == 3 and len(space.other_choices[1]) == 3
    assert space.depth_range == {1: (1, 2), 2: (1, 2), 3: (1, 2)}
    # stem, then per stage: depth + 2 positions
    assert space.num_genes == 1 + 3 * 3
    for _ in range(20):
        arch = space.decode(space.sample(np.random.default_rng(_)))
        for mid in arch.modules:
            rec = tiny_kb.record(mid)
            assert rec.spec.kind in ("stem", "block")


def test_validate_names_the_bad_gene(tiny_kb):
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    bad = g.copy()
    bad[1] = 5
    with pytest.raises(GenotypeError, match=r"stage1.depth = 5 is outside \[1, 2\]"):
        space.validate(bad)
    shallow = g.copy()
    shallow[3] = 0  # stage1.pos1 -> cifar_resnet8, which has one stage-1 block
    with pytest.raises(GenotypeError, match="stage1.pos1 names cifar_resnet8, which has only 1 blocks"):
        space.validate(shallow)
    with pytest.raises(GenotypeError, match="vector of 10"):
        space.validate(g[:-1])
    repaired = space.repair(shallow)
    assert space.is_valid(repaired) and repaired[3] == 1


def test_repair_takes_the_next_source_in_order_that_is_deep_enough():
    """Three sources (1, 2 and 3 stage-1 blocks): a second stage-1 position naming the 1-block
    source, after a first that names it too, becomes the next source in order (the 2-block one),
    not the one before it in a wrap-around (the 3-block one)."""
    space = SearchSpace(KnowledgeBase.build(random_models((8, 14, 20))), "run")
    assert space.sources == ("cifar_resnet8", "cifar_resnet14", "cifar_resnet20")
    g = space.encode_source("cifar_resnet20")
    pos0, pos1 = (next(i for i, gene in enumerate(space.genes) if gene.name == name) for name in ("stage1.pos0",
                                                                                                  "stage1.pos1"))
    g[pos0] = g[pos1] = 0
    repaired = space.repair(g)
    assert repaired[pos0] == 0 and repaired[pos1] == 1 and space.is_valid(repaired)


def test_repair_clips_and_canonical_zeroes_inactive_genes(tiny_kb):
    space = SearchSpace(tiny_kb, "block")
    g = space.repair(np.full(space.num_genes, 99))
    assert np.array_equal(g, space.upper)
    g = space.encode_source("cifar_resnet14")
    g[1] = 1  # stage-1 depth 1: position 1 becomes inactive
    g2 = g.copy()
    g2[3] = 0 if g[3] else 1
    assert space.canonical(g) == space.canonical(g2)
    assert space.decode(g) == space.decode(g2)


def test_junctions_are_where_the_predecessor_changes(tiny_kb):
    space = SearchSpace(tiny_kb, "run")
    g = space.encode_source("cifar_resnet14")
    g[0] = 0  # stem of cifar_resnet8
    arch = space.decode(g)
    j = arch.junctions(tiny_kb)
    assert j[0] is False and j[1] is True and sum(j) == 1
    assert arch.modules[0] == "cifar_resnet8/stem"


def test_continue_run_value_continues_the_source(tiny_kb):
    space = SearchSpace(tiny_kb, "block")
    g = space.encode_source("cifar_resnet14")
    pos1 = [i for i, gene in enumerate(space.genes) if gene.name == "stage1.pos1"][0]
    g[pos1] = 0
    v = space.continue_run_value(g, pos1)
    g[pos1] = v
    assert space.decode(g) == Architecture.of_source(tiny_kb, "cifar_resnet14")


@pytest.mark.parametrize("granularity", ["run", "block"])
def test_every_gene_of_a_source_continues_its_run(tiny_kb, granularity):
    """A source has no junction, so each of its active block genes, the first of a stage
    included, is the value that continues the run; a truncated stage leaves the next stage's
    first block with nothing to continue."""
    space = SearchSpace(tiny_kb, granularity)
    for source in space.sources:
        g = space.encode_source(source)
        active = [i for i, gene in enumerate(space.genes)
                  if gene.kind == "choice" and gene.position < g[[j for j, d in enumerate(space.genes)
                                                                   if d.kind == "depth" and d.stage == gene.stage][0]]]
        assert [space.continue_run_value(g, i) for i in active] == [int(g[i]) for i in active]
    g = space.encode_source("cifar_resnet14")
    stage1_depth = [i for i, gene in enumerate(space.genes) if gene.name == "stage1.depth"][0]
    g[stage1_depth] = 1
    stage2_first = [i for i, gene in enumerate(space.genes) if gene.name == "stage2.pos0"][0]
    assert space.continue_run_value(g, stage2_first) is None


def test_unknown_source_and_granularity(tiny_kb):
    with pytest.raises(ValueError, match="granularity"):
        SearchSpace(tiny_kb, "layers")
    with pytest.raises(ValueError, match="unknown source"):
        SearchSpace(tiny_kb, "run", sources=("resnet9000",))


@pytest.mark.parametrize("modules, message", [
    ("cifar_resnet8/stem", "an Architecture is a sequence of module ids"),
    ((), "an Architecture needs at least a stem"),
    (("cifar_resnet8/stem", "cifar_resnet8/stage9.block0"), "no module 'cifar_resnet8/stage9.block0' in the knowledge "
                                                            "base; its modules are listed by `modulenet kb show`"),
    (("cifar_resnet8/stage1.block0",), "an architecture starts with a stem, not cifar_resnet8/stage1.block0 (block)"),
    (("cifar_resnet8/stem", "cifar_resnet8/head"), "cifar_resnet8/head is a head; after the stem"),
    (("cifar_resnet8/stem", "cifar_resnet14/stage3.block1"), "cifar_resnet14/stage3.block1 takes 8 px activations but "
                                                            "cifar_resnet8/stem gives 32 px"),
])
def test_an_architecture_built_by_hand_is_checked_before_anything_runs(tiny_kb, tiny_dataset, modules, message):
    from modulenet_jax.data import fit_split
    from modulenet_jax.evaluate import Evaluator
    from modulenet_jax.protocol import Protocol

    protocol = Protocol(fit_images=8, stitch_images=8)
    evaluator = Evaluator(tiny_kb, protocol, fit_split(tiny_dataset, protocol, seed=0))
    with pytest.raises(UserError, match=re.escape(message)):
        evaluator.check(Architecture(modules))

