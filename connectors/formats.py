"""Row parsing shared by the file-like connectors: JSONL, TSV, Parquet and plain text lines, gzip allowed.

Text formats are parsed from an iterable of raw byte chunks, so a connector can feed whatever its transport
gives (an HTTP body, an S3 object, a local file) without ever holding a whole file in memory.

Dirty lines become records, never a failed source: a line with bytes that are not UTF-8 is an unparsed
record with reason `invalid_utf8` (its preview shows those bytes as \\xNN escapes), any other unreadable line
one with reason `malformed`. A UTF-8 BOM at the start of a line is dropped. JSON lines are read leniently
where strict JSON refuses text the validator judges better: raw control characters inside strings and lone
surrogate escapes come through as they are, to be rejected (or, for a tab, normalised) by the validator.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Literal, cast

import orjson
from isal import isal_zlib  # ISA-L: inflates gzip two to three times faster than zlib, with zlib's interface

from bhashaflow.config import FileFormat
from bhashaflow.core.records import Position, RawRecord

TextFormat = Literal["jsonl", "tsv", "text"]  # text: one sentence a line, the sides of an aligned corpus
# isal's stubs type its error class as an instance.
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))

GZIP_MAGIC = b"\x1f\x8b"
RAW_PREVIEW_CHARS = 500  # how much of an unparsable line is kept for the quarantine
_PREVIEW_BYTES = RAW_PREVIEW_CHARS * 4  # enough bytes for that many characters of UTF-8
MAX_LINE_BYTES = 8 * 1024 * 1024  # a longer "line" is almost surely not line-delimited data; never buffer it whole
_DECOMPRESS_STEP = 1 << 20  # bound on decompressed bytes per step, so a gzip bomb cannot blow up memory
_BOM = b"\xef\xbb\xbf"

_SUFFIX_FORMATS: dict[str, FileFormat] = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".tsv": "tsv",
    ".txt": "tsv",
    ".parquet": "parquet",
}


class FormatError(ValueError):
    """A file that cannot be parsed at all (unknown format, corrupt gzip or Parquet, bad TSV header)."""


class TruncatedStreamError(IOError):
    """The stream ended before its data did (cut gzip member, body shorter than announced); worth a retry."""


def infer_format(name: str, declared: FileFormat | None = None) -> FileFormat:
    """The format of a file: `declared` when set, else from its name (a `.gz` suffix is looked through).

    Args:
        name: the file name or URL path.
        declared: the source's configured format, if any.
    """
    if declared is not None:
        return declared
    lowered = name.lower().rsplit("/", 1)[-1]
    if lowered.endswith(".gz"):
        lowered = lowered[:-3]
    for suffix, fmt in _SUFFIX_FORMATS.items():
        if lowered.endswith(suffix):
            return fmt
    raise FormatError(f"cannot infer the format of {name!r}; set the source's format to jsonl, tsv or parquet")


def gunzip_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a gzip stream chunk by chunk (multi-member files too).

    Raises TruncatedStreamError when the input stops inside a member, FormatError when it is not gzip.
    """
    decompressor = isal_zlib.decompressobj(wbits=31)
    member_has_input = False
    try:
        for chunk in chunks:
            while chunk:
                member_has_input = True
                out = decompressor.decompress(chunk, _DECOMPRESS_STEP)
                if out:
                    yield out
                while decompressor.unconsumed_tail:
                    out = decompressor.decompress(decompressor.unconsumed_tail, _DECOMPRESS_STEP)
                    if out:
                        yield out
                chunk = b""
                if decompressor.eof:
                    # Concatenated members are one valid gzip file; start over on what follows.
                    chunk = decompressor.unused_data
                    decompressor = isal_zlib.decompressobj(wbits=31)
                    member_has_input = False
    except _INFLATE_ERRORS as exc:
        raise FormatError(f"corrupt gzip data: {exc}") from None
    if member_has_input:
        raise TruncatedStreamError("gzip stream ended before its end-of-member marker")


def sniff_gzip(chunks: Iterable[bytes], *, named_gz: bool = False) -> tuple[bool, Iterator[bytes]]:
    """Look at the first bytes of a stream: (is it gzip?, the decompressed or plain chunks).

    Content is sniffed rather than trusting the name, so a `.gz` served with transport compression or a
    mislabelled file still reads right. But a `.gz` file (`named_gz`) shorter than the gzip magic is a stream
    cut short (TruncatedStreamError), not an empty text file: even an empty gzip file is 20 bytes.
    """
    it = iter(chunks)
    head = b""
    for chunk in it:
        head += chunk
        if len(head) >= len(GZIP_MAGIC):
            break
    if named_gz and len(head) < len(GZIP_MAGIC):
        raise TruncatedStreamError(f"a gzip file's body ended after {len(head)} bytes")
    stream = itertools.chain((head,), it) if head else it
    if head.startswith(GZIP_MAGIC):
        return True, gunzip_chunks(stream)
    return False, stream


