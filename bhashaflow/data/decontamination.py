"""Removal of training pairs that leak evaluation sentences.

A sentence matches after the one normaliser ingestion also keeps its texts in (`bhashaflow.data.text`: zero-width
spaces removed, NFC, whitespace collapsed), casefolded: an evaluation sentence and its ingested training copy
then compare equal. A pair is dropped when either of its sentences matches any evaluation sentence, source or
reference: a devtest reference seen as a training *source* (a reversed direction) leaks just as much as one seen
as a target.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from bhashaflow.data.text import normalize_text, normalize_texts


def normalize_sentence(text: str) -> str:
    """`text` as ingestion normalises it (`normalize_text`), casefolded."""
    return normalize_text(text).casefold()


class Decontaminator:
    """Streaming filter that drops pairs leaking evaluation sentences and counts them."""

    def __init__(self, eval_sentences: Iterable[str]) -> None:
        # One pass of the kernels over the evaluation set (`normalize_sentence` of each, at once).
        normalized = normalize_texts(pa.array(list(eval_sentences), pa.string())).to_pylist()
        self._seen = {s.casefold() for s in normalized}
        self._seen.discard("")
        self.removed = 0

    def is_contaminated(self, src: str, tgt: str) -> bool:
        return normalize_sentence(src) in self._seen or normalize_sentence(tgt) in self._seen

    def filter(self, pairs: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str]]:
        """Yield the clean pairs, counting the removed ones in `removed`."""
        for src, tgt in pairs:
            if self.is_contaminated(src, tgt):
                self.removed += 1
            else:
                yield src, tgt
