"""The `aligned` source: two plain-text files, one sentence a line, line N of one translating line N of the other.

This is how most Indic corpora are published: OPUS's Moses downloads (`OPUS-100.en-hi.en` / `.hi`), Samanantar
(`en-hi/train.en` / `train.hi`), AI4Bharat's BPCC (`eng_Latn-hin_Deva/train.eng_Latn` / `train.hin_Deva`).
The files are found in the `uri` folder by `pattern` (`{lang}` standing for each side's language suffix, ISO 639-1
or FLORES, mapped from `langs`) or named outright by `files`; they may be on the local disk, in S3, on a web
server or behind any fsspec URL, plain or gzip.

Both files are streamed in lock step, a chunk at a time, so a corpus of any size reads in bounded memory. A
length mismatch is an error naming both files and both line counts, found when the shorter one ends: never a
silent truncation. A line that cannot be decoded in either file is a record with that reason; blank lines are
rows too (the validator rejects them as empty), so line N stays line N.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from fnmatch import fnmatchcase
from typing import Any

from bhashaflow.config import AlignedFiles, AlignedSource, SourceRetryConfig
from bhashaflow.core.fsio import join
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import redact_uri
from bhashaflow.core.settings import Settings
from connectors.base import SourceError
from connectors.files import GLOB_CHARS, FileSource, FileStores, expand_uri, file_name
from connectors.formats import FormatError, iter_text_records, mark_last, sniff_gzip
from connectors.langtags import file_suffixes

DEFAULT_PATTERN = "*.{lang}"
_SIDES = ("src", "tgt")


def _is_absolute(name: str) -> bool:
    return "://" in name or name.startswith(("/", "~"))


def _matches(name: str, pattern: str) -> bool:
    """Whether a relative file name matches a glob, `*` and `?` never crossing a `/` (as in a shell)."""
    parts, wanted = name.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True))


class AlignedConnector(FileSource):
    """Rows `{"src", "tgt"}` from two aligned files (their languages are the source's `langs`).

    The position is `{"line": lines read of both files}` plus, for each plain (not gzip) file, the byte after
    that line (`src_offset`, `tgt_offset`), where a resumed read starts; a gzip file is read again from its start
    and the lines already handed out skipped. The last row adds `"done": True`. Refs are
    `train.en+train.hi:N`, N the line number in both files.
    """

    def __init__(self, source: AlignedSource, settings: Settings, retry: SourceRetryConfig | None = None) -> None:
        """Check the config; nothing is contacted until `iter_records`.

        Args:
            source: an `aligned` source: the folder `uri` with `pattern` (default `*.{lang}`) or `files`.
            settings: credentials and endpoints; resolves `${NAME}` in uris.
            retry: backoff, attempts before giving up with TransientSourceError, and the read timeout.
        """
        if source.langs is None:
            raise SourceError(f"source {source.name!r}: kind aligned needs 'langs'")
        super().__init__(source, settings, retry)
        self.langs = {"src": source.langs.src, "tgt": source.langs.tgt}
        self.folder = self.uri
        self.pattern = source.pattern or DEFAULT_PATTERN
        self.named = None if source.files is None else self._named_uris(source.files)

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield the aligned rows after `start` (from the first line when None), each with its resume position."""
        if start is not None and not isinstance(start.get("line"), int):
            raise SourceError(f"source {self.name!r}: {start!r} is not a position of an aligned source")
        with self.stores() as stores:
            pair: list[str] = []
            current = [redact_uri(self.folder)]  # what is being read, for the message when retries run out

            def read_from(position: Position | None) -> Iterator[RawRecord]:
                if not pair:
                    pair.extend(self._locate(stores))
                yield from self._read_pair(stores, pair[0], pair[1], position, current)

            yield from self.retried(read_from, start, what=lambda: f"source {self.name!r}: reading {current[0]}")

    def _named_uris(self, files: AlignedFiles) -> tuple[str, str]:
        """The URIs of files named outright: full paths and URLs as they are, other names under the folder."""
        src, tgt = (
            expand_uri(self.settings, name, self.name) if _is_absolute(name) else join(self.folder, name)
            for name in (files.src, files.tgt)
        )
        return src, tgt

    def _locate(self, stores: FileStores) -> tuple[str, str]:
        """The two files' URIs: named outright, or found by the pattern."""
        return self.named or (self._find(stores, "src"), self._find(stores, "tgt"))

    def _find(self, stores: FileStores, side: str) -> str:
        """The one file of `side` the pattern names, with any of its language's suffixes, plain or `.gz`."""
        code = self.langs[side]
        names = [self.pattern.replace("{lang}", suffix) for suffix in file_suffixes(code)]
        candidates = [name + gz for name in names for gz in ("", ".gz")]
        store = stores.for_uri(self.folder)
        if GLOB_CHARS & set(self.pattern):
            listed = store.list_files(self.folder, recursive="/" in self.pattern)
            found = [name for name in listed if any(_matches(name, c) for c in candidates)]
        else:
            found = [c for c in candidates if store.exists(join(self.folder, c))]
        shown = redact_uri(self.folder)
        if not found:
            raise SourceError(
                f"source {self.name!r}: no {side} file ({code}) in {shown} matches {self.pattern!r} "
                f"(looked for {', '.join(names)}, plain or .gz)"
            )
        if len(found) > 1:
            raise SourceError(
                f"source {self.name!r}: {len(found)} files in {shown} match {self.pattern!r} for {side} ({code}): "
                f"{', '.join(sorted(found))}; narrow the pattern or name the two files with files: {{src: ..., tgt: ...}}"
            )
        return join(self.folder, found[0])

    def _read_pair(
        self, stores: FileStores, src: str, tgt: str, position: Position | None, current: list[str]
    ) -> Iterator[RawRecord]:
        position = position or {}
        if position.get("done"):
            return
        line: int = position.get("line", 0)
        sides = [
            self._lines(stores, uri, line, position.get(f"{side}_offset"), current)
            for side, uri in zip(_SIDES, (src, tgt), strict=True)
        ]
        current[0] = f"{redact_uri(src)} and {redact_uri(tgt)}"
        try:
            yield from mark_last(self._lock_step(sides[0], sides[1], src, tgt, line))
        except FormatError as exc:
            raise SourceError(f"source {self.name!r}: {current[0]}: {exc}") from None
        finally:
            for lines in sides:  # both connections go back now, not when the garbage collector gets to them
                lines.close()

    def _lines(
        self, stores: FileStores, uri: str, line: int, offset: int | None, current: list[str]
    ) -> Generator[RawRecord]:
        """One file's lines after line `line`: from byte `offset` when known, else read again from the start.

        Nothing is read before the first line is asked for; a failure notes in `current` which file it was.
        """
        store, name = stores.for_uri(uri), file_name(uri)
        try:
            if offset:
                yield from iter_text_records(store.chunks(uri, offset), "text", name, line=line, offset=offset)
                return
            gzipped, chunks = sniff_gzip(store.chunks(uri, 0), named_gz=name.lower().endswith(".gz"))
            yield from iter_text_records(chunks, "text", name, offset=None if gzipped else 0, skip_to_line=line)
        except Exception:
            current[0] = redact_uri(uri)
            raise

    def _lock_step(
        self, src: Iterator[RawRecord], tgt: Iterator[RawRecord], src_uri: str, tgt_uri: str, line: int
    ) -> Iterator[RawRecord]:
        """Line N of both files as one row, until both end; one ending first is a length mismatch."""
        label = f"{file_name(src_uri)}+{file_name(tgt_uri)}"
        for a in src:
            b = next(tgt, None)
            if b is None:
                raise self._mismatch(src_uri, a.position["line"] + sum(1 for _ in src), tgt_uri, a.position["line"] - 1)
            line = a.position["line"]
            yield _row(a, b, line, f"{label}:{line}")
        b = next(tgt, None)
        if b is not None:
            raise self._mismatch(src_uri, b.position["line"] - 1, tgt_uri, b.position["line"] + sum(1 for _ in tgt))

    def _mismatch(self, src_uri: str, src_lines: int, tgt_uri: str, tgt_lines: int) -> SourceError:
        return SourceError(
            f"source {self.name!r}: {redact_uri(src_uri)} has {src_lines} lines but {redact_uri(tgt_uri)} has "
            f"{tgt_lines}; the two files of an aligned source must have as many lines, line N translating line N"
        )


def _row(a: RawRecord, b: RawRecord, line: int, ref: str) -> RawRecord:
    """Line `line` of both files as one record: a row of the two texts, or the first side's decoding error."""
    position: dict[str, Any] = {"line": line}
    for side, record in (("src", a), ("tgt", b)):
        if "offset" in record.position:
            position[f"{side}_offset"] = record.position["offset"]
    bad = a if a.row is None else b if b.row is None else None
    if bad is not None:
        return RawRecord(position, ref, error=f"{bad.ref}: {bad.error}", raw=bad.raw, reason=bad.reason)
    assert a.row is not None and b.row is not None
    return RawRecord(position, ref, {"src": a.row["text"], "tgt": b.row["text"]})
