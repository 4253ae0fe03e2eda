"""The training stream of one direction: pairs from Parquet shards, decontaminated, held-out pairs left out, tokenized.

The order is a pure function of the seed: the shards and, from the second pass on, the pairs are shuffled
by a generator seeded with (seed, epoch), so a resumed run replays exactly what an uninterrupted one sees.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

from bhashaflow.config import PipelineConfig
from bhashaflow.data.batching import Example
from bhashaflow.data.decontamination import Decontaminator
from bhashaflow.data.flores import flores_file, read_flores
from bhashaflow.data.holdout import Holdout
from bhashaflow.modeling.encoding import encode_pair
from bhashaflow.modeling.loaded import LoadedModel
from bhashaflow.training import TrainingError


def iter_shard_pairs(
    shard_paths: list[str], src_lang: str, tgt_lang: str, storage_options: dict[str, Any] | None = None
) -> Iterator[tuple[str, str]]:
    """Stream (src, tgt) of one direction from Parquet shards (local paths or fsspec URLs), batch by batch."""
    import fsspec
    import pyarrow.parquet as pq

    for path in shard_paths:
        with fsspec.open(path, "rb", **(storage_options or {})) as fh:
            parquet = pq.ParquetFile(fh)
            for batch in parquet.iter_batches(batch_size=2048, columns=["src", "tgt", "src_lang", "tgt_lang"]):
                cols = batch.to_pydict()
                for src, tgt, sl, tl in zip(cols["src"], cols["tgt"], cols["src_lang"], cols["tgt_lang"], strict=True):
                    if sl == src_lang and tl == tgt_lang:
                        yield src, tgt


def eval_sentences(
    config: PipelineConfig, langs: tuple[str, str], eval_texts: dict[str, list[str]] | None
) -> list[str]:
    """What training must not see: `eval_texts`, or the whole configured evaluation split of both languages."""
    if eval_texts is not None:
        return [s for texts in eval_texts.values() for s in texts]
    # The whole split, not only the scored prefix, read through the FLORES reader (lines split on "\n" only).
    evaluation = config.evaluation
    sentences: list[str] = []
    for lang in langs:
        if flores_file(evaluation.flores_dir, lang, evaluation.split).is_file():
            sentences.extend(read_flores(evaluation.flores_dir, lang, evaluation.split))
    return sentences


_CACHE_PAIRS = 200_000  # corpora up to this many pairs are kept in memory after the first pass


class ExampleStream:
    """Endless tokenized examples: epoch after epoch over the shards in a seeded order, decontaminated."""

    def __init__(
        self,
        lm: LoadedModel,
        shard_paths: list[str],
        langs: tuple[str, str],
        decon: Decontaminator,
        max_length: int,
        seed: int,
        storage_options: dict[str, Any] | None,
        holdout: Holdout | None = None,
    ) -> None:
        self.lm, self.shard_paths, self.langs, self.decon = lm, shard_paths, langs, decon
        self.max_length, self.seed, self.storage_options = max_length, seed, storage_options
        self.holdout = holdout
        self.epoch = 0
        self._first_epoch_removed = 0

    @property
    def pairs_removed(self) -> int:
        """Pairs dropped as evaluation leaks in one pass over the data (later passes drop the same ones)."""
        return self.decon.removed if self.epoch == 0 else self._first_epoch_removed

    def __iter__(self) -> Iterator[Example]:
        cache: list[tuple[str, str]] | None = []  # a small corpus is kept after one pass instead of re-read
        while True:
            epoch = self.epoch
            if cache is not None and epoch > 0:
                pairs: Iterable[tuple[str, str]] = random.Random(self.seed * 1_000_003 + epoch).sample(
                    cache, len(cache)
                )
            else:
                paths = list(self.shard_paths)
                random.Random(self.seed * 1_000_003 + epoch).shuffle(paths)
                pairs = self.decon.filter(iter_shard_pairs(paths, *self.langs, storage_options=self.storage_options))
            kept = 0
            for src, tgt in pairs:
                if self.holdout is not None and (src, tgt) in self.holdout:
                    continue  # a validation pair: never trained on
                kept += 1
                if cache is not None and epoch == 0:
                    # Past _CACHE_PAIRS pairs the corpus is streamed from the shards on every pass.
                    if len(cache) < _CACHE_PAIRS:
                        cache.append((src, tgt))
                    else:
                        cache = None
                yield encode_pair(self.lm, src, tgt, *self.langs, self.max_length)
            if epoch == 0:
                self._first_epoch_removed = self.decon.removed
            if kept == 0:
                held = f", {len(self.holdout.pairs)} held out for validation" if self.holdout is not None else ""
                raise TrainingError(
                    f"no training pairs for {self.langs[0]}-{self.langs[1]} in {len(self.shard_paths)} shard(s)"
                    f" ({self.decon.removed} removed as evaluation leaks{held})"
                )
            self.epoch += 1