def _preview(line: bytes) -> str:
    # Undecodable bytes show as \xNN, so the quarantine says which bytes they were.
    return line[:_PREVIEW_BYTES].decode("utf-8", "backslashreplace").rstrip("\r\n")[:RAW_PREVIEW_CHARS]


def _utf8_problem(line: bytes) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    return None


_UNREAD = object()
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _loads_lenient(line: bytes) -> Any:
    """A JSON line orjson refused, read again allowing raw control characters in strings and lone surrogate
    escapes (NaN and Infinity stay refused); `_UNREAD` when it is still not JSON."""
    try:
        return json.loads(line.decode("utf-8"), strict=False, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: deeply nested arrays
        return _UNREAD


def _json_type(value: Any) -> str:
    return {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), "null"
    )


def _parse_tsv_header(line: bytes) -> list[str]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"TSV header is not valid UTF-8 (byte {exc.start})") from None
    names = [name.strip() for name in text.lstrip("\ufeff").rstrip("\r").split("\t")]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise FormatError(f"TSV header {text.strip()!r} must name every column once")
    return names


def iter_text_records(
    chunks: Iterable[bytes],
    fmt: TextFormat,
    name: str,
    *,
    base: Position | None = None,
    line: int = 0,
    offset: int | None = 0,
    skip_to_line: int = 0,
    header: list[str] | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Iterator[RawRecord]:
    """Parse JSONL, TSV or plain text lines from raw byte chunks into records.

    Blank lines (and the TSV header) are consumed but yield nothing, except in plain text, where every line
    is a record `{"text": line}` (a blank one is an empty sentence that keeps two files' lines aligned).
    Each record's position holds `base`'s keys, `line` (physical lines consumed, header and blanks included),
    `offset` (byte offset after the record's line, only when `offset` is not None) and, for TSV, `header`.

    Args:
        chunks: the bytes, already decompressed, starting right after line `line`.
        fmt: jsonl, tsv or text.
        name: the file name shown in each record's `ref` ("pairs.jsonl:17").
        base: keys copied into every position (for example the file's key).
        line: lines consumed before the first byte of `chunks`.
        offset: byte offset of the first byte of `chunks` in the file; None to leave offsets out.
        skip_to_line: lines numbered up to this were handled before; they are read but not yielded.
        header: TSV column names when resuming after the header line.
        max_line_bytes: a longer line becomes a malformed record, whatever the chunking; it is never
            buffered beyond this plus one chunk.
    """
    parser: _LineParser
    if fmt == "jsonl":
        parser = _JsonlParser(name, base, max_line_bytes)
    elif fmt == "tsv":
        parser = _TsvParser(name, base, max_line_bytes, header)
    else:
        parser = _TextLineParser(name, base, max_line_bytes)
    return parser.records(_split_lines(chunks, max_line_bytes), line=line, offset=offset, skip_to_line=skip_to_line)


@dataclass(frozen=True, slots=True)
class _LoneLine:
    """A line the splitter hands over on its own: one over the size limit, or the last one, without a newline."""

    head: bytes  # the line; only its first bytes when it is over the limit (the rest was never buffered)
    size: int  # the line's length in bytes, its newline excluded
    consumed: int  # bytes it takes in the stream, its newline included


def _split_lines(chunks: Iterable[bytes], max_line_bytes: int) -> Iterator[list[bytes] | _LoneLine]:
    """Cut byte chunks into lines, without their newlines: per chunk, the list of lines it completes.

    A line that grows past `max_line_bytes` before its newline comes is dropped as it streams by, only its
    head kept, and handed over as a `_LoneLine`; so is a last line that the stream ends without a newline.
    """
    tail: list[bytes] = []  # pieces of the line still waiting for its newline
    tail_size = 0
    long_head: bytes | None = None  # start of an over-long line being discarded
    long_size = 0
    for chunk in chunks:
        if not chunk:
            continue
        if long_head is not None:
            newline = chunk.find(b"\n")
            if newline < 0:
                long_size += len(chunk)
                continue
            long_size += newline + 1
            yield _LoneLine(long_head, long_size - 1, long_size)
            long_head = None
            chunk = chunk[newline + 1 :]
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            # No newline in this chunk: collect pieces instead of re-concatenating a growing line.
            tail.append(chunk)
            tail_size += len(chunk)
            if tail_size > max_line_bytes:
                long_head, long_size = b"".join(tail)[:_PREVIEW_BYTES], tail_size
                tail, tail_size = [], 0
            continue
        if tail:
            tail.append(parts[0])
            parts[0] = b"".join(tail)
        last = parts.pop()
        tail, tail_size = ([last], len(last)) if last else ([], 0)
        yield parts
    if long_head is not None:
        yield _LoneLine(long_head, long_size, long_size)
    elif tail:
        # The last line has no newline; it is complete only because the stream ended cleanly.
        last = b"".join(tail)
        yield _LoneLine(last, len(last), len(last))


class _LineParser:
    """Numbers a text file's lines and turns each into a record; a subclass per format parses one line."""

    def __init__(self, name: str, base: Position | None, max_line_bytes: int) -> None:
        self.name = name
        self.extra: dict[str, Any] = dict(base or {})  # keys of every position besides line and offset
        self.max_line_bytes = max_line_bytes

    def records(
        self, lines: Iterator[list[bytes] | _LoneLine], *, line: int, offset: int | None, skip_to_line: int
    ) -> Iterator[RawRecord]:
        """The records of `lines`, the first numbered `line + 1`; lines up to `skip_to_line` yield nothing."""
        lineno = line
        parse, max_line_bytes = self.parse, self.max_line_bytes
        for batch in lines:
            if not isinstance(batch, list):
                lineno += 1
                if offset is not None:
                    offset += batch.consumed
                if lineno > skip_to_line:
                    record = self.parse_lone(batch, lineno, offset)
                    if record is not None:
                        yield record
                continue
            if skip_to_line > lineno:  # lines handed out before this read
                handled, batch = batch[: skip_to_line - lineno], batch[skip_to_line - lineno :]
                self.skip(handled)
                lineno += len(handled)
                if offset is not None:
                    offset += sum(map(len, handled)) + len(handled)
            for raw_line in batch:
                lineno += 1
                if offset is not None:
                    offset += len(raw_line) + 1
                if len(raw_line) > max_line_bytes:  # whole in one chunk, or its end came with the newline
                    yield self.overlong(raw_line, len(raw_line), lineno, offset)
                    continue
                record = parse(raw_line, lineno, offset)
                if record is not None:
                    yield record

    def position(self, lineno: int, offset: int | None) -> Position:
        if offset is None:
            return {**self.extra, "line": lineno}
        return {**self.extra, "line": lineno, "offset": offset}

    def overlong(self, kept: bytes, size: int, lineno: int, offset: int | None) -> RawRecord:
        return RawRecord(
            self.position(lineno, offset),
            f"{self.name}:{lineno}",
            error=f"line is longer than {self.max_line_bytes} bytes ({size} bytes); not line-delimited data?",
            raw=_preview(kept),
        )

    def parse_lone(self, lone: _LoneLine, lineno: int, offset: int | None) -> RawRecord | None:
        if lone.size > self.max_line_bytes:
            return self.overlong(lone.head, lone.size, lineno, offset)
        return self.parse(lone.head, lineno, offset)

    def skip(self, handled: list[bytes]) -> None:
        """Lines handed out by an earlier read: nothing to yield, but what they set (a header) still holds."""

    def parse(self, raw_line: bytes, lineno: int, offset: int | None) -> RawRecord | None:
        """The record of one line (its newline dropped), None for a line that is no row (blank, header)."""
        raise NotImplementedError


def _content(raw_line: bytes) -> bytes | None:
    """The line without a leading BOM (a file's start, or files concatenated; only one), None when blank."""
    if raw_line.startswith(_BOM):
        raw_line = raw_line[len(_BOM) :]
    return raw_line if raw_line.strip() else None


class _JsonlParser(_LineParser):
    """A JSON object per line."""

    def parse(self, raw_line: bytes, lineno: int, offset: int | None) -> RawRecord | None:
        # The common case first and cheaply: a line that is a JSON object.
        try:
            row = _loads(raw_line)
        except _JSONDecodeError:
            return self._parse_unusual(raw_line, lineno, offset)
        if type(row) is not dict:
            return self._parse_unusual(raw_line, lineno, offset)
        extra = self.extra
        position = {**extra, "line": lineno} if offset is None else {**extra, "line": lineno, "offset": offset}
        return RawRecord(position, f"{self.name}:{lineno}", row)

    def _parse_unusual(self, raw_line: bytes, lineno: int, offset: int | None) -> RawRecord | None:
        """A line orjson did not read as an object: blank, BOM, invalid UTF-8, lenient JSON or no object."""
        line = _content(raw_line)
        if line is None:
            return None
        position, ref = self.position(lineno, offset), f"{self.name}:{lineno}"
        try:
            row = _loads(line)
        except _JSONDecodeError as exc:
            problem = _utf8_problem(line)
            if problem is not None:
                return RawRecord(position, ref, error=problem, raw=_preview(line), reason="invalid_utf8")
            row = _loads_lenient(line)
            if row is _UNREAD:
                return RawRecord(position, ref, error=f"invalid JSON: {exc}", raw=_preview(line))
        if type(row) is not dict:
            return RawRecord(position, ref, error=f"JSON line is {_json_type(row)}, not an object", raw=_preview(line))
        return RawRecord(position, ref, row=row)


class _TsvParser(_LineParser):
    """Tab-separated values under a header line that names the columns."""

    def __init__(self, name: str, base: Position | None, max_line_bytes: int, header: list[str] | None) -> None:
        super().__init__(name, base, max_line_bytes)
        self.header = header
        if header is not None:
            self.extra["header"] = header

    def _set_header(self, line: bytes) -> None:
        self.header = _parse_tsv_header(line)
        self.extra["header"] = self.header

    def skip(self, handled: list[bytes]) -> None:
        if self.header is None:
            first = next((raw_line for raw_line in handled if raw_line.strip()), None)
            if first is not None:
                self._set_header(first)

    def parse(self, raw_line: bytes, lineno: int, offset: int | None) -> RawRecord | None:
        line = _content(raw_line)
        if line is None:
            return None
        if self.header is None:
            self._set_header(line)
            return None
        position, ref = self.position(lineno, offset), f"{self.name}:{lineno}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return RawRecord(
                position, ref, error=f"invalid UTF-8 at byte {exc.start}", raw=_preview(line), reason="invalid_utf8"
            )
        values = text.rstrip("\r").split("\t")
        if len(values) != len(self.header):
            return RawRecord(
                position,
                ref,
                error=f"TSV line has {len(values)} columns, the header names {len(self.header)}",
                raw=_preview(line),
            )
        return RawRecord(position, ref, row=dict(zip(self.header, values, strict=True)))


