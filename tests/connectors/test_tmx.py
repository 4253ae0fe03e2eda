"""TmxConnector: TMX 1.4 from a local folder, moto's S3 server and a real HTTP server that drops connections;
language tags, inline markup, units missing a language, malformed files, resume, and flat memory."""

from __future__ import annotations

import gzip
import json
import logging
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pydantic
import pytest
from servers import FaultyHTTPServer, S3Server

from bhashaflow.config import PipelineConfig, SourceConfig, SourceRetryConfig
from bhashaflow.core.names import QUARANTINE
from bhashaflow.core.records import RawRecord
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import load_manifest, stage_source, write_shards
from connectors import SourceError, TransientSourceError, open_connector
from connectors.tmx import TmxConnector, TmxParser

LANGS = {"src": "eng_Latn", "tgt": "hin_Deva"}
HI = ["यह पहला वाक्य है", "दिल्ली भारत की राजधानी है", "मुझे चाय पसंद है", "आज मौसम अच्छा है"]
FAST = {"base_delay_s": 0.002, "max_delay_s": 0.01}
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE tmx SYSTEM "tmx14.dtd">\n<tmx version="1.4">\n'
    '  <header creationtool="test" creationtoolversion="1" segtype="sentence" o-tmf="none" adminlang="en-US" '
    'srclang="en-US" datatype="plaintext"/>\n  <body>\n'
)
TAIL = "  </body>\n</tmx>\n"


def unit(i: int, en: str | None = None, hi: str | None = None, tags: tuple[str, str] = ("en-US", "hi-IN")) -> str:
    """One <tu> on three lines: English and Hindi tuvs (either left out when passed as "")."""
    en = f"This is sentence {i}." if en is None else en
    hi = f"{HI[i % len(HI)]} {i}" if hi is None else hi
    tuvs = "".join(
        f'<tuv xml:lang="{tag}"><seg>{seg}</seg></tuv>' for tag, seg in zip(tags, (en, hi), strict=True) if seg != ""
    )
    return f'    <tu tuid="{i}">\n      {tuvs}\n    </tu>\n'


def tmx(units: list[str]) -> bytes:
    return (HEAD + "".join(units) + TAIL).encode()


def pairs(n: int, start: int = 0) -> list[dict[str, str]]:
    return [
        {"src": f"This is sentence {i}.", "tgt": f"{HI[i % len(HI)]} {i}", "tuid": str(i)}
        for i in range(start, start + n)
    ]


def connector(uri: str | Path, **retry: float) -> TmxConnector:
    source = SourceConfig(name="memory", kind="tmx", uri=str(uri), langs=LANGS)
    return TmxConnector(source, Settings(), SourceRetryConfig(**{**FAST, **retry}))


def rows_of(records: list[RawRecord]) -> list[object]:
    return [r.row for r in records]


@pytest.mark.parametrize("gz", [False, True])
def test_units_from_a_local_file(tmp_path: Path, gz: bool) -> None:
    data = tmx([unit(i) for i in range(200)])
    path = tmp_path / ("memory.tmx.gz" if gz else "memory.tmx")
    path.write_bytes(gzip.compress(data) if gz else data)
    records = list(connector(path).iter_records())
    assert rows_of(records) == pairs(200)
    assert [r.ref for r in records][:2] == [f"{path.name}:tu 1", f"{path.name}:tu 2"]
    assert records[-1].position == {"unit": 200, "done": True}


def test_units_from_s3(s3_server: S3Server) -> None:
    s3_server.create_bucket("corpora")
    s3_server.put("corpora", "tm/memory.tmx.gz", gzip.compress(tmx([unit(i) for i in range(150)])))
    source = SourceConfig(name="lake", kind="tmx", uri="s3://corpora/tm/memory.tmx.gz", langs=LANGS)
    records = list(open_connector(source, Settings(), []).iter_records())
    assert rows_of(records) == pairs(150)


def test_units_over_http(http_server: FaultyHTTPServer) -> None:
    (http_server.root / "memory.tmx").write_bytes(tmx([unit(i) for i in range(150)]))
    assert rows_of(list(connector(http_server.url("memory.tmx")).iter_records())) == pairs(150)
    assert http_server.plan.count("GET") == 1


