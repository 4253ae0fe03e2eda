"""Row parsing shared by the file connectors: JSONL, TSV, Parquet, gzip, positions and malformed lines."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bhashaflow.core.records import RawRecord
from connectors.formats import (
    FormatError,
    TruncatedStreamError,
    gunzip_chunks,
    infer_format,
    iter_parquet_records,
    iter_text_records,
    mark_last,
    sniff_gzip,
)


def _rows(n: int) -> list[dict[str, str]]:
    return [
        {"src": f"Sentence number {i}.", "tgt": f"वाक्य संख्या {i}।", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
        for i in range(n)
    ]


def _jsonl(rows: list[dict[str, str]]) -> bytes:
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in rows)


def _chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pairs.jsonl", "jsonl"),
        ("pairs.JSON", "jsonl"),
        ("a/b/pairs.ndjson.gz", "jsonl"),
        ("x.tsv", "tsv"),
        ("x.txt.gz", "tsv"),
        ("corpora/x.parquet", "parquet"),
    ],
)
def test_infer_format_from_name(name: str, expected: str) -> None:
    assert infer_format(name) == expected


def test_declared_format_wins_and_unknown_names_are_refused() -> None:
    assert infer_format("dump.bin", "tsv") == "tsv"
    with pytest.raises(FormatError, match="dump.bin.*set the source's format"):
        infer_format("dump.bin")
    with pytest.raises(FormatError):
        infer_format("pairs.gz")


@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1 << 20])
def test_jsonl_records_refs_and_positions_do_not_depend_on_chunking(chunk_size: int) -> None:
    rows = _rows(5)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    data = lines[0] + b"\n\n" + lines[1] + b"\n   \n" + b"\n".join(lines[2:])  # blanks; no final newline
    records = list(iter_text_records(_chunked(data, chunk_size), "jsonl", "pairs.jsonl", base={"k": 1}))
    assert [r.row for r in records] == rows
    assert [r.ref for r in records] == [
        "pairs.jsonl:1",
        "pairs.jsonl:3",
        "pairs.jsonl:5",
        "pairs.jsonl:6",
        "pairs.jsonl:7",
    ]
    assert [r.position["line"] for r in records] == [1, 3, 5, 6, 7]
    # offset is the byte just after each record's line (the data's end for the last, unterminated one).
    line_ends = [i + 1 for i, byte in enumerate(data) if byte == ord("\n")] + [len(data)]
    assert [r.position["offset"] for r in records] == [line_ends[n - 1] for n in (1, 3, 5, 6, 7)]
    assert records[-1].position == {"k": 1, "line": 7, "offset": len(data)}
    assert all(r.error is None for r in records)


def test_resuming_at_every_offset_yields_exactly_the_rest() -> None:
    data = _jsonl(_rows(6)).replace(b"\n", b"\n\n", 2)
    everything = list(iter_text_records([data], "jsonl", "p.jsonl"))
    for k, record in enumerate(everything):
        pos = record.position
        by_offset = list(
            iter_text_records([data[pos["offset"] :]], "jsonl", "p.jsonl", line=pos["line"], offset=pos["offset"])
        )
        by_skipping = list(iter_text_records(_chunked(data, 5), "jsonl", "p.jsonl", skip_to_line=pos["line"]))
        assert by_offset == everything[k + 1 :]
        assert by_skipping == everything[k + 1 :]


def test_malformed_jsonl_lines_become_records_with_reasons() -> None:
    data = (
        b'{"src": "ok"}\n'
        b'{"src": "bad \xff\xfe bytes"}\n'
        b"[1, 2]\n"
        b'"just a string"\n'
        b"{not json\n"
        b'\xef\xbb\xbf{"src": "bom"}\r\n'
    )
    records = list(iter_text_records([data], "jsonl", "m.jsonl"))
    assert [(r.ref, r.row) for r in records if r.error is None] == [
        ("m.jsonl:1", {"src": "ok"}),
        ("m.jsonl:6", {"src": "bom"}),
    ]
    bad = {r.ref: r for r in records if r.error is not None}
    assert sorted(bad) == ["m.jsonl:2", "m.jsonl:3", "m.jsonl:4", "m.jsonl:5"]
    assert bad["m.jsonl:2"].error == "invalid UTF-8 at byte 13"
    assert bad["m.jsonl:2"].raw == '{"src": "bad \\xff\\xfe bytes"}'  # the bytes as they were
    assert [bad[ref].reason for ref in sorted(bad)] == ["invalid_utf8", "malformed", "malformed", "malformed"]
    assert bad["m.jsonl:3"].error == "JSON line is an array, not an object"
    assert bad["m.jsonl:4"].error == "JSON line is a string, not an object"
    assert bad["m.jsonl:5"].error is not None and bad["m.jsonl:5"].error.startswith("invalid JSON")
    assert bad["m.jsonl:5"].raw == "{not json"
    assert all(r.row is None for r in bad.values())


def test_json_lines_strict_json_refuses_are_read_for_the_validator_to_judge() -> None:
    data = b"".join(
        [
            b'{"src": "raw\x00nul", "tgt": "raw\ttab"}\n',  # raw controls: strict JSON refuses them
            b'{"src": "lone \\ud800 surrogate"}\n',
            b'{"src": NaN}\n',
            b"[" * 100_000 + b"\n",  # nested too deep for any parser
            b"\xef\xbb\xbf\xef\xbb\xbf{}\n",  # one BOM is dropped, not two
            b"\xef\xbb\xbf\n",
            b"\xef\xbb\xbfa\tb\n",
        ]
    )
    records = list(iter_text_records([data], "jsonl", "m.jsonl"))
    assert [r.row for r in records[:2]] == [{"src": "raw\x00nul", "tgt": "raw\ttab"}, {"src": "lone \ud800 surrogate"}]
    assert [(r.ref, r.reason, (r.error or "")[:12]) for r in records[2:]] == [
        ("m.jsonl:3", "malformed", "invalid JSON"),
        ("m.jsonl:4", "malformed", "invalid JSON"),
        ("m.jsonl:5", "malformed", "invalid JSON"),
        ("m.jsonl:7", "malformed", "invalid JSON"),
    ]
    tsv = list(iter_text_records([b"\xef\xbb\xbfa\tb\n\xef\xbb\xbfx\ty\n"], "tsv", "p.tsv"))
    assert [r.row for r in tsv] == [{"a": "x", "b": "y"}]  # a BOM before a data line goes too


def test_long_malformed_line_keeps_a_bounded_preview() -> None:
    records = list(iter_text_records([b"x" * 10_000 + b"\n"], "jsonl", "m.jsonl"))
    assert len(records) == 1 and records[0].raw == "x" * 500


def test_over_long_line_is_one_malformed_record_and_never_buffered_whole() -> None:
    data = b'{"a": 1}\n' + b'{"a": "' + b"y" * 5000 + b'"}\n{"a": 2}\n'
    records = list(iter_text_records(_chunked(data, 64), "jsonl", "m.jsonl", max_line_bytes=1000))
    assert [r.row for r in records] == [{"a": 1}, None, {"a": 2}]
    assert records[1].error is not None and "longer than 1000 bytes" in records[1].error
    assert records[1].raw is not None and records[1].raw.startswith('{"a": "yyy')
    assert records[1].position["offset"] == data.index(b'{"a": 2}')
    assert records[2].ref == "m.jsonl:3"


@pytest.mark.parametrize("chunk_size", [64, 700, 1500, 1 << 20])
@pytest.mark.parametrize("final_newline", [True, False])
def test_a_line_just_over_the_limit_is_malformed_however_it_is_chunked(chunk_size: int, final_newline: bool) -> None:
    # Just over: its end (and newline) can arrive in the chunk that completes it, before any size check.
    data = b'{"a": 1}\n{"a": "' + b"y" * 1100 + b'"}' + (b"\n" if final_newline else b"")
    records = list(iter_text_records(_chunked(data, chunk_size), "jsonl", "m.jsonl", max_line_bytes=1000))
    assert [r.row for r in records] == [{"a": 1}, None]
    assert records[1].error == "line is longer than 1000 bytes (1109 bytes); not line-delimited data?"
    assert records[1].ref == "m.jsonl:2" and records[1].position["offset"] == len(data)


def test_tsv_header_names_columns_and_wrong_column_counts_are_malformed() -> None:
    data = "src\ttgt\tsrc_lang\ttgt_lang\r\nHello\tनमस्ते\teng_Latn\thin_Deva\r\n\nbroken\tline\n".encode()
    records = list(iter_text_records(_chunked(data, 3), "tsv", "p.tsv"))
    header = ["src", "tgt", "src_lang", "tgt_lang"]
    assert records[0].row == {"src": "Hello", "tgt": "नमस्ते", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}
    assert records[0].ref == "p.tsv:2"
    assert records[0].position == {"header": header, "line": 2, "offset": data.index(b"\n\n") + 1}
    assert records[1].row is None and records[1].ref == "p.tsv:4"
    assert records[1].error == "TSV line has 2 columns, the header names 4"
    assert len(records) == 2
    bad_bytes = list(iter_text_records([b"a\tb\nx\t\xe0\xa4\n"], "tsv", "p.tsv"))
    assert [(r.ref, r.error, r.raw, r.reason) for r in bad_bytes] == [
        ("p.tsv:2", "invalid UTF-8 at byte 2", "x\t\\xe0\\xa4", "invalid_utf8")
    ]


def test_tsv_resume_by_offset_uses_the_header_from_the_position() -> None:
    data = b"en\thi\na\tb\nc\td\ne\tf\n"
    first = list(iter_text_records([data], "tsv", "p.tsv"))
    pos = first[0].position
    rest = list(
        iter_text_records(
            [data[pos["offset"] :]], "tsv", "p.tsv", line=pos["line"], offset=pos["offset"], header=pos["header"]
        )
    )
    assert rest == first[1:]
    assert [r.row for r in rest] == [{"en": "c", "hi": "d"}, {"en": "e", "hi": "f"}]


def test_tsv_header_must_name_each_column_once() -> None:
    with pytest.raises(FormatError, match="must name every column once"):
        list(iter_text_records([b"src\tsrc\na\tb\n"], "tsv", "p.tsv"))


def test_gzip_streams_decompress_across_members_and_chunks() -> None:
    data = gzip.compress(b"first\nsecond\n") + gzip.compress(b"third\n")
    assert b"".join(gunzip_chunks(_chunked(data, 3))) == b"first\nsecond\nthird\n"
    gzipped, chunks = sniff_gzip(iter(_chunked(data, 1)))
    assert gzipped and b"".join(chunks) == b"first\nsecond\nthird\n"
    plain, chunks = sniff_gzip(iter([b"{", b'"a": 1}\n']))
    assert not plain and b"".join(chunks) == b'{"a": 1}\n'


def test_truncated_gzip_is_an_error_not_an_early_end() -> None:
    data = gzip.compress(_jsonl(_rows(200)))
    with pytest.raises(TruncatedStreamError):
        b"".join(gunzip_chunks([data[: len(data) - 10]]))
    with pytest.raises(FormatError, match="corrupt gzip"):
        b"".join(gunzip_chunks([data[:10] + b"\x00garbage" * 20]))


def test_gzip_bomb_is_decompressed_in_bounded_pieces() -> None:
    bomb = gzip.compress(b"\n" * (64 << 20))
    sizes = [len(piece) for piece in gunzip_chunks([bomb])]
    assert sum(sizes) == 64 << 20 and max(sizes) <= 1 << 20


def _parquet(rows: list[dict[str, str]], row_group_size: int) -> io.BytesIO:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, row_group_size=row_group_size)
    buffer.seek(0)
    return buffer


def test_parquet_rows_in_batches_and_resume_across_row_groups() -> None:
    rows = _rows(25)
    records = list(iter_parquet_records(_parquet(rows, 7), "p.parquet", base={"key": "k"}, batch_rows=4))
    assert [r.row for r in records] == rows
    assert records[0].ref == "p.parquet:row 1" and records[0].position == {"key": "k", "row": 1}
    for start in (0, 3, 7, 8, 14, 24, 25):
        resumed = list(
            iter_parquet_records(_parquet(rows, 7), "p.parquet", base={"key": "k"}, start_row=start, batch_rows=4)
        )
        assert resumed == records[start:]


def test_not_a_parquet_file_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="not a readable Parquet file"):
        list(iter_parquet_records(io.BytesIO(b"PAR1 not really"), "p.parquet"))


def test_mark_last_flags_only_the_final_record() -> None:
    records = list(mark_last(iter_text_records([b'{"a":1}\n{"a":2}\n'], "jsonl", "p.jsonl")))
    assert [r.position.get("done") for r in records] == [None, True]
    assert records[1].row == {"a": 2} and records[1].ref == "p.jsonl:2"
    assert list(mark_last([])) == []


@pytest.mark.parametrize("chunk_size", [1, 5, 1 << 20])
def test_plain_text_lines_are_all_records_blank_ones_too(chunk_size: int) -> None:
    data = b"\xef\xbb\xbfOne.\r\n\nThree \xff.\n" + b"x" * 50 + b"\nLast, no newline"
    records = list(iter_text_records(_chunked(data, chunk_size), "text", "train.en", max_line_bytes=40))
    assert [(r.ref, r.row, r.reason if r.row is None else None) for r in records] == [
        ("train.en:1", {"text": "One."}, None),
        ("train.en:2", {"text": ""}, None),
        ("train.en:3", None, "invalid_utf8"),
        ("train.en:4", None, "malformed"),
        ("train.en:5", {"text": "Last, no newline"}, None),
    ]
    assert records[2].error == "invalid UTF-8 at byte 6" and records[2].raw == "Three \\xff."
    assert [r.position["offset"] for r in records] == [
        data.index(b"\n") + 1,
        data.index(b"\n") + 2,
        data.index(b"x"),
        data.rindex(b"\n") + 1,
        len(data),
    ]

    def seen(found: list[RawRecord]) -> list[tuple[object, ...]]:  # an over-long line's preview depends on chunking
        return [(r.position, r.ref, r.row, r.error) for r in found]

    for k, record in enumerate(records):
        pos = record.position
        assert seen(
            list(
                iter_text_records(
                    [data[pos["offset"] :]],
                    "text",
                    "train.en",
                    line=pos["line"],
                    offset=pos["offset"],
                    max_line_bytes=40,
                )
            )
        ) == seen(records[k + 1 :])
        assert seen(
            list(
                iter_text_records(
                    _chunked(data, 3), "text", "train.en", offset=0, skip_to_line=pos["line"], max_line_bytes=40
                )
            )
        ) == seen(records[k + 1 :])
