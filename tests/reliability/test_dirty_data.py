"""Dirty data: generated corpora that plant every rejection reason and every kind of dirt among valid rows.

Each run builds a JSONL file, a TSV file and a gzipped one of either (as bytes, so they can hold invalid UTF-8,
NUL bytes, 1 MB and 8 MB lines, mixed and right-to-left scripts, bidi overrides, zero-width characters, BOMs,
exact and near-duplicates), serves them over HTTP, runs `stage_source` + `write_shards`, and checks that the
manifest, the quarantine and the shards hold exactly what was planted: every count, every quarantined row's
reason and ref, and every accepted pair's id and normalised text.
"""

from __future__ import annotations

import gzip
import json
import random
import shutil
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from _knobs import count

from bhashaflow.config import PipelineConfig
from bhashaflow.core.records import REJECT_REASONS
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import shard_uris, stage_source, write_shards
from bhashaflow.data.shards import iter_pairs
from connectors import open_connector

DIRECTION = "eng_Latn-hin_Deva"
MAX_CHARS = 200
ONE_MB = 1 << 20
OVER_LINE_LIMIT = 8 * ONE_MB + 512 * 1024  # past formats.MAX_LINE_BYTES by more than any chunk
BOM = b"\xef\xbb\xbf"
PH = "QQPLACEQQ"  # where a planted piece goes; swapped in after encoding, so it can be bytes JSON cannot hold
HEADER = ["src", "tgt", "src_lang", "tgt_lang"]

EN = (
    "the river market school rain café naïve city green old new house road light tea book friend water morning "
    "evening child garden letter music song Zoë résumé déjà"
).split()
_HI = [
    "नदी",
    "बाज\u093cार",
    "स्कूल",
    "बारिश",
    "शहर",
    "हरा",
    "पुराना",
    "नया",
    "घर",
    "सड\u093cक",
    "रोशनी",
    "चाय",
    "किताब",
    "दोस्त",
    "पानी",
    "सुबह",
    "शाम",
    "बच्चा",
    "बगीचा",
    "चिट्ठी",
    "संगीत",
    "गीत",
    "क्षमा",
    "क्\u200dषमा",
    "पत्\u200cनी",
    "\u0929ाम",
    "ज\u093cरूर",
    "फ\u093cिल्म",
]
HI = [unicodedata.normalize("NFC", w) for w in _HI]
assert HI == _HI, "the Hindi words must be NFC already"
ZERO_WIDTH = ["\u200b", "\ufeff"]  # removed by normalisation
OTHER_SPACE = ["  ", "\u00a0", "\u3000", "\u2009", "\u202f", " \u2028 ", "\u200a"]  # normalised to one space
CONTROLS = [
    "\x00",
    "\x01",
    "\x08",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x1f",
    "\x7f",
    "\x85",
    "\x9f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
]
INVALID_BYTES = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf\xbf",
    b"\xc0\xaf",
    b"\xc1\x81",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xe0\xa4",
    b"\xf4\x90\x80\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xf0\x9f\x99",
]
DISALLOWED = set(CONTROLS) | set(ZERO_WIDTH)


def deva_share(text: str) -> float:
    """Independent oracle of the script rule: Devanagari block characters over letters plus those."""
    own = sum(1 for ch in text if "\u0900" <= ch <= "\u097f")
    foreign = sum(1 for ch in text if ch.isalpha() and not "\u0900" <= ch <= "\u097f")
    return own / (own + foreign) if own + foreign else 1.0


def preview(line: bytes) -> str:
    """What the quarantine shows of an unparsed line: its start, undecodable bytes as \\xNN escapes."""
    return line[:2000].decode("utf-8", "backslashreplace").rstrip("\r\n")[:500]


@dataclass
class Line:
    """One planted line and what ingestion must make of it."""

    data: bytes  # without the newline
    outcome: str  # pair | reject | skip | blank | header
    case: str = ""
    pair: tuple[str, str] | None = None  # the normalised pair a valid row must become
    reason: str | None = None
    hinted: bool = False  # rejected while naming the configured direction: counted in the direction's rejects
    row: Any = None  # the parsed row the quarantine shows, when the line parsed
    detail: str | None = None  # a substring the rejection's detail must hold