class _TextLineParser(_LineParser):
    """One sentence a line: every line is a record, a blank one too."""

    def parse(self, raw_line: bytes, lineno: int, offset: int | None) -> RawRecord | None:
        if raw_line.startswith(_BOM):
            raw_line = raw_line[len(_BOM) :]
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return RawRecord(
                self.position(lineno, offset),
                f"{self.name}:{lineno}",
                error=f"invalid UTF-8 at byte {exc.start}",
                raw=_preview(raw_line),
                reason="invalid_utf8",
            )
        extra = self.extra
        position = {**extra, "line": lineno} if offset is None else {**extra, "line": lineno, "offset": offset}
        return RawRecord(position, f"{self.name}:{lineno}", {"text": text[:-1] if text.endswith("\r") else text})


def iter_parquet_records(
    file: BinaryIO,
    name: str,
    *,
    base: Position | None = None,
    start_row: int = 0,
    batch_rows: int = 4096,
) -> Iterator[RawRecord]:
    """Yield one record per Parquet row, reading a bounded batch at a time.

    Each position holds `base`'s keys and `row` (rows consumed). Row groups wholly before `start_row` are
    not read at all; memory is bounded by one row group.

    Args:
        file: a seekable binary file.
        name: the file name shown in each record's `ref` ("pairs.parquet:row 17").
        base: keys copied into every position.
        start_row: rows already handled; reading starts after them.
        batch_rows: rows decoded at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FormatError(f"not a readable Parquet file: {exc}") from None
    extra: dict[str, Any] = dict(base or {})
    metadata = parquet.metadata
    first_group, row = 0, 0
    while first_group < metadata.num_row_groups:
        group_rows = metadata.row_group(first_group).num_rows
        if row + group_rows > start_row:
            break
        row += group_rows
        first_group += 1
    try:
        # One row group at a time: pyarrow fetches a group's column chunks in one coalesced read (few GETs
        # on object stores) and memory stays at one group, however many groups the file has.
        for group in range(first_group, metadata.num_row_groups):
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group]):
                rows = batch.to_pylist()
                if row + len(rows) <= start_row:
                    row += len(rows)
                    continue
                if row < start_row:
                    rows = rows[start_row - row :]
                    row = start_row
                for values in rows:
                    row += 1
                    yield RawRecord({**extra, "row": row}, f"{name}:row {row}", row=values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise FormatError(f"corrupt Parquet data after row {row}: {exc}") from None


def mark_last(records: Iterable[RawRecord]) -> Iterator[RawRecord]:
    """Pass records through, adding `"done": True` to the last one's position.

    A resume from a position marked done knows the whole file was read and need not reopen it. The last
    record is held back until the input is exhausted, so a failure at the very end never marks it.
    """
    pending: RawRecord | None = None
    for record in records:
        if pending is not None:
            yield pending
        pending = record
    if pending is not None:
        yield replace(pending, position={**pending.position, "done": True})