def test_language_tags_map_to_flores_codes_and_inline_markup_is_reduced_to_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = [
        '<tu><tuv xml:lang="EN-us"><seg>Press <bpt i="1" x="1">&lt;b&gt;</bpt>Save<ept i="1">&lt;/b&gt;</ept> '
        '<ph x="2">{1}</ph>now, <hi type="em">please</hi>.</seg></tuv>'
        '<tuv xml:lang="hi-IN"><seg><it pos="begin">&lt;i&gt;</it>अभी सहेजें<ph>&lt;br/&gt;</ph> कृपया।</seg></tuv>'
        '<tuv xml:lang="ta"><seg>இப்போது</seg></tuv></tu>\n',
        '<tu><tuv lang="en"><seg>TMX 1.1 says lang &amp; that is read too.</seg></tuv>'
        '<tuv lang="hin_Deva"><seg>यह भी पढ़ा जाता है।</seg></tuv></tu>\n',  # no tuid: none in the row
        '<tu tuid="x"><tuv xml:lang="en-GB"><seg>First English.</seg></tuv><tuv xml:lang="en-US"><seg>Second.</seg>'
        '</tuv><tuv xml:lang="klingon"><seg>?</seg></tuv><tuv xml:lang="hi"><seg>पहला।</seg></tuv></tu>\n',
    ]
    (tmp_path / "m.tmx").write_bytes(tmx(body))
    with caplog.at_level(logging.WARNING, logger="connectors.tmx"):
        records = list(connector(tmp_path / "m.tmx").iter_records())
    assert rows_of(records) == [
        {"src": "Press Save now, please.", "tgt": "अभी सहेजें कृपया।"},
        {"src": "TMX 1.1 says lang & that is read too.", "tgt": "यह भी पढ़ा जाता है।"},
        {"src": "First English.", "tgt": "पहला।", "tuid": "x"},  # the first variant of a language
    ]
    assert "xml:lang 'klingon' matches no FLORES-200 language; segments in it not read: 1" in caplog.text


def test_utf16_memories_as_cat_tools_export_them(tmp_path: Path) -> None:
    data = tmx([unit(i) for i in range(20)]).decode().replace('encoding="UTF-8"', 'encoding="UTF-16"').encode("utf-16")
    (tmp_path / "m.tmx").write_bytes(data)
    assert rows_of(list(connector(tmp_path / "m.tmx").iter_records())) == pairs(20)
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]  # code units split across chunks
    assert [u.variants[1][1] for u in TmxParser().units(chunks)] == [p["tgt"] for p in pairs(20)]


def test_a_unit_missing_a_language_is_a_record_saying_so(tmp_path: Path) -> None:
    body = [unit(0), unit(1, hi=""), unit(2, tags=("en", "xx-YY")), unit(3, en="", hi="")]
    (tmp_path / "m.tmx").write_bytes(tmx(body))
    records = list(connector(tmp_path / "m.tmx").iter_records())
    assert [(r.ref, r.reason, r.error) for r in records[1:]] == [
        (
            "m.tmx:tu 2",
            "missing_field",
            "TMX unit at line 9 (tuid '1') has no segment in hin_Deva; its languages: en-US (eng_Latn)",
        ),
        (
            "m.tmx:tu 3",
            "missing_field",
            "TMX unit at line 12 (tuid '2') has no segment in hin_Deva; its languages: en (eng_Latn), "
            "xx-YY (unknown tag)",
        ),
        (
            "m.tmx:tu 4",
            "missing_field",
            "TMX unit at line 15 (tuid '3') has no segment in eng_Latn or hin_Deva; its languages: none",
        ),
    ]
    assert records[1].row is None and records[2].raw == '{"en": "This is sentence 2.", "xx-YY": "मुझे चाय पसंद है 2"}'


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            HEAD + '    <tu><tuv xml:lang="en"><seg>a</seg></tuv>\n  </body>\n</tmx>\n',
            r"malformed TMX at line 7, column 5: mismatched tag",
        ),
        (
            HEAD + unit(0) + '    <tu><tuv xml:lang="en"><seg>cut',
            r"malformed TMX at line 9, column 36: no element found \(the file ends before its </tmx>: cut short\?\)",
        ),
        ("<html><body>not a memory</body></html>", r"not a TMX file: its root element is <html>, not <tmx>"),
        ("", r"malformed TMX at line 1, column 1: no element found"),
        (
            '<?xml version="1.0"?>\n<!DOCTYPE tmx [<!ENTITY lol "lol">]>\n<tmx/>',
            r"TMX at line 2 declares entity 'lol'; entity declarations are refused",
        ),
    ],
)
def test_a_malformed_file_is_an_error_naming_its_line(tmp_path: Path, data: str, message: str) -> None:
    (tmp_path / "bad.tmx").write_bytes(data.encode())
    with pytest.raises(SourceError, match=rf"^source 'memory': {tmp_path}/bad\.tmx: ({message})") as err:
        list(connector(tmp_path / "bad.tmx").iter_records())
    assert not isinstance(err.value, TransientSourceError)


