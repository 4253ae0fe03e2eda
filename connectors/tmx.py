"""The `tmx` source: the translation units of a TMX 1.4 translation memory, streamed.

A `<tu>` holds one `<tuv xml:lang="...">` per language, each with a `<seg>`. Its row pairs the segments of the
source's two `langs`; language tags are mapped to FLORES codes (`en`, `en-US`, `hi`, `hi-IN`, `hin_Deva`...).
Inline markup in a segment is reduced to its text: the native codes that `<bpt>`, `<ept>`, `<it>`, `<ph>` and
`<ut>` hold (`<b>`, `{1}`) are dropped, the text inside `<hi>` is kept. A unit without a segment in one of the
two languages is a record rejected as `missing_field`, naming the languages it has (unknown tags marked so);
tags no FLORES code matches are also logged with their counts once the file is read.

The file is parsed with expat's push parser as its chunks arrive (the feed-based engine under ElementTree's
iterparse): no tree is built, only the unit being read is held, and a segment over `MAX_UNIT_CHARS` stops being
kept, so memory stays flat whatever the file's size. Entity declarations are refused (no entity expansion
bombs). A file that is not well-formed XML is an error naming its line and column.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from bhashaflow.config import SourceRetryConfig, TmxSource
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.redact import redact_uri
from bhashaflow.core.settings import Settings
from connectors.base import SourceError
from connectors.files import FileSource, FileStores, file_name
from connectors.formats import RAW_PREVIEW_CHARS, FormatError, mark_last, sniff_gzip
from connectors.langtags import flores_code

log = logging.getLogger(__name__)

MAX_UNIT_CHARS = 1 << 20  # text kept of one unit; a longer one is not a sentence pair (reported as malformed)
_CODES = frozenset({"bpt", "ept", "it", "ph", "ut"})  # inline elements whose content is native code, not text
_MAX_UNKNOWN_TAGS = 50  # distinct unknown tags counted for the log


@dataclass
class TmxUnit:
    """One `<tu>` as read: where it starts, its id, and the (xml:lang, text) of each `<tuv>` with a `<seg>`."""

    line: int
    tuid: str | None = None
    variants: list[tuple[str | None, str]] = field(default_factory=list)
    chars: int = 0
    overlong: bool = False


class TmxParser:
    """Turns a TMX file's bytes, fed in chunks, into its units in order."""

    def __init__(self) -> None:
        self._parser = expat.ParserCreate()
        self._parser.buffer_text = True
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._parser.CharacterDataHandler = self._text
        self._parser.EntityDeclHandler = self._refuse_entity
        self._ready: list[TmxUnit] = []
        self._unit: TmxUnit | None = None
        self._lang: str | None = None
        self._seg: list[str] | None = None
        self._code_depth = 0
        self._root: str | None = None

    def units(self, chunks: Iterable[bytes]) -> Iterator[TmxUnit]:
        """Every unit of the file, in order, as soon as its `</tu>` has been read."""
        for chunk in chunks:
            self._feed(chunk, final=False)
            yield from self._take()
        self._feed(b"", final=True)
        yield from self._take()

    def _take(self) -> list[TmxUnit]:
        ready, self._ready = self._ready, []
        return ready

    def _feed(self, data: bytes, final: bool) -> None:
        try:
            self._parser.Parse(data, final)
        except expat.ExpatError as exc:
            cut = " (the file ends before its </tmx>: cut short?)" if final and self._root is not None else ""
            raise FormatError(
                f"malformed TMX at line {exc.lineno}, column {exc.offset + 1}: {expat.ErrorString(exc.code)}{cut}"
            ) from None
        if final and self._root is None:
            raise FormatError("not a TMX file: no <tmx> element")

    def _start(self, name: str, attrs: dict[str, str]) -> None:
        if self._root is None:
            self._root = name
            if name != "tmx":
                raise FormatError(f"not a TMX file: its root element is <{name}>, not <tmx>")
        if self._seg is not None:
            self._code_depth += name in _CODES
        elif name == "tu":
            self._unit = TmxUnit(self._parser.CurrentLineNumber, attrs.get("tuid"))
        elif name == "tuv" and self._unit is not None:
            self._lang = attrs.get("xml:lang") or attrs.get("lang")  # lang: TMX 1.1's name for it
        elif name == "seg" and self._unit is not None:
            self._seg = []

    def _end(self, name: str) -> None:
        if self._seg is not None and name != "seg":
            self._code_depth -= name in _CODES
        elif name == "seg" and self._unit is not None and self._seg is not None:
            if not self._unit.overlong:
                self._unit.variants.append((self._lang, "".join(self._seg)))
            self._seg, self._code_depth = None, 0
        elif name == "tu" and self._unit is not None:
            self._ready.append(self._unit)
            self._unit = None

    def _text(self, data: str) -> None:
        unit = self._unit
        if self._seg is None or self._code_depth or unit is None or unit.overlong:
            return
        unit.chars += len(data)
        if unit.chars > MAX_UNIT_CHARS:
            unit.overlong, self._seg = True, []
            return
        self._seg.append(data)

    def _refuse_entity(self, name: str, *args: Any) -> None:
        raise FormatError(
            f"TMX at line {self._parser.CurrentLineNumber} declares entity {name!r}; entity declarations are refused"
        )