@dataclass
class PlantedFile:
    source: str
    name: str
    lines: list[Line] = field(default_factory=list)
    gzip_members: int = 0  # 0: plain
    final_newline: bool = True

    def body(self, rng: random.Random) -> bytes:
        data = b"\n".join(line.data for line in self.lines) + (b"\n" if self.final_newline else b"")
        if not self.gzip_members:
            return data
        # Concatenated members, cut anywhere (inside a line or a character): still one stream of bytes.
        cut = sorted(rng.sample(range(len(data) + 1), self.gzip_members - 1))
        bounds = [0, *cut, len(data)]
        return b"".join(gzip.compress(data[a:b], compresslevel=1) for a, b in pairwise(bounds))


class DirtyCorpus:
    """Random valid pairs and planted dirt for one run, all from one `random.Random`."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.edge_cases: list[tuple[str, str]] = []
        self.pool = self._canonical_pairs(rng.randint(40, 80))

    # --- valid pairs -------------------------------------------------------------------------------------------

    def _canonical_pairs(self, n: int) -> list[tuple[str, str]]:
        rng = self.rng
        pairs: list[tuple[str, str]] = []
        for k in range(n):
            src = " ".join(rng.sample(EN, rng.randint(2, 6))) + f" {k}"
            tgt = " ".join(rng.choices(HI, k=rng.randint(3, 7))) + rng.choice(["", " ।", " 🙂", f" {k}"])
            extra = rng.random()
            if extra < 0.15:  # a minority Latin or right-to-left word (with its RLM) stays
                word = rng.choice(["OK", "Wi-Fi", "\u200fسلام\u200f", "שלום"])
                mixed = f"{tgt} {word}"
                if deva_share(mixed) >= 0.6:
                    tgt = mixed
            pairs.append((src, tgt))
        # The edge cases, planted in every file.
        pairs.append((pairs[0][0].upper(), pairs[0][1]))  # differs only by case: a different pair
        pairs.append((f"exactly half {n}", "कमलम wxyz"))  # 4 Devanagari, 4 Latin letters: 50% passes
        pairs.append((f"no letters {n}", "2024 — 15% 🙂"))  # no letters at all passes the script rule
        pairs.append((f"just short enough {n}", " ".join(rng.choices(HI, k=80))[: MAX_CHARS - 1] + "क"))
        for src, tgt in pairs:
            for text in (src, tgt):
                assert text == unicodedata.normalize("NFC", text) and text == text.strip()
                assert len(text) <= MAX_CHARS and "  " not in text
        assert len(set(pairs)) == len(pairs)
        self.edge_cases = pairs[n:]
        return pairs

    def _surface(self, text: str, tsv: bool) -> tuple[str, list[str]]:
        """A text that normalises back to `text`: other whitespace, NFD, precomposed nuktas, zero-width spaces."""
        rng = self.rng
        how = []
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            kind = rng.choice(
                ["space", "ends", "nfd", "nukta", "zw", "pad", "tab"]
                if not tsv
                else ["space", "ends", "nfd", "nukta", "zw", "pad"]
            )
            how.append(kind)
            if kind == "space" and " " in text:
                at = rng.choice([i for i, ch in enumerate(text) if ch == " "])
                text = text[:at] + rng.choice(OTHER_SPACE) + text[at + 1 :]
            elif kind == "tab" and " " in text:
                text = text.replace(" ", rng.choice(["\t", " \n", "\r\n"]), 1)
            elif kind == "ends":
                text = rng.choice([" ", "\u3000", "\u00a0 "]) + text + rng.choice([" ", "  ", "\u2028"])
            elif kind == "nfd":
                text = unicodedata.normalize("NFD", text)
            elif kind == "nukta":  # precomposed forms that NFC takes apart again
                text = text.replace("ज\u093c", "\u095b").replace("ड\u093c", "\u095c").replace("फ\u093c", "\u095e")
            elif kind == "zw":
                for _ in range(rng.randint(1, 3)):
                    at = rng.randrange(len(text) + 1)
                    text = text[:at] + rng.choice(ZERO_WIDTH) + text[at:]
            elif kind == "pad":  # over max_chars raw, not once normalised
                text = " " * MAX_CHARS + text + "\u3000" * 10
        return text, how

    def valid_row(self, tsv: bool, pair: tuple[str, str] | None = None) -> tuple[dict, tuple[str, str], str]:
        """A row that must become `pair` (a random one by default), in a random surface form."""
        pair = pair or self.rng.choice(self.pool)
        src, how_src = self._surface(pair[0], tsv)
        tgt, how_tgt = self._surface(pair[1], tsv)
        row = {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        if self.rng.random() < 0.1:  # stray spaces around a code are forgiven
            row["tgt_lang"] = self.rng.choice([" hin_Deva", "hin_Deva "] + ([] if tsv else ["\thin_Deva"]))
        return row, pair, "valid " + "+".join(how_src + how_tgt)

    # --- what the planters below build dirty rows from ---------------------------------------------------------

    def texts(self) -> tuple[str, str]:
        return self.rng.choice(self.pool)

    def row_with(self, part: str, text: str) -> dict[str, str]:
        src, tgt = self.texts()
        row = {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        row[part] = text
        return row

    def insert(self, text: str, piece: str) -> str:
        at = self.rng.randrange(len(text) + 1)
        return text[:at] + piece + text[at:]

    def part(self) -> str:
        return self.rng.choice(["src", "tgt"])


def _json_line(rng: random.Random, row: dict[str, Any], ensure_ascii: bool | None = None) -> tuple[str, dict]:
    """The row as a JSON line, keys shuffled, sometimes with an extra field; and the object it holds."""
    items = list(row.items())
    rng.shuffle(items)
    obj = dict(items)
    if rng.random() < 0.3:
        obj["meta"] = {"score": rng.random(), "tags": ["x", None]}
    return json.dumps(obj, ensure_ascii=rng.random() < 0.3 if ensure_ascii is None else ensure_ascii), obj


def _swap(line: str, piece: bytes) -> bytes:
    assert line.count(PH) == 1
    return line.encode("utf-8").replace(PH.encode(), piece)


def _fill(row: Any, piece: str) -> Any:
    if isinstance(row, dict):
        return {k: _fill(v, piece) for k, v in row.items()}
    return row.replace(PH, piece) if isinstance(row, str) else row


def _unparsed(data: bytes, reason: str, case: str, detail: str | None = None) -> Line:
    return Line(data, "reject", case, reason=reason, row=None, detail=detail)


def _invalid_at(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"invalid UTF-8 at byte {exc.start}"
    raise AssertionError(f"{data[:80]!r} is valid UTF-8")


def jsonl_cases(c: DirtyCorpus) -> dict[str, list[Callable[[], Line]]]:
    """Planters of the rejections a JSONL line can carry, by reason."""
    rng = c.rng

    def parsed(
        row: dict[str, Any],
        reason: str,
        case: str,
        *,
        hinted: bool,
        detail: str | None = None,
        piece: str | None = None,
        raw_piece: bool = False,
        ensure_ascii: bool | None = None,
    ) -> Line:
        text, obj = _json_line(rng, row, ensure_ascii)
        if piece is None:
            return Line(text.encode(), "reject", case, reason=reason, hinted=hinted, row=obj, detail=detail)
        escaped = json.dumps(piece)[1:-1].encode()
        data = _swap(text, piece.encode() if raw_piece else escaped)
        return Line(data, "reject", case, reason=reason, hinted=hinted, row=_fill(obj, piece), detail=detail)

    def invalid_bytes() -> Line:
        part = c.part()
        row = c.row_with(part, c.insert(c.texts()[part == "tgt"], PH))
        bad = rng.choice(INVALID_BYTES)
        data = _swap(_json_line(rng, row, ensure_ascii=False)[0], bad)
        return _unparsed(data, "invalid_utf8", f"invalid bytes {bad!r}", _invalid_at(data))

    def latin1() -> Line:
        src, tgt = c.texts()
        data = json.dumps(
            {"src": f"café {src}", "tgt": "caf\u00e9", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"},
            ensure_ascii=False,
        ).encode("latin-1", "replace")
        return _unparsed(data, "invalid_utf8", "latin-1 file", _invalid_at(data))

    def surrogate_escape() -> Line:
        part = c.part()
        row = c.row_with(part, c.insert(c.texts()[part == "tgt"], PH))
        return parsed(
            row,
            "invalid_utf8",
            "lone surrogate escape",
            hinted=True,
            piece=rng.choice(["\ud800", "\udfff"]),
            detail="lone surrogate",
        )

    def cesu() -> Line:  # a surrogate encoded as UTF-8 bytes: not UTF-8
        part = c.part()
        row = c.row_with(part, c.insert(c.texts()[part == "tgt"], PH))
        data = _swap(_json_line(rng, row, ensure_ascii=False)[0], "\ud83d".encode("utf-8", "surrogatepass"))
        return _unparsed(data, "invalid_utf8", "CESU-8 surrogate bytes", _invalid_at(data))

    def control() -> Line:
        part, ch = c.part(), rng.choice(CONTROLS)
        row = c.row_with(part, c.insert(c.texts()[part == "tgt"], PH))
        raw = rng.random() < 0.5  # a raw NUL is not strict JSON: read leniently, then judged like an escaped one
        return parsed(
            row,
            "control_character",
            f"control U+{ord(ch):04X} {'raw' if raw else 'escaped'}",
            hinted=True,
            piece=ch,
            raw_piece=raw,
            detail=f"({part}) holds control character U+{ord(ch):04X}",
        )

    def missing() -> Line:
        src, tgt = c.texts()
        row: dict[str, Any] = {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        name = rng.choice(HEADER)
        if rng.random() < 0.5:
            del row[name]
        else:
            row[name] = None
        return parsed(row, "missing_field", f"missing {name}", hinted=name in ("src", "tgt"), detail=f"'{name}'")

    def not_string() -> Line:
        src, tgt = c.texts()
        row: dict[str, Any] = {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        name = rng.choice(HEADER)
        row[name] = rng.choice([7, 3.5, True, False, ["नदी"], {"text": "नदी"}, -(2**40)])
        return parsed(
            row,
            "not_a_string",
            f"{name} is {type(row[name]).__name__}",
            hinted=name in ("src", "tgt"),
            detail=f"'{name}'",
        )

    def unknown_language() -> Line:
        src, tgt = c.texts()
        code = rng.choice(["hin_Xxxx", "hindi", "", "HIN_DEVA", "hin_Deva\x00", "hin-Deva", "\ufeffhin_Deva"])
        row = {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": code}
        if rng.random() < 0.3:
            row = {"src": src, "tgt": tgt, "src_lang": code, "tgt_lang": "hin_Deva"}
        return parsed(row, "unknown_language", f"language {code!r}", hinted=False)

    def empty() -> Line:
        part = c.part()
        text = rng.choice(["", " ", "\u200b", "\ufeff", "\u3000\u00a0", "\t\n", "\u200b \ufeff ", "\u2028"])
        return parsed(c.row_with(part, text), "empty", f"empty {text!r}", hinted=True, detail=f"({part}) is empty")

    def too_long() -> Line:
        part = c.part()
        words = EN if part == "src" else HI
        size = rng.choice([MAX_CHARS + 1, MAX_CHARS + rng.randint(2, 300), ONE_MB])  # 1 MB: a 1 MB line
        text = " ".join(rng.choices(words, k=size // 2 + 1))  # words are 1+ characters: at least `size`
        text = text[: size - 1] + ("x" if part == "src" else "क")  # normalisation changes nothing
        return parsed(
            c.row_with(part, text),
            "too_long",
            f"{len(text)} characters",
            hinted=True,
            detail=f"has {len(text)} characters > {MAX_CHARS}",
        )

    def wrong_script() -> Line:
        part, text = rng.choice(
            [
                ("tgt", "namaste duniya"),
                ("tgt", "\u200fسلام دنیا\u200f नदी"),
                ("tgt", "שלום עולם"),
                ("tgt", "कमल abcdef"),
                ("src", "नमस्ते दुनिया"),
                ("src", "привет мир"),
                ("tgt", "ⲛⲟⲩⲧⲉ"),
            ]
        )
        if part == "tgt":
            assert deva_share(text) < 0.5
        return parsed(
            c.row_with(part, text), "wrong_script", f"wrong script {text!r}", hinted=True, detail=f"{part} is "
        )

    def malformed() -> Line:
        kind = rng.choice(["truncated", "array", "string", "null", "number", "nan", "1mb", "nested", "bom-bom"])
        src, tgt = c.texts()
        data = {
            "truncated": json.dumps({"src": src, "tgt": tgt}, ensure_ascii=False)[: -rng.randint(2, 8)].encode(),
            "array": json.dumps([src, tgt], ensure_ascii=False).encode(),
            "string": json.dumps(src).encode(),
            "null": b"null",
            "number": b"42",
            "nan": b'{"src": NaN, "tgt": "x", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}',
            "1mb": (src + " ").encode() * (ONE_MB // (len(src) + 1)),
            "nested": b"[" * 50_000 + b"]" * 50_000,
            "bom-bom": BOM + BOM + json.dumps({"src": src, "tgt": tgt}, ensure_ascii=False).encode(),
        }[kind]
        return Line(data, "reject", f"malformed {kind}", reason="malformed", row=None)

    return {
        "malformed": [malformed],
        "invalid_utf8": [invalid_bytes, latin1, surrogate_escape, cesu],
        "missing_field": [missing],
        "not_a_string": [not_string],
        "control_character": [control],
        "empty": [empty],
        "too_long": [too_long],
        "unknown_language": [unknown_language],
        "wrong_script": [wrong_script],
    }


def tsv_cases(c: DirtyCorpus, header: list[str]) -> dict[str, list[Callable[[], Line]]]:
    """Planters of the rejections a TSV line can carry (every cell is a string, every column is there)."""
    rng = c.rng

    def line(row: dict[str, str], piece: bytes | None = None) -> bytes:
        text = "\t".join(row.get(name, "x") for name in header)
        return text.encode() if piece is None else _swap(text, piece)

    def parsed(row: dict[str, str], reason: str, case: str, detail: str | None = None) -> Line:
        hinted = row["src_lang"].strip() + "-" + row["tgt_lang"].strip() == DIRECTION
        full = {name: row.get(name, "x") for name in header}
        if full[header[0]].startswith("\ufeff"):  # a BOM that starts the line is dropped with it
            full[header[0]] = full[header[0]][1:]
        return Line(line(row), "reject", case, reason=reason, hinted=hinted, row=full, detail=detail)

    def invalid_bytes() -> Line:
        part = c.part()
        bad = rng.choice(INVALID_BYTES)
        data = line(c.row_with(part, c.insert(c.texts()[part == "tgt"], PH)), bad)
        return _unparsed(data, "invalid_utf8", f"invalid bytes {bad!r}", _invalid_at(data))

    def control() -> Line:
        part, ch = c.part(), rng.choice(CONTROLS)
        row = c.row_with(part, c.insert(c.texts()[part == "tgt"], ch))
        return parsed(row, "control_character", f"control U+{ord(ch):04X}", f"holds control character U+{ord(ch):04X}")

    def empty() -> Line:
        part = c.part()
        text = rng.choice(["", " ", "\u200b", "\ufeff ", "\u3000", "\u200b \u00a0"])
        return parsed(c.row_with(part, text), "empty", f"empty {text!r}", f"({part}) is empty")

    def too_long() -> Line:
        part = c.part()
        text = ("नदी " * (ONE_MB // 4)).strip() if rng.random() < 0.3 else "ab " * 70 + "c"
        return parsed(c.row_with(part, text), "too_long", f"{len(text)} characters", f"has {len(text)} characters")

    def unknown_language() -> Line:
        src, tgt = c.texts()
        code = rng.choice(["hin_Xxxx", "", "Hindi", "hin_Deva\x00"])
        return parsed(
            {"src": src, "tgt": tgt, "src_lang": "eng_Latn", "tgt_lang": code}, "unknown_language", f"language {code!r}"
        )

    def wrong_script() -> Line:
        part, text = rng.choice([("tgt", "namaste duniya"), ("tgt", "سلام دنیا"), ("src", "नमस्ते दुनिया")])
        return parsed(c.row_with(part, text), "wrong_script", f"wrong script {text!r}", f"{part} is ")

    def malformed() -> Line:
        cells = [c.texts()[0]] * rng.choice([1, 2, len(header) - 1, len(header) + 1, len(header) + 3])
        data = b"x" * ONE_MB if rng.random() < 0.2 else "\t".join(cells).encode()
        return Line(data, "reject", "wrong column count", reason="malformed", row=None, detail="TSV line has")

    return {
        "malformed": [malformed],
        "invalid_utf8": [invalid_bytes],
        "control_character": [control],
        "empty": [empty],
        "too_long": [too_long],
        "unknown_language": [unknown_language],
        "wrong_script": [wrong_script],
    }


def skipped_row(c: DirtyCorpus) -> tuple[dict[str, Any], str]:
    """A row of a direction not configured: skipped before its text is looked at, even dirty text."""
    direction = c.rng.choice(["eng_Latn-tam_Taml", "hin_Deva-eng_Latn", "eng_Latn-urd_Arab"])
    src_lang, tgt_lang = direction.split("-")
    text = c.rng.choice(["வணக்கம்", "नदी", "\x00", "", "x" * (MAX_CHARS + 5), "hello"])
    return {
        "src": text,
        "tgt": c.rng.choice(["வணக்கம் உலகம்", "\u202e"]),
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
    }, direction


def build_file(c: DirtyCorpus, source: str, name: str, fmt: str, n_valid: int) -> PlantedFile:
    rng = c.rng
    planted = PlantedFile(source, name)
    header = HEADER[:]
    if fmt == "tsv":
        rng.shuffle(header)
        if rng.random() < 0.5:
            header.insert(rng.randrange(len(header) + 1), "note")
        cases = tsv_cases(c, header)
    else:
        cases = jsonl_cases(c)
    lines: list[Line] = []
    for planters in cases.values():  # every reason at least once, several for some
        for _ in range(rng.randint(1, 3)):
            lines.append(rng.choice(planters)())
    for k in range(n_valid):
        row, pair, how = c.valid_row(fmt == "tsv", c.edge_cases[k] if k < len(c.edge_cases) else None)
        if fmt == "tsv":
            data = "\t".join(row.get(col, "note") for col in header).encode()
        else:
            data = _json_line(rng, row)[0].encode()
            if "\\t" in data.decode() and rng.random() < 0.5:  # a raw tab: strict JSON refuses it
                data = data.replace(b"\\t", b"\t")
                how += " raw-tab"
        lines.append(Line(data, "pair", how, pair=pair))
    for _ in range(rng.randint(1, 3)):
        row, direction = skipped_row(c)
        data = ("\t".join(row.get(col, "x") for col in header) if fmt == "tsv" else _json_line(rng, row)[0]).encode()
        lines.append(Line(data, "skip", f"skipped {direction}", reason=direction))
    for _ in range(rng.randint(1, 4)):
        blank = rng.choice([b"", b"  ", b"\r", b"\t", BOM] + ([b"\t\t\t"] if fmt == "tsv" else []))
        lines.append(Line(blank, "blank", "blank line"))
    rng.shuffle(lines)
    for line in lines:
        if line.outcome in ("pair", "skip") and rng.random() < 0.1:
            line.data = BOM + line.data  # a BOM where files were concatenated
            line.case += " bom"
        if line.outcome != "blank" and rng.random() < 0.2:
            line.data += b"\r"  # CRLF
    if fmt == "tsv":
        head = "\t".join(header).encode()
        lines.insert(
            0, Line((BOM if rng.random() < 0.5 else b"") + head + (b"\r" if rng.random() < 0.3 else b""), "header")
        )
    elif rng.random() < 0.5 and lines[0].outcome != "blank" and not lines[0].data.startswith(BOM):
        lines[0].data = BOM + lines[0].data
        lines[0].case += " bom"
    planted.lines = lines
    planted.final_newline = rng.random() < 0.8 or lines[-1].outcome == "blank"
    return planted


def over_line_limit(c: DirtyCorpus) -> Line:
    """A JSON row longer than the line limit: one malformed record, never buffered (it would be too_long)."""
    src, _ = c.texts()
    data = json.dumps(
        {"src": src, "tgt": "क" * (OVER_LINE_LIMIT // 3), "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"},
        ensure_ascii=False,
    ).encode()
    return Line(data, "reject", "line over the 8 MB limit", reason="malformed", row=None, detail="longer than")


@dataclass
class Expected:
    accepted: list[tuple[str, str, str]] = field(default_factory=list)  # (id, src, tgt) in shard order
    quarantine: list[tuple[str, str, Line]] = field(default_factory=list)  # (source, ref, line)
    sources: dict[str, Counter[str]] = field(default_factory=dict)
    by_reason: Counter[str] = field(default_factory=Counter)
    direction_rejected: int = 0


def expected_outcome(files: list[PlantedFile]) -> Expected:
    out = Expected()
    seen: set[tuple[str, str]] = set()
    for f in files:
        counts: Counter[str] = Counter()
        for lineno, line in enumerate(f.lines, start=1):
            if line.outcome in ("blank", "header"):
                continue
            counts["read"] += 1
            ref = f"{f.name}:{lineno}"
            if line.outcome == "pair":
                assert line.pair is not None
                if line.pair in seen:
                    counts["duplicates"] += 1
                else:
                    seen.add(line.pair)
                    counts["accepted"] += 1
                    out.accepted.append((f"{f.source}:{ref}", *line.pair))
            elif line.outcome == "skip":
                counts["skipped"] += 1
            else:
                assert line.reason is not None
                counts["rejected"] += 1
                out.by_reason[line.reason] += 1
                out.direction_rejected += line.hinted
                out.quarantine.append((f.source, ref, line))
        out.sources[f.source] = counts
    return out


def assert_clean_text(text: str, where: str) -> None:
    bad = [ch for ch in text if unicodedata.category(ch) in ("Cc", "Cs") or ch in DISALLOWED]
    assert not bad, f"{where}: accepted text holds {[f'U+{ord(ch):04X}' for ch in bad]}"
    assert text == unicodedata.normalize("NFC", text), f"{where}: not NFC"
    assert text == text.strip() and "  " not in text and 0 < len(text) <= MAX_CHARS, f"{where}: not normalised"


def run_once(
    rng: random.Random, root: Path, http_url: Callable[[str], str], workdir: Path
) -> tuple[Expected, dict, list, list, int]:
    c = DirtyCorpus(rng)
    gz_fmt = rng.choice(["jsonl", "tsv"])
    files = [
        build_file(c, "web-jsonl", "pairs.jsonl", "jsonl", rng.randint(30, 60)),
        build_file(c, "web-tsv", "pairs.tsv", "tsv", rng.randint(30, 60)),
        build_file(c, "web-gz", f"more.{gz_fmt}.gz", gz_fmt, rng.randint(30, 60)),
    ]
    files[-1].gzip_members = rng.choice([1, 1, 3])
    holder = rng.choice(files)
    holder.lines.insert(rng.randrange(1, len(holder.lines)), over_line_limit(c))
    size = 0
    for f in files:
        body = f.body(rng)
        size += len(body)
        (root / f.name).write_bytes(body)
    config = PipelineConfig.model_validate(
        {
            "run_name": "dirty",
            "workdir": str(workdir),
            "directions": [DIRECTION],
            "sources": [{"name": f.source, "kind": "http", "uri": http_url(f.name)} for f in files],
            "ingest": {
                "max_chars": MAX_CHARS,
                "max_reject_fraction": 1.0,
                "shard_rows": rng.choice([7, 50, 1000]),
                "commit_rows": rng.choice([5, 33, 100_000]),
            },
        }
    )
    run_uri = config.run_uri()
    settings = Settings()
    staged = [stage_source(config, s, open_connector(s, settings, config.directions), run_uri) for s in config.sources]
    manifest = write_shards(config, staged, run_uri)
    quarantine = [json.loads(line) for line in Path(run_uri, manifest["quarantine"]["path"]).open(encoding="utf-8")]
    pairs = list(iter_pairs(shard_uris(manifest, run_uri, DIRECTION)))
    return expected_outcome(files), manifest, quarantine, pairs, size


def compare(exp: Expected, manifest: dict, quarantine: list, pairs: list, where: str) -> int:
    """Assert the run's manifest, quarantine and shards are exactly the planted outcome; rows lost or misplaced."""
    got_pairs = [(p.id, p.src, p.tgt) for p in pairs]
    got_q = [(q["source"], q["ref"], q["reason"]) for q in quarantine]
    want_q = [(s, ref, line.reason) for s, ref, line in exp.quarantine]
    lost = len(set(exp.accepted) ^ set(got_pairs)) + len(set(want_q) ^ set(got_q))
    cases = {(s, ref): line.case for s, ref, line in exp.quarantine}
    diff = [(item, cases.get(item[:2], "not planted as a rejection")) for item in sorted(set(want_q) ^ set(got_q))]
    assert got_q == want_q, f"{where}: quarantine differs from the planted rejections: {diff}"
    assert got_pairs == exp.accepted, f"{where}: accepted pairs differ: {set(got_pairs) ^ set(exp.accepted)}"
    for q, (_, _, line) in zip(quarantine, exp.quarantine, strict=True):
        at = f"{where}: {q['ref']} ({line.case})"
        assert q["row"] == line.row, f"{at}: quarantined row differs"
        if line.row is None:
            body = line.data[len(BOM) :] if line.data.startswith(BOM) else line.data  # the parser drops one BOM
            assert q["raw"] == preview(body), f"{at}: raw preview differs"
        if line.detail is not None:
            assert line.detail in q["detail"], f"{at}: detail {q['detail']!r} lacks {line.detail!r}"
    for p in pairs:
        assert_clean_text(p.src, f"{where}: {p.id} src")
        assert_clean_text(p.tgt, f"{where}: {p.id} tgt")
    for name, counts in exp.sources.items():
        got = manifest["sources"][name]
        for key in ("read", "accepted", "duplicates", "rejected", "skipped"):
            assert got[key] == counts[key], f"{where}: source {name} {key} {got[key]} != planted {counts[key]}"
    totals = {
        key: sum(c[key] for c in exp.sources.values())
        for key in ("read", "accepted", "duplicates", "rejected", "skipped")
    }
    assert manifest["totals"] == totals, where
    assert manifest["rejected_by_reason"] == dict(sorted(exp.by_reason.items())), where
    assert manifest["quarantine"]["rows"] == len(exp.quarantine), where
    d = manifest["directions"][DIRECTION]
    assert (d["accepted"], d["duplicates"], d["rejected"]) == (
        totals["accepted"],
        totals["duplicates"],
        exp.direction_rejected,
    ), where
    assert sum(s["rows"] for s in d["shards"]) == totals["accepted"], where
    return lost


