"""Known contamination: base models that were trained on an evaluation set, so their scores on it measure memory.

A score on a set the base saw in training is no yardstick: the base's own score is inflated, and a candidate
that beats it may only have forgotten less. `bhashaflow check`, the run's report and its Prefect artifact say so
when the configured base saw the configured evaluation split.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Contamination:
    """Base models (fnmatch patterns on the hub id) that saw these splits of an evaluation set in training."""

    hub_ids: tuple[str, ...]
    eval_set: str
    splits: tuple[str, ...]
    source: str  # where it is documented

    def message(self, base_model: str, split: str) -> str:
        seen = " and ".join(self.splits)
        return (
            f"base model {base_model!r} was trained on {self.eval_set} {seen} ({self.source}): its {split} "
            "scores measure memory, not translation; compare candidates with each other, not with the base"
        )


KNOWN_CONTAMINATION: tuple[Contamination, ...] = (
    Contamination(
        hub_ids=("bigscience/bloomz*", "bigscience/mt0-*"),
        eval_set="FLORES-200",
        splits=("dev", "devtest"),
        source="xP3 includes FLORES-200 dev and devtest; bigscience-workshop/xmtf issue 22",
    ),
)


def contamination_for(base_model: str, eval_set: str, split: str) -> Contamination | None:
    """The known contamination of `base_model` on `split` of `eval_set`, if any.

    Args:
        base_model: the configured hub id (a local folder's name counts too: `.../bloomz-560m`).
        eval_set: the evaluation set's name, e.g. "FLORES-200".
        split: the split scored, e.g. "devtest".
    """
    name = base_model.rstrip("/").lower()
    for known in KNOWN_CONTAMINATION:
        if known.eval_set.lower() != eval_set.lower() or split not in known.splits:
            continue
        if any(
            fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.rsplit("/", 1)[-1], p.rsplit("/", 1)[-1])
            for p in known.hub_ids
        ):
            return known
    return None