def test_an_overlong_unit_is_malformed_not_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import tmx as tmx_module

    monkeypatch.setattr(tmx_module, "MAX_UNIT_CHARS", 1000)
    (tmp_path / "m.tmx").write_bytes(tmx([unit(0), unit(1, en="x" * 5000), unit(2)]))
    records = list(connector(tmp_path / "m.tmx").iter_records())
    assert [r.reason for r in records if r.row is None] == ["malformed"]
    assert records[1].error == "TMX unit at line 9 (tuid '1') holds over 1000 characters of text"
    assert rows_of(records)[2] == pairs(1, 2)[0]


@pytest.mark.parametrize("gz", [False, True])
def test_a_fresh_connector_resumes_from_every_position(tmp_path: Path, gz: bool) -> None:
    data = tmx([unit(i, hi="" if i == 7 else None) for i in range(30)])
    path = tmp_path / "m.tmx"
    path.write_bytes(gzip.compress(data) if gz else data)
    everything = list(connector(path).iter_records())
    for k, record in enumerate(everything):
        position = json.loads(json.dumps(record.position))
        assert list(connector(path).iter_records(position)) == everything[k + 1 :]


@pytest.mark.parametrize("name", ["memory.tmx", "memory.tmx.gz"])
def test_a_dropped_connection_is_read_again_and_the_units_handed_out_skipped(
    http_server: FaultyHTTPServer, name: str
) -> None:
    data = tmx([unit(i) for i in range(3000)])
    body = gzip.compress(data) if name.endswith(".gz") else data
    (http_server.root / name).write_bytes(body)
    http_server.plan.drop(after_bytes=len(body) // 2)
    if name.endswith(".gz"):  # a plain file cut short with a matching length is a broken file, not a retry
        http_server.plan.truncate(after_bytes=len(body) * 3 // 4)
    records = list(connector(http_server.url(name)).iter_records())
    assert rows_of(records) == pairs(3000)
    assert [r.position["unit"] for r in records] == list(range(1, 3001))
    faults = ["drop", "truncate", None] if name.endswith(".gz") else ["drop", None]
    assert [r.fault for r in http_server.plan.requests] == faults
    assert all(r.range is None for r in http_server.plan.requests)


def test_persistent_failures_give_up_naming_the_file(http_server: FaultyHTTPServer) -> None:
    (http_server.root / "memory.tmx").write_bytes(tmx([unit(0)]))
    http_server.plan.fail(times=100, status=503)
    url = http_server.url("memory.tmx")
    with pytest.raises(TransientSourceError) as err:
        list(connector(url, attempts=3).iter_records())
    assert str(err.value) == (
        f"source 'memory': reading {url} failed 3 times in a row; last error: "
        "RetryableStatus: HTTP 503 Service Unavailable"
    )


def test_the_config_names_what_tmx_sources_need() -> None:
    with pytest.raises(pydantic.ValidationError, match="kind tmx needs 'langs'"):
        SourceConfig(name="a", kind="tmx", uri="m.tmx")
    with pytest.raises(pydantic.ValidationError, match="'pattern' applies to kind aligned only"):
        SourceConfig(name="a", kind="tmx", uri="m.tmx", langs=LANGS, pattern="{lang}")


def generated_tmx(n: int) -> Iterator[bytes]:
    """A TMX of `n` units, made chunk by chunk as it is read (never whole in memory)."""
    yield HEAD.encode()
    for start in range(0, n, 200):
        yield "".join(unit(i) for i in range(start, min(n, start + 200))).encode()
    yield TAIL.encode()


def test_memory_stays_flat_in_file_size() -> None:
    peaks = []
    for n in (10_000, 40_000):
        tracemalloc.start()
        count = sum(1 for _ in TmxParser().units(generated_tmx(n)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.2 * peaks[0], peaks


# --- through staging and shards ------------------------------------------------------------------------------------


def make_config(tmp_path: Path, sources: list[dict[str, Any]]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "run_name": "tmx",
            "workdir": str(tmp_path / "runs"),
            "directions": ["eng_Latn-hin_Deva"],
            "sources": sources,
            "ingest": {"commit_rows": 40, "shard_rows": 100},
            "source_retry": {**FAST, "attempts": 3, "timeout_s": 5},
        }
    )


def ingest(config: PipelineConfig, run_uri: str) -> dict[str, Any]:
    staged = [
        stage_source(config, s, open_connector(s, Settings(), config.directions, config.source_retry), run_uri)
        for s in config.sources
    ]
    return write_shards(config, staged, run_uri)


def dirty_memory() -> bytes:
    """200 good units, 10 repeated, one without Hindi, one with an empty Hindi segment, one in Latin script."""
    units = [unit(i) for i in range(200)] + [unit(i) for i in range(50, 60)]
    units += [
        unit(300, hi=""),
        unit(301, hi=escape("<b></b>").replace("&lt;b&gt;&lt;/b&gt;", " ")),
        unit(302, hi="namaste"),
    ]
    return tmx(units)


def test_ingest_counts_units(tmp_path: Path) -> None:
    (tmp_path / "memory.tmx").write_bytes(dirty_memory())
    (tmp_path / "tamil.tmx").write_bytes(tmx([unit(i, hi="வணக்கம்", tags=("en", "ta")) for i in range(4)]))
    config = make_config(
        tmp_path,
        [
            {"name": "memory", "kind": "tmx", "uri": str(tmp_path / "memory.tmx"), "langs": LANGS},
            {
                "name": "tamil",
                "kind": "tmx",
                "uri": str(tmp_path / "tamil.tmx"),
                "langs": {"src": "eng_Latn", "tgt": "tam_Taml"},
            },
        ],
    )
    manifest = ingest(config, config.run_uri())
    counts = {
        name: {k: s[k] for k in ("read", "accepted", "duplicates", "rejected", "skipped")}
        for name, s in manifest["sources"].items()
    }
    assert counts == {
        "memory": {"read": 213, "accepted": 200, "duplicates": 10, "rejected": 3, "skipped": 0},
        "tamil": {"read": 4, "accepted": 0, "duplicates": 0, "rejected": 0, "skipped": 4},
    }
    assert manifest["rejected_by_reason"] == {"empty": 1, "missing_field": 1, "wrong_script": 1}
    quarantine = [json.loads(line) for line in (Path(config.run_uri()) / QUARANTINE).read_text().splitlines()]
    assert [(q["ref"], q["reason"]) for q in quarantine] == [
        ("memory.tmx:tu 211", "missing_field"),
        ("memory.tmx:tu 212", "empty"),
        ("memory.tmx:tu 213", "wrong_script"),
    ]


def test_ingest_over_http_resumes_after_giving_up_mid_file(http_server: FaultyHTTPServer, tmp_path: Path) -> None:
    body = dirty_memory()
    (http_server.root / "memory.tmx").write_bytes(body)
    source = {"name": "web", "kind": "tmx", "uri": http_server.url("memory.tmx"), "langs": LANGS}
    clean = ingest(make_config(tmp_path / "clean", [source]), str(tmp_path / "clean-run"))
    http_server.plan.clear()
    config = make_config(tmp_path, [source])
    run = Path(config.run_uri())
    http_server.plan.drop(after_bytes=len(body) * 3 // 5)
    http_server.plan.fail(times=10)
    with pytest.raises(TransientSourceError, match=r"^source 'web': reading http://.*/memory\.tmx failed 3 times"):
        ingest(config, str(run))
    progress = json.loads((run / "staging" / "web" / "progress.json").read_text())
    assert 80 <= progress["read"] < 213 and progress["position"] == {"unit": progress["read"]}
    assert load_manifest(str(run)) is None
    http_server.plan.clear()
    resumed = ingest(config, str(run))
    assert {k: v for k, v in resumed.items() if k not in ("run_id", "created_at")} == {
        k: v for k, v in clean.items() if k not in ("run_id", "created_at")
    }
    assert (run / QUARANTINE).read_bytes() == (tmp_path / "clean-run" / QUARANTINE).read_bytes()
