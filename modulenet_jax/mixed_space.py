"""A search space that mixes the modules of different families, with slots by reduction level.

`SearchSpace` (space.py) lines up the stages of sources that share a stage structure. Sources
of different families do not: a ResNet's stem already reduces by 4, a VGG's or a MobileNet's
by 2, and their stages split the resolutions differently. `MixedSpace` therefore orders
everything by *reduction level* (output stride), the one thing every family shares:

- the network starts with any source's stem, at that stem's reduction r0;
- at each level L (the distinct reductions of the sources' stems and blocks, ascending) it
  takes a run of blocks: at r0 only stride-1 blocks of that level; above r0 first an *entry*
  block (a strided block taking the previous level's reduction and resolution to L's), then
  stride-1 blocks of level L;
- a level above r0 with depth 0 ends the network (later levels are inactive); with
  `min_reduction` the network must reach at least that reduction.

Modules are only joined where reduction and resolution fit; the channel counts may differ,
which the evaluator's junction stitch (a 1x1 conv from C_out to C_in, fitted by least squares)
bridges. The sources must agree on the resolution at each reduction (an input size divisible
by the largest reduction does it); otherwise construction fails with the offending level.

Genotype (fixed length, integers): gene 0 picks the stem; then per level a depth gene and one
choice gene per position (`Gene.stage` is the level's number, 1 for the lowest reduction, so
NSGA-II's stage-wise crossover swaps whole levels). At the stem's level position p takes regular block `pos p`; at a
higher level position 0 takes an entry block, position p > 0 a regular one. A choice past the
size of its pool is repaired by taking it modulo the pool size; inactive genes are kept and
zeroed by `canonical`. The interface is `SearchSpace`'s, so NSGA-II, random search and the
runner work on it unchanged, and it decodes to the same `Architecture`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase, ModuleRecord
from modulenet_jax.space import Architecture, Gene, GenotypeError, IntegerGenotypes


@dataclasses.dataclass(frozen=True)
class Level:
    """One reduction level: its resolution and the blocks that can run there."""

    reduction: int
    resolution: int
    entries: tuple[ModuleRecord, ...]   # strided blocks from the previous level into this one
    regular: tuple[ModuleRecord, ...]   # stride-1 blocks at this level
    max_regular: int                    # most stride-1 blocks a network stacks at this level


@dataclasses.dataclass
class _Walk:
    genotype: list[int]
    modules: list[str]
    active: list[bool]
    position: dict[int, int]            # choice gene index -> index of its module in `modules`
    reached: int                        # the network's final reduction


class MixedSpace(IntegerGenotypes):
    """Genotype encoding, validity, repair, decoding and size of the mixed-family space."""

    kind = "mixed"

    def __init__(self, kb: KnowledgeBase, max_depth: int | None = None, sources: tuple[str, ...] | None = None,
                 min_reduction: int | None = None):
        self.kb = kb
        self.sources = self.checked_sources(kb, sources)
        if max_depth is not None and max_depth < 0:
            raise UserError(f"space.max_depth must be >= 0, got {max_depth}")
        records = [r for s in self.sources for r in kb.modules_of(s)]
        self.stems = [r for r in records if r.spec.kind == "stem"]
        blocks = [r for r in records if r.spec.kind == "block"]
        self.resolution = _resolutions(self.stems + blocks)
        reductions = sorted(self.resolution)
        self.levels = tuple(self._level(i, reductions, blocks, max_depth) for i in range(len(reductions)))
        self.min_reduction = min_reduction
        for stem in self.stems:
            if min_reduction is not None and self._count(stem) == 0:
                raise UserError(f"no network from stem {stem.id} reaches reduction {min_reduction}; lower "
                                f"space.min_reduction")
        self.genes = self._genes()
        self._depth_gene = [i for i, g in enumerate(self.genes) if g.kind == "depth"]

    def _level(self, i, reductions, blocks, max_depth) -> Level:
        red = reductions[i]
        prev = reductions[i - 1] if i else None
        entries = tuple(b for b in blocks if b.spec.reduction == red and b.spec.stride > 1
                        and red // b.spec.stride == prev and b.input_resolution == self.resolution[prev])
        regular = tuple(b for b in blocks if b.spec.reduction == red and b.spec.stride == 1)
        deepest = max((sum(1 for b in regular if b.source == s) for s in self.sources), default=0)
        return Level(red, self.resolution[red], entries, regular,
                     deepest if max_depth is None else min(deepest, max_depth))

    # -- encoding -------------------------------------------------------------------------

    def _genes(self) -> tuple[Gene, ...]:
        genes = [Gene("stem", "stem", 0, len(self.stems) - 1)]
        stem_reductions = {s.spec.reduction for s in self.stems}
        for li, lv in enumerate(self.levels):
            positions = lv.max_regular + (1 if lv.entries else 0)
            genes.append(Gene(f"r{lv.reduction}.depth", "depth", 0, positions, li + 1, 0))
            for p in range(positions):
                sizes = [len(lv.regular)] if p else [len(lv.entries)]
                if p == 0 and lv.reduction in stem_reductions:
                    sizes.append(len(lv.regular))
                genes.append(Gene(f"r{lv.reduction}.pos{p}", "choice", 0, max(max(sizes) - 1, 0), li + 1, p))
        return tuple(genes)

    def _pools(self, level: Level, r0: int) -> list[tuple[ModuleRecord, ...]]:
        """The candidate pool of each position of `level` for a network whose stem is at r0."""
        if level.reduction < r0:
            return []
        if level.reduction == r0:
            return [level.regular] * level.max_regular if level.regular else []
        return [level.entries] + [level.regular] * level.max_regular if level.entries else []

    def _must_continue(self, reached: int) -> bool:
        return self.min_reduction is not None and reached < self.min_reduction

    def _walk(self, genotype, repair: bool) -> _Walk:
        """Follows a genotype through the levels; repairs it, or raises `GenotypeError`."""
        g = [int(v) for v in genotype]
        stem = self.stems[g[0]]
        r0 = stem.spec.reduction
        w = _Walk(g, [stem.id], [True] + [False] * (len(g) - 1), {}, r0)
        ended = False
        for lv, di in zip(self.levels, self._depth_gene):
            if ended or lv.reduction < r0:
                continue
            pools = self._pools(lv, r0)
            depth = g[di]
            if depth > len(pools):
                if not repair:
                    raise GenotypeError(f"gene {self.genes[di].name} = {depth}: at most {len(pools)} blocks "
                                        f"fit at reduction {lv.reduction} after stem {stem.id}")
                depth = len(pools)
            if depth == 0 and lv.reduction > r0 and pools and self._must_continue(w.reached):
                if not repair:
                    raise GenotypeError(f"gene {self.genes[di].name} = 0 ends the network at reduction "
                                        f"{w.reached}, below min_reduction {self.min_reduction}")
                depth = 1
            g[di] = depth
            w.active[di] = True
            for p in range(depth):
                gi = di + 1 + p
                if g[gi] >= len(pools[p]):
                    if not repair:
                        raise GenotypeError(f"gene {self.genes[gi].name} = {g[gi]}: only {len(pools[p])} "
                                            f"candidates after stem {stem.id}")
                    g[gi] %= len(pools[p])
                w.active[gi] = True
                w.position[gi] = len(w.modules)
                w.modules.append(pools[p][g[gi]].id)
            if lv.reduction > r0:
                ended = depth == 0
                w.reached = w.reached if ended else lv.reduction
        if self._must_continue(w.reached):
            raise GenotypeError(f"the network ends at reduction {w.reached}, below min_reduction {self.min_reduction}")
        return w

    def validate(self, genotype) -> None:
        """Raises `GenotypeError` saying which gene is outside the space."""
        self._walk(self.check_vector(genotype), repair=False)

    def repair(self, genotype) -> np.ndarray:
        """The nearest valid genotype: genes clipped to their bounds, depths cut to what fits
        after the chosen stem (raised to 1 where `min_reduction` is not reached yet), choices
        taken modulo the size of their pool."""
        return np.asarray(self._walk(self.clipped(genotype), repair=True).genotype, np.int64)

    def canonical(self, genotype) -> tuple[int, ...]:
        """The genotype with inactive genes zeroed: the key of the network it decodes to."""
        self.validate(genotype)
        w = self._walk(genotype, repair=False)
        return tuple(v if a else 0 for v, a in zip(w.genotype, w.active))

    def decode(self, genotype) -> Architecture:
        self.validate(genotype)
        return Architecture(tuple(self._walk(genotype, repair=False).modules))

    def encode_source(self, source: str) -> np.ndarray:
        """The genotype of a source model itself; a `UserError` if the space cannot hold it."""
        self.check_source(source)
        recs = [r for r in self.kb.modules_of(source) if r.spec.kind != "head"]
        stem, blocks = recs[0], recs[1:]
        g = np.zeros(self.num_genes, np.int64)
        g[0] = self.stems.index(stem)
        r0 = stem.spec.reduction
        placed = 0
        for lv, di in zip(self.levels, self._depth_gene):
            here = [b for b in blocks if b.spec.reduction == lv.reduction]
            pools = self._pools(lv, r0)
            if len(here) > len(pools):
                raise UserError(f"{source} has {len(here)} blocks at reduction {lv.reduction}, the space "
                                f"takes at most {len(pools)} there (space.max_depth)")
            g[di] = len(here)
            for p, b in enumerate(here):
                if b not in pools[p]:
                    raise UserError(f"{b.id} cannot be position {p} at reduction {lv.reduction}")
                g[di + 1 + p] = pools[p].index(b)
            placed += len(here)
        if placed != len(blocks):
            raise UserError(f"{source}: some blocks are at reductions the space does not have")
        try:
            self.validate(g)
        except GenotypeError as e:
            raise UserError(f"{source} is not a network of this space: {e}") from None
        if self.decode(g).modules != tuple(r.id for r in recs):
            raise UserError(f"{source} does not decode back to itself (its blocks skip a level)")
        return g

    def continue_run_value(self, genotype, gene_index: int) -> int | None:
        """The value of choice gene `gene_index` that makes its block the one following its
        predecessor's block in that block's own source (no junction), or None where there is
        none (an inactive gene, the source's last block, or a block that does not fit here)."""
        gene = self.genes[gene_index]
        if gene.kind != "choice":
            return None
        w = self._walk(self.repair(genotype), repair=False)
        if gene_index not in w.position:
            return None
        prev = self.kb.record(w.modules[w.position[gene_index] - 1])
        chain = [r for r in self.kb.modules_of(prev.source) if r.spec.kind != "head"]
        i = chain.index(prev) + 1
        nxt = chain[i] if i < len(chain) else None
        r0 = self.stems[int(w.genotype[0])].spec.reduction
        pool = self._pools(self.levels[gene.stage - 1], r0)[gene.position]
        return pool.index(nxt) if nxt in pool else None

    # -- size -----------------------------------------------------------------------------

    @staticmethod
    def _runs(lv: Level) -> int:
        """Sequences of 0..max_regular stride-1 blocks at a level."""
        return sum(len(lv.regular) ** d for d in range(lv.max_regular + 1)) if lv.regular else 1

    def _count(self, stem: ModuleRecord) -> int:
        """Distinct networks that start with `stem`."""
        r0 = stem.spec.reduction
        above = [lv for lv in self.levels if lv.reduction > r0]

        def completions(k: int, reached: int) -> int:
            stop = 0 if self._must_continue(reached) else 1
            if k == len(above) or not above[k].entries:
                return stop
            lv = above[k]
            return stop + len(lv.entries) * self._runs(lv) * completions(k + 1, lv.reduction)

        here = [lv for lv in self.levels if lv.reduction == r0]
        return (self._runs(here[0]) if here else 1) * completions(0, r0)

    def size(self) -> int:
        """The number of distinct networks (canonical genotypes) in the space."""
        return sum(self._count(stem) for stem in self.stems)

    def describe(self) -> dict:
        return {"kind": self.kind, "sources": list(self.sources), "genes": self.num_genes, "size": self.size(),
                "stems": [s.id for s in self.stems], "min_reduction": self.min_reduction,
                "levels": {str(lv.reduction): {"resolution": lv.resolution, "entries": len(lv.entries),
                                               "regular": len(lv.regular), "max_regular": lv.max_regular}
                           for lv in self.levels}}


def _resolutions(records) -> dict[int, int]:
    """{reduction: output resolution}, refusing sources that disagree at some reduction."""
    seen: dict[int, dict[int, str]] = {}
    for r in records:
        seen.setdefault(r.spec.reduction, {}).setdefault(r.output_resolution, r.id)
    out = {}
    for red, by_res in sorted(seen.items()):
        if len(by_res) > 1:
            clash = ", ".join(f"{mid} gives {res}" for res, mid in sorted(by_res.items()))
            raise UserError(f"the sources disagree on the resolution at reduction {red} ({clash}); build the "
                             f"knowledge base at an input size divisible by {max(seen)}")
        out[red] = next(iter(by_res))
    return out