def test_every_reason_is_planted():
    """A new rejection reason without a planted case fails here, before any corpus is generated."""
    c = DirtyCorpus(random.Random(0))
    assert set(jsonl_cases(c)) == set(REJECT_REASONS)
    tsv_reasons = set(tsv_cases(c, HEADER))
    assert set(REJECT_REASONS) - tsv_reasons == {"missing_field", "not_a_string"}  # a TSV cell is always a string


def test_dirty_corpus_counts_match_the_planted_counts(http_server, tmp_path, seed, record):
    runs = count("dirty_runs", 5, 50)
    lost = joiners = 0
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    megabytes = 0.0
    for i in range(runs):
        where = f"seed {seed} run {i} (BHASHAFLOW_RELIABILITY_SEED={seed} replays)"
        root = http_server.root / f"run{i}"
        root.mkdir()
        exp, manifest, quarantine, pairs, size = run_once(
            random.Random(seed + i), root, lambda name, i=i: http_server.url(f"run{i}/{name}"), tmp_path / f"runs{i}"
        )
        assert set(exp.by_reason) == set(REJECT_REASONS), f"{where}: a reason was not planted"
        lost += compare(exp, manifest, quarantine, pairs, where)
        joiners += sum(1 for p in pairs if "\u200d" in p.tgt or "\u200c" in p.tgt)
        totals.update(manifest["totals"])
        reasons.update(manifest["rejected_by_reason"])
        megabytes += size / ONE_MB
        shutil.rmtree(root)  # tens of MB a run: soak counts would fill the disk
        shutil.rmtree(tmp_path / f"runs{i}")
    assert lost == 0
    assert joiners, "no accepted pair kept a ZWJ/ZWNJ: they must survive normalisation"
    record(
        "dirty corpora: planted counts equal manifest counts",
        area="ingest",
        tried=runs,
        lost=lost,
        rows=totals["read"],
        accepted=totals["accepted"],
        duplicates=totals["duplicates"],
        rejected=totals["rejected"],
        skipped=totals["skipped"],
        reasons=len(reasons),
        zwj_zwnj_kept=joiners,
        mb_served=round(megabytes, 1),
    )
