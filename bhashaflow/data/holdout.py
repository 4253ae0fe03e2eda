"""The validation slice: pairs of a direction held out of training, chosen by a seeded hash of each pair.

A pair's key is a hash of (seed, source, target) read as a number in [0, 1): a `share` holds out the pairs
whose key falls below it, a count of `pairs` the pairs with the smallest keys, and `max_pairs` caps either.
The choice depends on nothing but the pairs themselves, so the same pairs are held out whatever the shard
order, and a resumed run (or one on another machine) holds out exactly the same ones. Memory is bounded by
the slice, never the corpus.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from bhashaflow.config import ValidationConfig

Pair = tuple[str, str]


def holdout_rank(seed: int, src: str, tgt: str) -> float:
    """A pair's place in [0, 1) for this seed."""
    digest = hashlib.blake2b(f"{seed}\0{src}\0{tgt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Holdout:
    """The held-out pairs of one direction, and how many pairs the direction had in all."""

    pairs: list[Pair]  # in key order
    total: int  # pairs seen (after decontamination), held out or not
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_members", frozenset(self.pairs))

    def __contains__(self, pair: object) -> bool:
        return pair in self._members  # type: ignore[attr-defined]

    @property
    def training_pairs(self) -> int:
        return self.total - len(self.pairs)


def select_holdout(pairs: Iterable[Pair], config: ValidationConfig) -> Holdout:
    """Choose the validation slice among `pairs` (one pass; memory bounded by the slice).

    Args:
        pairs: every (source, target) of the direction, already decontaminated.
        config: share or pairs, max_pairs, seed.
    """
    limit = min(config.pairs or config.max_pairs, config.max_pairs)
    kept: list[tuple[float, Pair]] = []  # a max-heap by key (negated): the `limit` smallest keys so far
    total = 0
    seen: set[Pair] = set()
    for pair in pairs:
        total += 1
        key = holdout_rank(config.seed, *pair)
        if config.share is not None and key >= config.share:
            continue
        if pair in seen:
            continue  # a repeated pair is held out once (and trained on never)
        if len(kept) < limit:
            heapq.heappush(kept, (-key, pair))
            seen.add(pair)
        elif -kept[0][0] > key:
            _, dropped = heapq.heapreplace(kept, (-key, pair))
            seen.discard(dropped)
            seen.add(pair)
    ordered = [pair for _, pair in sorted(kept, key=lambda item: -item[0])]
    return Holdout(pairs=ordered, total=total, seed=config.seed)