class TmxConnector(FileSource):
    """Rows `{"src", "tgt"}` (plus `tuid` when the unit has one) from the units of one TMX file.

    The position is `{"unit": units read}` (the last adds `"done": True`); a resumed read parses the file again
    from its start and skips the units already handed out (XML cannot be entered mid-file). Refs are
    `memory.tmx:tu N`, N counting units from 1.
    """

    def __init__(self, source: TmxSource, settings: Settings, retry: SourceRetryConfig | None = None) -> None:
        """Check the config; nothing is contacted until `iter_records`.

        Args:
            source: a `tmx` source: `uri` is the file, `langs` the two languages to pair.
            settings: credentials and endpoints; resolves `${NAME}` in the uri.
            retry: backoff, attempts before giving up with TransientSourceError, and the read timeout.
        """
        if source.langs is None:
            raise SourceError(f"source {source.name!r}: kind tmx needs 'langs'")
        super().__init__(source, settings, retry)
        self.langs = (source.langs.src, source.langs.tgt)
        self.shown = redact_uri(self.uri)
        self.file_name = file_name(self.uri)

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield a record per unit after `start` (from the first when None), each with its resume position."""
        if start is not None and not isinstance(start.get("unit"), int):
            raise SourceError(f"source {self.name!r}: {start!r} is not a position of a tmx source")
        with self.stores() as stores:
            yield from self.retried(
                lambda position: self._read_from(stores, position),
                start,
                what=f"source {self.name!r}: reading {self.shown}",
            )

    def _read_from(self, stores: FileStores, position: Position | None) -> Iterator[RawRecord]:
        position = position or {}
        if position.get("done"):
            return
        skip: int = position.get("unit", 0)
        store = stores.for_uri(self.uri)
        _, chunks = sniff_gzip(store.chunks(self.uri, 0), named_gz=self.file_name.lower().endswith(".gz"))
        unknown: Counter[str] = Counter()
        try:
            yield from mark_last(self._records(TmxParser().units(chunks), skip, unknown))
        except FormatError as exc:
            raise SourceError(f"source {self.name!r}: {self.shown}: {exc}") from None
        for tag, count in unknown.most_common():
            log.warning(
                "source %r: %s: xml:lang %r matches no FLORES-200 language; segments in it not read: %d",
                self.name,
                self.shown,
                tag,
                count,
            )

    def _records(self, units: Iterator[TmxUnit], skip: int, unknown: Counter[str]) -> Iterator[RawRecord]:
        for number, unit in enumerate(units, start=1):
            if number <= skip:
                continue
            for tag, _ in unit.variants:
                key = tag or "(none)"
                if flores_code(tag) is None and (key in unknown or len(unknown) < _MAX_UNKNOWN_TAGS):
                    unknown[key] += 1
            yield self._record(unit, number)

    def _record(self, unit: TmxUnit, number: int) -> RawRecord:
        """A unit's row, or why it has none: a language missing, or text too long to be a sentence pair."""
        position, ref = {"unit": number}, f"{self.file_name}:tu {number}"
        where = f"TMX unit at line {unit.line}" + (f" (tuid {unit.tuid!r})" if unit.tuid else "")
        if unit.overlong:
            return RawRecord(position, ref, error=f"{where} holds over {MAX_UNIT_CHARS} characters of text")
        texts: dict[str, str] = {}
        for tag, text in unit.variants:
            code = flores_code(tag)
            if code is not None:
                texts.setdefault(code, text)  # a second variant in the same language is not read
        missing = [code for code in self.langs if code not in texts]
        if missing:
            has = ", ".join(f"{tag} ({flores_code(tag) or 'unknown tag'})" for tag, _ in unit.variants) or "none"
            raw = json.dumps({tag or "": text for tag, text in unit.variants}, ensure_ascii=False)
            return RawRecord(
                position,
                ref,
                error=f"{where} has no segment in {' or '.join(missing)}; its languages: {has}",
                raw=raw[:RAW_PREVIEW_CHARS],
                reason="missing_field",
            )
        row = {"src": texts[self.langs[0]], "tgt": texts[self.langs[1]]}
        if unit.tuid is not None:
            row["tuid"] = unit.tuid
        return RawRecord(position, ref, row)
