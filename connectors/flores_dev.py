"""The `flores` source: aligned pairs of FLORES-200's dev split, read with `bhashaflow.data.flores`.

Only `dev` is ever read here; `devtest` is the evaluation set.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bhashaflow.config import FloresSource
from bhashaflow.core.languages import parse_direction
from bhashaflow.core.records import Position, RawRecord, SourceError
from bhashaflow.data.flores import flores_file, read_flores

__all__ = ["FloresConnector"]


class FloresConnector:
    """Aligned FLORES-200 dev pairs for each configured direction, in config order, line by line.

    Rows are `{"src", "tgt", "src_lang", "tgt_lang"}`; the position is `{"direction_index", "line"}`,
    `line` counting the lines of that direction already yielded.
    """

    def __init__(self, source: FloresSource, directions: list[str]) -> None:
        """Args:
        source: a `flores` source whose uri is the FLORES-200 directory.
        directions: `src-tgt` directions to yield, in this order.
        """
        self.name = source.name
        self.flores_dir = Path(source.uri).expanduser()
        self.split = source.split or "dev"
        if self.split != "dev":
            # config refuses this already; a connector built by hand must not leak the evaluation set either
            raise SourceError(
                f"source {self.name!r}: flores split {self.split!r} is not allowed for training; "
                "devtest is the evaluation set, train on 'dev' only"
            )
        self.directions = list(directions)
        self._pairs: list[tuple[str, str]] = []
        for direction in self.directions:
            try:
                self._pairs.append(parse_direction(direction))
            except ValueError as exc:
                raise SourceError(f"source {self.name!r}: {exc}") from None

    def _aligned(self, index: int) -> tuple[list[str], list[str]]:
        src_lang, tgt_lang = self._pairs[index]
        try:
            src = read_flores(self.flores_dir, src_lang, self.split)
            tgt = read_flores(self.flores_dir, tgt_lang, self.split)
        except SourceError as exc:
            raise SourceError(f"source {self.name!r}: {exc}") from None
        if len(src) != len(tgt):
            raise SourceError(
                f"source {self.name!r}: {flores_file(self.flores_dir, src_lang, self.split)} has {len(src)} lines "
                f"but {flores_file(self.flores_dir, tgt_lang, self.split)} has {len(tgt)}; FLORES files must align"
            )
        return src, tgt

    def _start(self, start: Position | None) -> tuple[int, int]:
        if start is None:
            return 0, 0
        index, line = start.get("direction_index"), start.get("line")
        if (
            not isinstance(index, int)
            or not isinstance(line, int)
            or not 0 <= index <= len(self.directions)
            or line < 0
        ):
            raise SourceError(f"source {self.name!r}: position {start!r} does not belong to this FLORES source")
        return index, line

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield aligned pairs after `start`; every direction's files are checked before the first one."""
        first_index, first_line = self._start(start)
        # Check every remaining direction up front, so a missing file fails the source before it yields anything.
        aligned = {i: self._aligned(i) for i in range(first_index, len(self.directions))}
        for index in range(first_index, len(self.directions)):
            src_lang, tgt_lang = self._pairs[index]
            direction = self.directions[index]
            src_lines, tgt_lines = aligned.pop(index)
            for line in range(first_line if index == first_index else 0, len(src_lines)):
                yield RawRecord(
                    position={"direction_index": index, "line": line + 1},
                    ref=f"flores:{self.split}:{direction}:{line + 1}",
                    row={"src": src_lines[line], "tgt": tgt_lines[line], "src_lang": src_lang, "tgt_lang": tgt_lang},
                )
