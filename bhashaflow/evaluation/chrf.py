"""chrF / chrF++ of translations against references, and how many translations are in the target's script."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sacrebleu.metrics import CHRF

from bhashaflow.core import fsio
from bhashaflow.core.languages import LANGUAGES, in_script

SAMPLE_SIZE = 10  # sentences shown in scores.json so a reader can eyeball the outputs


@dataclass(frozen=True)
class ChrfScore:
    """Corpus-level chrF and chrF++ (0-100), and the share of hypotheses in the target script (0-1)."""

    chrf: float
    chrf_pp: float
    script_valid: float
    n: int
    signature_chrf: str
    signature_chrf_pp: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def script_valid_share(hypotheses: list[str], tgt_lang: str, min_fraction: float = 0.5) -> float:
    """Share of `hypotheses` written mostly in `tgt_lang`'s script; an empty hypothesis is invalid.

    chrF alone hides a model that answers in the wrong script (it scores near zero, like a bad
    translation); this number names that failure.
    """
    if not hypotheses:
        return 0.0
    valid = sum(1 for h in hypotheses if h.strip() and in_script(h, tgt_lang, min_fraction))
    return valid / len(hypotheses)


def score_chrf(hypotheses: list[str], references: list[str], tgt_lang: str) -> ChrfScore:
    """Corpus chrF and chrF++ with sacrebleu's defaults (one reference per sentence).

    Args:
        hypotheses: System translations, one per reference.
        references: Reference translations.
        tgt_lang: FLORES-200 code of the target language, for the script check.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("nothing to score: no hypotheses")
    if tgt_lang not in LANGUAGES:
        raise ValueError(f"unknown FLORES-200 language code {tgt_lang!r}")
    chrf, chrf_pp = CHRF(), CHRF(word_order=2)
    # Corpus level: character n-gram statistics are summed over all sentences before the F-score,
    # which is what published FLORES chrF numbers mean (not a mean of sentence scores).
    plain = chrf.corpus_score(hypotheses, [references])
    plus = chrf_pp.corpus_score(hypotheses, [references])
    return ChrfScore(
        chrf=float(plain.score),
        chrf_pp=float(plus.score),
        script_valid=script_valid_share(hypotheses, tgt_lang),
        n=len(hypotheses),
        signature_chrf=str(chrf.get_signature()),
        signature_chrf_pp=str(chrf_pp.get_signature()),
    )


def _one_line(text: str) -> str:
    # hypotheses.txt is line-aligned with the references; a generated newline must not shift it.
    return " ".join(text.splitlines())


def write_scores(
    out_dir: str,
    score: ChrfScore,
    hypotheses: list[str],
    references: list[str],
    sources: list[str],
    storage_options: dict[str, Any] | None = None,
) -> str:
    """Write `scores.json` (scores and a few samples) and `hypotheses.txt` (one per line) into `out_dir`.

    Args:
        out_dir: Directory path or fsspec URL.
        score: The scores to record.
        hypotheses: System translations, line-aligned with `references` and `sources`.
        references: Reference translations.
        sources: Source sentences.
        storage_options: Options for remote filesystems.

    Returns:
        The URI of `scores.json`.
    """
    if not len(hypotheses) == len(references) == len(sources):
        raise ValueError(f"{len(sources)} sources, {len(references)} references, {len(hypotheses)} hypotheses")
    samples = [
        {"source": s, "reference": r, "hypothesis": h}
        for s, r, h in zip(sources[:SAMPLE_SIZE], references[:SAMPLE_SIZE], hypotheses[:SAMPLE_SIZE], strict=True)
    ]
    text = "".join(_one_line(h) + "\n" for h in hypotheses)
    # hypotheses first: scores.json is what readers look for, so it appears only beside its hypotheses.
    fsio.write_bytes_atomic(fsio.join(out_dir, "hypotheses.txt"), text.encode("utf-8"), storage_options)
    scores_uri = fsio.join(out_dir, "scores.json")
    fsio.write_json_atomic(scores_uri, {**score.to_dict(), "samples": samples}, storage_options)
    return scores_uri
