"""Decontamination: normalised matching (as ingestion normalises), counts, empty lines."""

from __future__ import annotations

from tiny_models import FLORES

from bhashaflow.config import SourceConfig
from bhashaflow.core.records import Pair, RawRecord
from bhashaflow.data.decontamination import Decontaminator, normalize_sentence
from bhashaflow.data.flores import read_flores
from bhashaflow.data.validation import Validator



def decontaminate(
    pairs: Iterable[tuple[str, str]], eval_src: Iterable[str], eval_tgt: Iterable[str]
) -> tuple[list[tuple[str, str]], int]:
    """Drop pairs whose source or target appears in the evaluation set.

    Args:
        pairs: (source, target) training pairs.
        eval_src: evaluation source sentences.
        eval_tgt: evaluation reference sentences.

    Returns:
        The kept pairs in their order, and how many were removed.
    """
    decon = Decontaminator([*eval_src, *eval_tgt])
    kept = list(decon.filter(pairs))
    return kept, decon.removed


def test_decontaminate_normalises_and_counts() -> None:
    composed, decomposed = "caf\u00e9 au lait", "Cafe\u0301  au\tlait "
    pairs = [(decomposed, "x"), ("keep me", "fine"), ("y", "THE  END."), ("also kept", "ok")]
    kept, removed = decontaminate(pairs, eval_src=[composed], eval_tgt=["the end."])
    assert kept == [("keep me", "fine"), ("also kept", "ok")] and removed == 2
    assert normalize_sentence(decomposed) == composed
    decon = Decontaminator([""])
    assert list(decon.filter([("", "")])) == [("", "")] and decon.removed == 0  # empty lines leak nothing


def test_a_devtest_sentence_with_a_zero_width_space_is_caught_in_ingested_training_data() -> None:
    # FLORES-200 devtest: 17 Telugu sentences hold U+200B; ingestion removes it from the training copy.
    eng, tel = read_flores(FLORES, "eng_Latn", "devtest"), read_flores(FLORES, "tel_Telu", "devtest")
    leaked, unseen = tel[65], read_flores(FLORES, "tel_Telu", "dev")[0]
    assert leaked.count("\u200b") == 1 and leaked.startswith("రాబిన్ ఊతప్ప ఇన్నింగ్స్\u200bలో")
    validator = Validator(SourceConfig(name="web", kind="http", uri="http://x"), ["eng_Latn-tel_Telu"], 1000, 0.5)
    row = {"src": "Robin made 70 runs.", "tgt": leaked, "src_lang": "eng_Latn", "tgt_lang": "tel_Telu"}
    ingested = validator.check(RawRecord(position={}, ref="f:1", row=row))
    assert isinstance(ingested, Pair) and ingested.tgt == leaked.replace("\u200b", "")
    pairs = [
        (ingested.src, ingested.tgt),  # the copy as ingestion keeps it, without U+200B
        ("Robin made 70 runs.", leaked),  # as it came, with U+200B
        ("Robin made 70 runs.", " " + leaked.replace("\u200b", "\u200b\u200b") + "\n"),
        (leaked.replace("\u200b", ""), "a reversed direction"),
        ("Robin made 70 runs.", unseen),  # a sentence not in devtest: kept
    ]
    kept, removed = decontaminate(pairs, eval_src=eng, eval_tgt=tel)
    assert kept == [("Robin made 70 runs.", unseen)] and removed == 4
    # The other way round: a devtest sentence stripped of U+200B matches its training copy that holds one.
    decon = Decontaminator([leaked.replace("\u200b", "")])
    assert decon.is_contaminated("x", leaked) and not decon.is_contaminated("x", unseen)
