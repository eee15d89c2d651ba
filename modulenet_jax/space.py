"""The macro search space over a knowledge base, and its fixed-length integer genotypes.

A network is a stem from any source, then for each stage s a depth and a block per position
taken from stage s of any source. Position 0 of a stage takes a *transition* block (one that
changes stride or channels, like the first block of CIFAR ResNet stages 2 and 3) when the
sources' stage has one, the other positions take shape-preserving blocks. Granularity:

- `stage`: each stage is taken whole from one source (genes: stem, one source per stage);
- `run`: position p of a stage takes block p of the source its gene names, so consecutive
  positions from one source are a contiguous run of that source's blocks with no junction
  inside it (genes: stem, per stage a depth and a source per position);
- `block`: position p takes any fitting block of the stage (genes: stem, per stage a depth and
  a block per position).

Genes past a stage's depth are inactive: they are kept (NSGA-II may bring them back) but
`canonical` zeroes them, so two genotypes that decode to the same network share a key.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from modulenet_jax.errors import UserError
from modulenet_jax.knowledge import KnowledgeBase, ModuleRecord

GRANULARITIES = ("stage", "run", "block")


class GenotypeError(UserError):
    """A genotype outside the search space."""


@dataclasses.dataclass(frozen=True)
class Gene:
    """One integer gene: its meaning and inclusive bounds."""

    name: str
    kind: str  # "stem" | "depth" | "choice"
    low: int
    high: int
    stage: int = 0
    position: int = 0


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A decoded network: the ids (`source/module`, as `modulenet kb show` lists them) of its
    stem and blocks in forward order; the head is fitted. Built by hand it is checked against
    a knowledge base with `check` (the evaluators do) before anything runs."""

    modules: tuple[str, ...]

    def __post_init__(self):
        modules = self.modules
        if isinstance(modules, (str, bytes)) or not all(isinstance(m, str) and "/" in m for m in modules):
            raise UserError(f"an Architecture is a sequence of module ids like 'cifar_resnet20/stem', got {modules!r}")
        if not modules:
            raise UserError("an Architecture needs at least a stem")
        object.__setattr__(self, "modules", tuple(modules))

    def check(self, kb: KnowledgeBase, stitch: bool = True) -> None:
        """A `UserError` naming the first module that does not fit: an id the knowledge base does
        not have, a first module that is not a stem or a later one that is not a block, a block
        given activations of another resolution than it takes, or of other channels where no
        stitch (`stitch` False) bridges them."""
        try:
            records = [kb.record(m) for m in self.modules]
        except KeyError as e:
            raise UserError(f"{e.args[0]}; its modules are listed by `modulenet kb show` (e.g. "
                            f"{kb.records[0].id!r})") from None
        if records[0].spec.kind != "stem":
            raise UserError(f"an architecture starts with a stem, not {records[0].id} ({records[0].spec.kind})")
        for prev, rec in zip(records, records[1:]):
            if rec.spec.kind != "block":
                raise UserError(f"{rec.id} is a {rec.spec.kind}; after the stem an architecture has only blocks "
                                f"(the head is fitted)")
            if prev.output_resolution != rec.input_resolution:
                raise UserError(f"{rec.id} takes {rec.input_resolution} px activations but {prev.id} gives "
                                f"{prev.output_resolution} px; choose a block of the same stage")
            if prev.spec.out_channels != rec.spec.in_channels and not stitch:
                raise UserError(f"{rec.id} takes {rec.spec.in_channels} channels but {prev.id} gives "
                                f"{prev.spec.out_channels}, and protocol.stitch is off; turn stitches on")

    def junctions(self, kb: KnowledgeBase) -> tuple[bool, ...]:
        """Per module: does its input differ from the input it had in its own source model?

        That is, is the module before it here not the module before it in its source. The
        stem reads the image and is never a junction.
        """
        out = [False]
        for prev, mod in zip(self.modules, self.modules[1:]):
            out.append(kb.predecessor(mod) != prev)
        return tuple(out)

    def num_junctions(self, kb: KnowledgeBase) -> int:
        return sum(self.junctions(kb))

    @classmethod
    def of_source(cls, kb: KnowledgeBase, source: str) -> "Architecture":
        """A source model itself: its stem and all its blocks, in order."""
        return cls(tuple(r.id for r in kb.modules_of(source) if r.spec.kind != "head"))

    def describe(self) -> str:
        """A compact readable form, e.g. `r20:stem | r56:1.0 r56:1.1 | ...`."""
        parts, stage = [], None
        for mid in self.modules:
            source, name = mid.split("/", 1)
            short = source.replace("cifar_resnet", "r")
            if name == "stem":
                parts.append(f"{short}:stem")
                continue
            s, b = name.replace("stage", "").split(".block")
            if s != stage:
                parts.append("|")
                stage = s
            parts.append(f"{short}:{s}.{b}")
        return " ".join(parts)


