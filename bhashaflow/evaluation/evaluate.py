"""`evaluate_chrf`: translate a FLORES-200 split with one adapter (or none) and score it with chrF/chrF++."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bhashaflow.config import EvaluationConfig
from bhashaflow.core.languages import parse_direction
from bhashaflow.data.flores import read_flores
from bhashaflow.data.manifest import DataManifest
from bhashaflow.data.shards import iter_pairs
from bhashaflow.evaluation.chrf import ChrfScore, score_chrf, write_scores
from bhashaflow.modeling.generation import translate
from bhashaflow.modeling.loaded import LoadedModel


@dataclass(frozen=True)
class DirectionScores:
    """A direction's candidate scored beside the base and the promoted incumbent, with the same settings."""

    direction: str
    base: ChrfScore
    candidate: ChrfScore
    incumbent: ChrfScore | None = None
    incumbent_version: str | None = None
    # The held-out corrections yardstick (runs with an rl_logs source): the same three scored against them.
    base_corrections: ChrfScore | None = None
    candidate_corrections: ChrfScore | None = None
    incumbent_corrections: ChrfScore | None = None
    host: str = ""  # the machine that scored them (the pipeline's task fills it in)


@dataclass(frozen=True)
class AdapterScore:
    """One adapter of a direction scored alone: `promoted`, `none` (the bare base) or a version."""

    direction: str
    adapter: str
    version: str | None
    score: ChrfScore

    def to_dict(self) -> dict[str, Any]:
        """The `evaluate --json` row of the direction."""
        return {"adapter": self.adapter, "version": self.version, **self.score.to_dict()}


@dataclass(frozen=True)
class EvalSet:
    """Source sentences and references of one direction on a FLORES-200 split."""

    direction: str
    sources: list[str]
    references: list[str]


def load_eval_set(evaluation: EvaluationConfig, direction: str) -> EvalSet:
    """The configured FLORES-200 split for a direction, cut to `max_sentences`."""
    src_lang, tgt_lang = parse_direction(direction)
    sources = read_flores(evaluation.flores_dir, src_lang, evaluation.split)
    references = read_flores(evaluation.flores_dir, tgt_lang, evaluation.split)
    if evaluation.max_sentences is not None:
        sources, references = sources[: evaluation.max_sentences], references[: evaluation.max_sentences]
    return EvalSet(direction, sources, references)


def load_heldout_corrections(
    manifest: DataManifest, run_uri: str, direction: str, storage_options: dict[str, Any] | None = None
) -> EvalSet | None:
    """The direction's held-out corrections (source texts and the users' corrections as references), or None
    when the run has none: corrected episodes the ingestion kept out of training (an rl_logs `heldout_share`)."""
    uris = manifest.preference_uris(run_uri, direction, "heldout")
    pairs = [(p.src, p.tgt) for p in iter_pairs(uris, storage_options)]
    if not pairs:
        return None
    return EvalSet(direction, [src for src, _ in pairs], [tgt for _, tgt in pairs])


def evaluate_chrf(
    lm: LoadedModel,
    eval_set: EvalSet,
    evaluation: EvaluationConfig,
    *,
    adapter: str | None = None,
    out_dir: str | None = None,
    storage_options: dict[str, Any] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> ChrfScore:
    """Translate the evaluation set with `adapter` (None: the bare base) and score it.

    Args:
        lm: the loaded base, with the adapter attached under that name when one is given.
        eval_set: sources and references.
        evaluation: generation settings (batch size, beams, new tokens).
        adapter: name of the attached adapter to use, or None for the base alone.
        out_dir: where to write `scores.json` and `hypotheses.txt` (skipped when None).
        storage_options: fsspec options for `out_dir`.
        on_batch: called with (sentences translated, total) after each generate call.
    """
    src_lang, tgt_lang = parse_direction(eval_set.direction)
    hypotheses = translate(
        lm,
        eval_set.sources,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        adapter=adapter,
        batch_size=evaluation.batch_size,
        num_beams=evaluation.num_beams,
        max_new_tokens=evaluation.max_new_tokens,
        on_batch=on_batch,
    )
    score = score_chrf(hypotheses, eval_set.references, tgt_lang)
    if out_dir is not None:
        write_scores(out_dir, score, hypotheses, eval_set.references, eval_set.sources, storage_options)
    return score
