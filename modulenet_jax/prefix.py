"""Which work many networks share: the schedule that computes each common module prefix once.

Networks that begin with the same modules have the same fitted state after them (the protocol
fits stitches and BatchNorm statistics in forward order, from the prefix's own activations),
so that state can be computed once and resumed from. Visited in lexicographic order of their
module sequences, consecutive networks share their longest common prefix, and the prefix two
networks share is the shortest of the common prefixes between them; so a network resumes from
the state at depth `resume[k]` of the one before it, and only the states at the depths some
later network resumes from need to be kept.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclasses.dataclass(frozen=True)
class PrefixSchedule:
    """`order`: the networks' indices in visiting order; per visit, `resume`: the depth whose
    state it starts from (0: from the input), and `keep`: the depths of its path whose states a
    later visit resumes from (every other state can be dropped once the visit is done)."""

    order: tuple[int, ...]
    resume: tuple[int, ...]
    keep: tuple[frozenset[int], ...]

    @classmethod
    def of(cls, sequences: Sequence[Sequence]) -> "PrefixSchedule":
        seqs = [tuple(s) for s in sequences]
        order = tuple(sorted(range(len(seqs)), key=lambda i: seqs[i]))
        resume = tuple([0] + [common_prefix(seqs[a], seqs[b]) for a, b in zip(order, order[1:])])
        keep = []
        for k in range(len(order)):
            depths, shortest = set(), None
            for j in range(k + 1, len(order)):
                shortest = resume[j] if shortest is None else min(shortest, resume[j])
                if shortest == 0:
                    break
                if resume[j] == shortest:  # visit j resumes from a state on visit k's path
                    depths.add(shortest)
            keep.append(frozenset(depths))
        return cls(order, resume, tuple(keep))

    def modules_computed(self, lengths: Sequence[int]) -> int:
        """How many module steps the schedule runs, for networks of these lengths (by index)."""
        return sum(lengths[i] - r for i, r in zip(self.order, self.resume))
