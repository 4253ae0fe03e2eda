"""Decontamination: normalised matching, counts, empty lines."""

from __future__ import annotations

from bhashaflow.data.decontamination import Decontaminator, decontaminate, normalize_sentence


def test_decontaminate_normalises_and_counts() -> None:
    composed, decomposed = "caf\u00e9 au lait", "Cafe\u0301  au\tlait "
    pairs = [(decomposed, "x"), ("keep me", "fine"), ("y", "THE  END."), ("also kept", "ok")]
    kept, removed = decontaminate(pairs, eval_src=[composed], eval_tgt=["the end."])
    assert kept == [("keep me", "fine"), ("also kept", "ok")] and removed == 2
    assert normalize_sentence(decomposed) == composed
    decon = Decontaminator([""])
    assert list(decon.filter([("", "")])) == [("", "")] and decon.removed == 0  # empty lines leak nothing