class IntegerGenotypes:
    """What every search space shares given its `genes` and `sources`: bounds, the vector check,
    clipping, sampling and the source checks (`validate`, `repair` and `encode_source` are the
    space's own)."""

    genes: tuple[Gene, ...]
    sources: tuple[str, ...]

    @property
    def num_genes(self) -> int:
        return len(self.genes)

    @property
    def lower(self) -> np.ndarray:
        return np.array([g.low for g in self.genes], np.int64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([g.high for g in self.genes], np.int64)

    def check_vector(self, genotype) -> np.ndarray:
        """Raises `GenotypeError` unless `genotype` is a vector of integers within the genes' bounds."""
        g = np.asarray(genotype)
        if g.ndim != 1 or len(g) != self.num_genes:
            raise GenotypeError(f"genotype must be a vector of {self.num_genes} integers, got shape {g.shape}")
        if not np.issubdtype(g.dtype, np.integer):
            if not np.all(np.equal(np.mod(g, 1), 0)):
                raise GenotypeError("genotype must hold integers")
        for gene, v in zip(self.genes, g):
            if not gene.low <= v <= gene.high:
                raise GenotypeError(f"gene {gene.name} = {int(v)} is outside [{gene.low}, {gene.high}]")
        return g

    def clipped(self, genotype) -> np.ndarray:
        """Each gene rounded to an integer and clipped to its bounds (where `repair` starts)."""
        return np.clip(np.rint(np.asarray(genotype, np.float64)), self.lower, self.upper).astype(np.int64)

    @staticmethod
    def checked_sources(kb: KnowledgeBase, sources: tuple[str, ...] | None) -> tuple[str, ...]:
        """`space.sources` (None: all of the knowledge base's); one it lacks is a `UserError`."""
        sources = tuple(sources or kb.sources)
        for s in sources:
            if s not in kb.sources:
                raise UserError(f"unknown source {s!r} in space.sources; the knowledge base has "
                                f"{', '.join(kb.sources)}")
        return sources

    def check_source(self, source: str) -> None:
        """A `UserError` unless `source` is one of this space's sources (`encode_source`)."""
        if source not in self.sources:
            raise UserError(f"{source!r} is not a source of this space; its sources: {', '.join(self.sources)}")

    def is_valid(self, genotype) -> bool:
        try:
            self.validate(genotype)
        except GenotypeError:
            return False
        return True

    def fits_source(self, source: str) -> bool:
        """Is the source model itself a network of this space?"""
        try:
            self.encode_source(source)
        except UserError:
            return False
        return True

    def sample(self, rng: np.random.Generator, continue_run_prob: float = 0.0) -> np.ndarray:
        """A random genotype: each gene uniform in its bounds, then repaired. With
        `continue_run_prob` > 0, each block gene (in order) instead continues its predecessor's
        run with that probability where it can: fewer junctions, as a source's own runs have.
        At 0 the draw is uniform and takes exactly the random numbers it always took."""
        g = self.repair(rng.integers(self.lower, self.upper + 1))
        if continue_run_prob <= 0:
            return g
        keep = rng.random(self.num_genes) < continue_run_prob
        for i in np.flatnonzero(keep):
            value = self.continue_run_value(g, i)
            if value is not None:
                g[i] = value
        return self.repair(g)


def is_transition(r: ModuleRecord) -> bool:
    """Does the module change the resolution or the width? (Only such a block opens a stage.)"""
    return r.spec.stride > 1 or r.spec.in_channels != r.spec.out_channels


class SearchSpace(IntegerGenotypes):
    """Genotype encoding, validity, repair, decoding and size of the macro space."""

    def __init__(self, kb: KnowledgeBase, granularity: str = "block", min_depth: int = 1,
                 max_depth: int | None = None, sources: tuple[str, ...] | None = None):
        if granularity not in GRANULARITIES:
            raise UserError(f"space.granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.kb = kb
        self.granularity = granularity
        self.sources = self.checked_sources(kb, sources)
        self.stems = [r for s in self.sources for r in kb.modules_of(s) if r.spec.kind == "stem"]
        stages = sorted({r.spec.stage for s in self.sources for r in kb.modules_of(s) if r.spec.kind == "block"})
        if stages != list(range(1, len(stages) + 1)):
            raise UserError(f"the sources have stages {stages}, not 1..S; choose sources of one family "
                            f"(space.sources) or the mixed space (space.kind='mixed')")
        self.num_stages = len(stages)
        # blocks[s][src] = the stage-s blocks of source src, in order
        self.blocks = {s: {src: [r for r in kb.modules_of(src) if r.spec.kind == "block" and r.spec.stage == s]
                           for src in self.sources} for s in stages}
        self.first_choices, self.other_choices = {}, {}
        for s in stages:
            all_blocks = [r for src in self.sources for r in self.blocks[s][src]]
            transition = [r for r in all_blocks if is_transition(r)]
            regular = [r for r in all_blocks if not is_transition(r)]
            self.first_choices[s] = transition or regular
            self.other_choices[s] = regular
        self.depth_range = {}
        for s in stages:
            deepest = max(len(b) for b in self.blocks[s].values())
            hi = deepest if max_depth is None else min(deepest, max_depth)
            lo = max(1, min(min_depth, hi))
            if not self.other_choices[s]:
                hi = lo = 1
            self.depth_range[s] = (lo, hi)
        self.genes = self._genes()

    # -- encoding -------------------------------------------------------------------------

    def _genes(self) -> tuple[Gene, ...]:
        genes = [Gene("stem", "stem", 0, len(self.stems) - 1)]
        nsrc = len(self.sources) - 1
        for s in range(1, self.num_stages + 1):
            lo, hi = self.depth_range[s]
            if self.granularity == "stage":
                genes.append(Gene(f"stage{s}", "choice", 0, nsrc, s, 0))
                continue
            genes.append(Gene(f"stage{s}.depth", "depth", lo, hi, s, 0))
            for p in range(hi):
                if self.granularity == "run":
                    high = nsrc
                else:
                    high = len(self.first_choices[s] if p == 0 else self.other_choices[s]) - 1
                genes.append(Gene(f"stage{s}.pos{p}", "choice", 0, high, s, p))
        return tuple(genes)

    def _stage_genes(self, genotype):
        """Yields (stage, depth, [choice values]) for each stage."""
        i = 1
        for s in range(1, self.num_stages + 1):
            if self.granularity == "stage":
                src = self.sources[genotype[i]]
                yield s, len(self.blocks[s][src]), [genotype[i]]
                i += 1
                continue
            depth = int(genotype[i])
            hi = self.depth_range[s][1]
            yield s, depth, [int(v) for v in genotype[i + 1:i + 1 + hi]]
            i += 1 + hi

    def validate(self, genotype) -> None:
        """Raises `GenotypeError` saying which gene is outside the space."""
        g = self.check_vector(genotype)
        if self.granularity == "run":
            for s, depth, srcs in self._stage_genes(g):
                for p in range(depth):
                    src = self.sources[srcs[p]]
                    if len(self.blocks[s][src]) <= p:
                        raise GenotypeError(
                            f"gene stage{s}.pos{p} names {src}, which has only "
                            f"{len(self.blocks[s][src])} blocks in stage {s}")

    def repair(self, genotype) -> np.ndarray:
        """The nearest valid genotype: genes clipped to their bounds; in `run` granularity a
        position naming a source too shallow for it continues the previous position's source
        when that one is deep enough, else takes the next source (in order) that is."""
        g = self.clipped(genotype)
        if self.granularity == "run":
            i = 1
            for s in range(1, self.num_stages + 1):
                depth, hi = int(g[i]), self.depth_range[s][1]
                for p in range(depth):
                    k = i + 1 + p
                    if len(self.blocks[s][self.sources[g[k]]]) > p:
                        continue
                    if p > 0 and len(self.blocks[s][self.sources[g[k - 1]]]) > p:
                        g[k] = g[k - 1]
                        continue
                    for step in range(1, len(self.sources)):
                        cand = (g[k] + step) % len(self.sources)
                        if len(self.blocks[s][self.sources[cand]]) > p:
                            g[k] = cand
                            break
                i += 1 + hi
        return g

    def canonical(self, genotype) -> tuple[int, ...]:
        """The genotype with inactive genes zeroed: the key of the network it decodes to."""
        self.validate(genotype)
        g = [int(v) for v in genotype]
        if self.granularity == "stage":
            return tuple(g)
        i = 1
        for s in range(1, self.num_stages + 1):
            depth, hi = g[i], self.depth_range[s][1]
            for p in range(depth, hi):
                g[i + 1 + p] = 0
            i += 1 + hi
        return tuple(g)

    def decode(self, genotype) -> Architecture:
        """The network a valid genotype stands for (README: the genotype layout)."""
        self.validate(genotype)
        mods = [self.stems[int(genotype[0])].id]
        for s, depth, choices in self._stage_genes(genotype):
            if self.granularity == "stage":
                mods += [r.id for r in self.blocks[s][self.sources[choices[0]]]]
                continue
            for p in range(depth):
                if self.granularity == "run":
                    mods.append(self.blocks[s][self.sources[choices[p]]][p].id)
                else:
                    pool = self.first_choices[s] if p == 0 else self.other_choices[s]
                    mods.append(pool[choices[p]].id)
        return Architecture(tuple(mods))

    def encode_source(self, source: str) -> np.ndarray:
        """The genotype of a source model itself (for seeding a search with the sources)."""
        self.check_source(source)
        g = [self.sources.index(source)]
        for s in range(1, self.num_stages + 1):
            blocks = self.blocks[s][source]
            if self.granularity == "stage":
                g.append(self.sources.index(source))
                continue
            lo, hi = self.depth_range[s]
            if not lo <= len(blocks) <= hi:
                raise UserError(f"{source} has {len(blocks)} blocks in stage {s}, outside the depth range {lo}..{hi}; "
                                f"widen space.min_depth/space.max_depth")
            g.append(len(blocks))
            for p in range(hi):
                if p >= len(blocks):
                    g.append(0)
                elif self.granularity == "run":
                    g.append(self.sources.index(source))
                else:
                    pool = self.first_choices[s] if p == 0 else self.other_choices[s]
                    g.append(pool.index(blocks[p]))
        return np.array(g, np.int64)

    def continue_run_value(self, genotype, gene_index: int) -> int | None:
        """The value of gene `gene_index` that makes its block continue its predecessor's run
        (the block that follows the previous position's block in that block's own source), or
        None where there is none (a stage taken whole, a source's last block; at position 0 of a
        stage, unless the module before it, the stem or the previous stage's last block, is its
        source's last one before that stage)."""
        gene = self.genes[gene_index]
        if gene.kind != "choice" or self.granularity == "stage":
            return None
        if gene.position == 0:
            before = self._module_before_stage(self.repair(genotype), gene.stage)
            for i, rec in enumerate(self.first_choices[gene.stage]):
                if self.kb.predecessor(rec.id) == before.id:
                    return self.sources.index(rec.source) if self.granularity == "run" else i
            return None
        prev = int(genotype[gene_index - 1])
        if self.granularity == "run":
            src = self.sources[prev]
            return prev if len(self.blocks[gene.stage][src]) > gene.position else None
        pool_prev = self.first_choices[gene.stage] if gene.position == 1 else self.other_choices[gene.stage]
        rec = pool_prev[prev]
        nxt = self.blocks[gene.stage][rec.source]
        i = nxt.index(rec)
        if i + 1 >= len(nxt):
            return None
        return self.other_choices[gene.stage].index(nxt[i + 1])

    def _module_before_stage(self, genotype, stage: int) -> ModuleRecord:
        """The module that feeds position 0 of `stage` in a valid genotype: the stem, or the
        previous stage's last block (read off the decoded network)."""
        depths = [depth for _, depth, _ in self._stage_genes(genotype)]
        return self.kb.record(self.decode(genotype).modules[sum(depths[:stage - 1])])

    # -- size -----------------------------------------------------------------------------

    def size(self) -> int:
        """The number of distinct networks (canonical genotypes) in the space."""
        total = len(self.stems)
        for s in range(1, self.num_stages + 1):
            lo, hi = self.depth_range[s]
            if self.granularity == "stage":
                total *= len(self.sources)
            elif self.granularity == "block":
                total *= sum(len(self.first_choices[s]) * len(self.other_choices[s]) ** (d - 1)
                             for d in range(lo, hi + 1))
            else:
                deep = [sum(1 for src in self.sources if len(self.blocks[s][src]) > p) for p in range(hi)]
                total *= sum(math.prod(deep[:d]) for d in range(lo, hi + 1))
        return total

    def describe(self) -> dict:
        """The space in brief: granularity, sources, number of genes, size, depth ranges."""
        return {"granularity": self.granularity, "sources": list(self.sources),
                "genes": self.num_genes, "size": self.size(),
                "depths": {f"stage{s}": list(r) for s, r in self.depth_range.items()}}
