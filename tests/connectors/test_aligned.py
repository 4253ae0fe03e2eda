"""AlignedConnector: the OPUS, Samanantar and BPCC layouts from a local folder, moto's S3 server and a real HTTP
server that drops connections on demand; lock-step reading, resume, gzip, mismatched files, and the ingest
accounting of an aligned source (accepted, duplicates, rejected by reason, skipped)."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pydantic
import pytest
from servers import FaultyHTTPServer, S3Server

from bhashaflow.config import PipelineConfig, SourceConfig, SourceRetryConfig
from bhashaflow.core.names import QUARANTINE
from bhashaflow.core.records import RawRecord
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import load_manifest, stage_source, write_shards
from connectors import SourceError, TransientSourceError, files, open_connector
from connectors.aligned import AlignedConnector

LANGS = {"src": "eng_Latn", "tgt": "hin_Deva"}
HI = ["यह पहला वाक्य है", "दिल्ली भारत की राजधानी है", "मुझे चाय पसंद है", "आज मौसम अच्छा है"]
# layout -> (folder, source file, target file, a pattern naming both without wildcards)
LAYOUTS = {
    "opus": ("en-hi", "OPUS-100.en-hi.en", "OPUS-100.en-hi.hi", "OPUS-100.en-hi.{lang}"),
    "samanantar": ("en-hi", "train.en", "train.hi", "train.{lang}"),
    "bpcc": ("eng_Latn-hin_Deva", "train.eng_Latn", "train.hin_Deva", "train.{lang}"),
}
FAST = {"base_delay_s": 0.002, "max_delay_s": 0.01}


def english(n: int, start: int = 0) -> list[str]:
    return [f"This is sentence {i}." for i in range(start, start + n)]


def hindi(n: int, start: int = 0) -> list[str]:
    return [f"{HI[i % len(HI)]} {i}" for i in range(start, start + n)]


def text(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def pack(data: bytes, gz: bool) -> bytes:
    return gzip.compress(data, mtime=0) if gz else data


def layout_files(layout: str, src: list[str], tgt: list[str], gz: str = "") -> dict[str, bytes]:
    """The layout's two files, relative path -> bytes; `gz` is "", "src" or "both"."""
    folder, src_name, tgt_name, _ = LAYOUTS[layout]
    src_gz, tgt_gz = gz in ("src", "both"), gz == "both"
    return {
        f"{folder}/{src_name}{'.gz' if src_gz else ''}": pack(text(src), src_gz),
        f"{folder}/{tgt_name}{'.gz' if tgt_gz else ''}": pack(text(tgt), tgt_gz),
        f"{folder}/README": b"not a side of the corpus\n",
    }


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for name, data in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def aligned(uri: str | Path, retry: dict[str, float] | None = None, **extra: Any) -> AlignedConnector:
    source = SourceConfig(name="corpus", kind="aligned", uri=str(uri), langs=LANGS, **extra)
    return AlignedConnector(source, Settings(), SourceRetryConfig(**{**FAST, **(retry or {})}))


def rows_of(records: list[RawRecord]) -> list[object]:
    return [r.row for r in records]


def pairs(n: int, start: int = 0) -> list[dict[str, str]]:
    return [{"src": s, "tgt": t} for s, t in zip(english(n, start), hindi(n, start), strict=True)]


def ref_label(tree: dict[str, bytes]) -> str:
    src, tgt = (name.rsplit("/", 1)[-1] for name in list(tree)[:2])
    return f"{src}+{tgt}"


@pytest.mark.parametrize("gz", ["", "src", "both"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_from_a_local_folder(tmp_path: Path, layout: str, gz: str) -> None:
    tree = layout_files(layout, english(500), hindi(500), gz)
    write_tree(tmp_path, tree)
    records = list(aligned(tmp_path / LAYOUTS[layout][0]).iter_records())  # the default pattern, *.{lang}
    assert rows_of(records) == pairs(500)
    assert [r.ref for r in records] == [f"{ref_label(tree)}:{i}" for i in range(1, 501)]
    assert records[-1].position["line"] == 500 and records[-1].position["done"] is True
    assert ("src_offset" in records[0].position) is (gz == "")
    assert ("tgt_offset" in records[0].position) is (gz != "both")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_from_s3(s3_server: S3Server, layout: str) -> None:
    s3_server.create_bucket("corpora")
    tree = layout_files(layout, english(300), hindi(300), gz="src")
    for name, data in tree.items():
        s3_server.put("corpora", f"{layout}/{name}", data)
    folder = f"s3://corpora/{layout}/{LAYOUTS[layout][0]}"
    records = list(
        open_connector(
            SourceConfig(name="lake", kind="aligned", uri=folder, langs=LANGS), Settings(), []
        ).iter_records()
    )
    assert rows_of(records) == pairs(300)
    assert records[0].ref == f"{ref_label(tree)}:1"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_over_http(http_server: FaultyHTTPServer, layout: str) -> None:
    tree = layout_files(layout, english(300), hindi(300), gz="both")
    write_tree(http_server.root / layout, tree)
    folder, _, _, pattern = LAYOUTS[layout]
    records = list(aligned(http_server.url(f"{layout}/{folder}"), pattern=pattern).iter_records())
    assert rows_of(records) == pairs(300)
    assert records[-1].ref == f"{ref_label(tree)}:300"
    assert http_server.plan.count("GET") == 2  # one GET a file; the names were found with HEAD requests


def test_named_files_are_relative_to_the_folder_or_urls_of_their_own(
    http_server: FaultyHTTPServer, tmp_path: Path
) -> None:
    write_tree(http_server.root, layout_files("samanantar", english(20), hindi(20)))
    named = aligned(http_server.url("en-hi"), files={"src": "train.en", "tgt": "train.hi"})
    assert rows_of(list(named.iter_records())) == pairs(20)
    (tmp_path / "local.en").write_bytes(text(english(20)))
    mixed = aligned(tmp_path, files={"src": "local.en", "tgt": http_server.url("en-hi/train.hi")})
    assert rows_of(list(mixed.iter_records())) == pairs(20)


def test_a_web_server_cannot_be_globbed(http_server: FaultyHTTPServer) -> None:
    write_tree(http_server.root, layout_files("samanantar", english(5), hindi(5)))
    with pytest.raises(SourceError, match=r"a web server cannot be listed .*use a pattern without wildcards"):
        list(aligned(http_server.url("en-hi")).iter_records())


def test_a_pattern_must_name_one_file_per_side(tmp_path: Path) -> None:
    for split in ("train", "dev", "test"):
        (tmp_path / f"opus.en-hi-{split}.en").write_bytes(text(english(3)))
        (tmp_path / f"opus.en-hi-{split}.hi").write_bytes(text(hindi(3)))
    with pytest.raises(
        SourceError,
        match=r"3 files in .* match '\*\.\{lang\}' for src \(eng_Latn\): "
        r"opus\.en-hi-dev\.en, opus\.en-hi-test\.en, opus\.en-hi-train\.en",
    ):
        list(aligned(tmp_path).iter_records())
    assert len(list(aligned(tmp_path, pattern="opus.en-hi-train.{lang}").iter_records())) == 3
    (tmp_path / "opus.en-hi-train.en.gz").write_bytes(gzip.compress(text(english(3))))
    with pytest.raises(SourceError, match=r"2 files .* opus\.en-hi-train\.en, opus\.en-hi-train\.en\.gz"):
        list(aligned(tmp_path, pattern="opus.en-hi-train.{lang}").iter_records())
    with pytest.raises(
        SourceError,
        match=r"no tgt file \(hin_Deva\) in .* matches 'x\.\{lang\}' "
        r"\(looked for x\.hin_Deva, x\.hi, x\.hin, plain or \.gz\)",
    ):
        (tmp_path / "x.en").write_bytes(b"a\n")
        list(aligned(tmp_path, pattern="x.{lang}").iter_records())


@pytest.mark.parametrize(("n_src", "n_tgt"), [(5, 4), (4, 6)])
@pytest.mark.parametrize("gz", ["", "both"])
def test_files_of_different_lengths_are_an_error_naming_both(tmp_path: Path, n_src: int, n_tgt: int, gz: str) -> None:
    tree = layout_files("samanantar", english(n_src), hindi(n_tgt), gz)
    write_tree(tmp_path, tree)
    src, tgt = (str(tmp_path / name) for name in list(tree)[:2])
    expected = (
        f"source 'corpus': {src} has {n_src} lines but {tgt} has {n_tgt}; the two files of an aligned "
        "source must have as many lines, line N translating line N"
    )
    got: list[RawRecord] = []
    with pytest.raises(SourceError) as err:
        got.extend(aligned(tmp_path / "en-hi").iter_records())
    assert str(err.value) == expected
    assert not isinstance(err.value, TransientSourceError)
    # Resumed half-way, the counts are still those of the whole files.
    first = next(iter(aligned(tmp_path / "en-hi").iter_records()))
    with pytest.raises(SourceError) as err:
        list(aligned(tmp_path / "en-hi").iter_records(first.position))
    assert str(err.value) == expected


def test_undecodable_and_blank_lines_keep_their_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "train.en").write_bytes(b"One.\n\nThree \xff.\nFour.\r\n")
    (tmp_path / "train.hi").write_bytes("एक।\nदो।\nतीन।\n\ufeffचार।".encode())
    records = list(aligned(tmp_path).iter_records())
    assert [(r.ref, r.row, r.error, r.reason) for r in records] == [
        ("train.en+train.hi:1", {"src": "One.", "tgt": "एक।"}, None, "malformed"),
        ("train.en+train.hi:2", {"src": "", "tgt": "दो।"}, None, "malformed"),
        ("train.en+train.hi:3", None, "train.en:3: invalid UTF-8 at byte 6", "invalid_utf8"),
        ("train.en+train.hi:4", {"src": "Four.", "tgt": "चार।"}, None, "malformed"),
    ]
    assert records[2].raw == "Three \\xff."


@pytest.mark.parametrize("gz", ["", "src", "both"])
def test_a_fresh_connector_resumes_from_every_position(tmp_path: Path, gz: str) -> None:
    write_tree(tmp_path, layout_files("bpcc", english(40), hindi(40), gz))
    folder = tmp_path / "eng_Latn-hin_Deva"
    everything = list(aligned(folder).iter_records())
    for k, record in enumerate(everything):
        position = json.loads(json.dumps(record.position))  # as progress.json stores it
        assert list(aligned(folder).iter_records(position)) == everything[k + 1 :]


@pytest.mark.parametrize("ranges", [True, False])
def test_a_dropped_connection_resumes_both_files_after_the_last_row(
    http_server: FaultyHTTPServer, ranges: bool
) -> None:
    tree = layout_files("samanantar", english(3000), hindi(3000))
    write_tree(http_server.root, tree)
    http_server.ranges = ranges
    size = len(tree["en-hi/train.en"])
    http_server.plan.drop(after_bytes=size // 2, method="GET", path="/train.en")
    records = list(aligned(http_server.url("en-hi"), pattern="train.{lang}").iter_records())
    assert rows_of(records) == pairs(3000)
    assert [r.ref for r in records] == [f"train.en+train.hi:{i}" for i in range(1, 3001)]
    gets = [r for r in http_server.plan.requests if r.method == "GET"]
    assert [(r.path.rsplit("/", 1)[-1], r.fault) for r in gets] == [
        ("train.en", "drop"),
        ("train.hi", None),
        ("train.en", None),
        ("train.hi", None),
    ]
    # Both files are asked for from the byte after the last row handed out: one line, in both of them.
    starts = [int(r.range[len("bytes=") : -1]) for r in gets[2:] if r.range]
    assert len(starts) == 2
    data = [tree["en-hi/train.en"], tree["en-hi/train.hi"]]
    assert all(d[start - 1 : start] == b"\n" for d, start in zip(data, starts, strict=True))
    assert data[0][: starts[0]].count(b"\n") == data[1][: starts[1]].count(b"\n") > 1000
    assert starts[0] <= size // 2


def test_a_dropped_gzip_file_is_read_again_and_skipped(http_server: FaultyHTTPServer) -> None:
    tree = layout_files("samanantar", english(3000), hindi(3000), gz="both")
    write_tree(http_server.root, tree)
    http_server.plan.drop(after_bytes=len(tree["en-hi/train.hi.gz"]) // 2, method="GET", path="/train.hi.gz")
    records = list(aligned(http_server.url("en-hi"), pattern="train.{lang}").iter_records())
    assert rows_of(records) == pairs(3000)
    gets = [r for r in http_server.plan.requests if r.method == "GET"]
    assert len(gets) == 4 and all(r.range is None for r in gets)


def test_a_dropped_s3_object_resumes_with_a_range(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.create_bucket("corpora")
    tree = layout_files("bpcc", english(3000), hindi(3000))
    for name, data in tree.items():
        s3_server.put("corpora", name, data)
    size = len(tree["eng_Latn-hin_Deva/train.hin_Deva"])
    s3_server.plan.drop(after_bytes=size // 2, method="GET", path="train.hin_Deva", linger_s=0.2)
    monkeypatch.setattr(files, "CHUNK_BYTES", 16 * 1024)  # rows are handed out before the drop
    records = list(aligned("s3://corpora/eng_Latn-hin_Deva").iter_records())
    assert rows_of(records) == pairs(3000)
    gets = [r for r in s3_server.plan.requests if r.method == "GET" and "train.hin_Deva" in r.path]
    assert [r.fault for r in gets] == ["drop", None] and gets[1].range is not None


def test_persistent_failures_give_up_naming_the_file(http_server: FaultyHTTPServer) -> None:
    write_tree(http_server.root, layout_files("samanantar", english(50), hindi(50)))
    http_server.plan.fail(times=100, method="GET", path="/train.hi")
    url = http_server.url("en-hi/train.hi")
    with pytest.raises(TransientSourceError) as err:
        list(aligned(http_server.url("en-hi"), {"attempts": 3}, pattern="train.{lang}").iter_records())
    assert str(err.value) == (
        f"source 'corpus': reading {url} failed 3 times in a row; last error: "
        "RetryableStatus: HTTP 500 Internal Server Error"
    )


def test_a_missing_named_file_fails_at_once(tmp_path: Path, http_server: FaultyHTTPServer) -> None:
    (tmp_path / "train.en").write_bytes(b"a\n")
    with pytest.raises(SourceError, match=r"cannot read .*train\.hi: no such file"):
        list(aligned(tmp_path, files={"src": "train.en", "tgt": "train.hi"}).iter_records())
    with pytest.raises(SourceError, match=r"GET .*/nowhere\.hi answered 404"):
        list(aligned(tmp_path, files={"src": "train.en", "tgt": http_server.url("nowhere.hi")}).iter_records())


def test_the_config_names_what_aligned_sources_need() -> None:
    with pytest.raises(pydantic.ValidationError, match="kind aligned needs 'langs'"):
        SourceConfig(name="a", kind="aligned", uri="x")
    with pytest.raises(pydantic.ValidationError, match=r"must hold \{lang\}"):
        SourceConfig(name="a", kind="aligned", uri="x", langs=LANGS, pattern="train.en")
    with pytest.raises(pydantic.ValidationError, match="'pattern' or 'files', not both"):
        SourceConfig(name="a", kind="aligned", uri="x", langs=LANGS, pattern="{lang}", files={"src": "a", "tgt": "b"})
    with pytest.raises(pydantic.ValidationError, match="'files' applies to kind aligned only"):
        SourceConfig(name="a", kind="http", uri="http://x/a.jsonl", files={"src": "a", "tgt": "b"})
    with pytest.raises(pydantic.ValidationError, match="'fields' and 'format' do not apply to kind aligned"):
        SourceConfig(name="a", kind="aligned", uri="x", langs=LANGS, fields={"src": "en"})
    # Sources that do not use the new keys dump (and so hash into run ids) as they did before them.
    assert set(SourceConfig(name="a", kind="http", uri="http://x/a.jsonl").model_dump()) == {
        "name",
        "kind",
        "uri",
        "split",
        "format",
        "fields",
        "langs",
        "collection",
        "endpoint_url",
        "subset",
    }


def test_memory_stays_flat_in_corpus_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "CHUNK_BYTES", 16 * 1024)  # many chunks even for a small test corpus
    peaks = []
    for n in (20_000, 80_000):  # large enough that a gzip chunk inflates to its full size in both
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "train.en").write_bytes(text(english(n)))
        (folder / "train.hi.gz").write_bytes(gzip.compress(text(hindi(n)), compresslevel=1))
        tracemalloc.start()
        count = sum(1 for _ in aligned(folder).iter_records())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert count == n
    assert peaks[1] < 1.2 * peaks[0], peaks


# --- through staging and shards: the accounting every source has ----------------------------------------------


def make_config(tmp_path: Path, sources: list[dict[str, Any]], **retry: float) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "run_name": "aligned",
            "workdir": str(tmp_path / "runs"),
            "directions": ["eng_Latn-hin_Deva"],
            "sources": sources,
            "ingest": {"commit_rows": 40, "shard_rows": 100},
            "source_retry": {**FAST, "attempts": 3, "timeout_s": 5, **retry},
        }
    )


def ingest(config: PipelineConfig, run_uri: str) -> dict[str, Any]:
    staged = [
        stage_source(config, s, open_connector(s, Settings(), config.directions, config.source_retry), run_uri)
        for s in config.sources
    ]
    return write_shards(config, staged, run_uri)


def dirty_corpus() -> tuple[bytes, bytes]:
    """300 good pairs, 10 repeated, then an empty target, a Latin target and an undecodable source line."""
    src = english(300) + english(10, 100)
    tgt = hindi(300) + hindi(10, 100)
    src_bytes = text(src + ["Empty target", "Latin target"]) + b"Bad \xff bytes\n"
    tgt_bytes = text(tgt + ["", "namaste duniya", "कुछ भी"])
    return src_bytes, tgt_bytes


def test_ingest_counts_rejects_with_line_numbers_and_skips(tmp_path: Path) -> None:
    src, tgt = dirty_corpus()
    write_tree(
        tmp_path,
        {
            "hi/train.en": src,
            "hi/train.hi.gz": gzip.compress(tgt),
            "ta/train.en": text(english(5)),
            "ta/train.ta": text(["வணக்கம்"] * 5),
        },
    )
    config = make_config(
        tmp_path,
        [
            {"name": "samanantar", "kind": "aligned", "uri": str(tmp_path / "hi"), "langs": LANGS},
            {
                "name": "tamil",
                "kind": "aligned",
                "uri": str(tmp_path / "ta"),
                "langs": {"src": "eng_Latn", "tgt": "tam_Taml"},
            },  # a direction not configured: skipped
        ],
    )
    manifest = ingest(config, config.run_uri())
    counts = {
        name: {k: s[k] for k in ("read", "accepted", "duplicates", "rejected", "skipped")}
        for name, s in manifest["sources"].items()
    }
    assert counts == {
        "samanantar": {"read": 313, "accepted": 300, "duplicates": 10, "rejected": 3, "skipped": 0},
        "tamil": {"read": 5, "accepted": 0, "duplicates": 0, "rejected": 0, "skipped": 5},
    }
    assert manifest["rejected_by_reason"] == {"empty": 1, "invalid_utf8": 1, "wrong_script": 1}
    assert manifest["sources"]["tamil"]["skipped_by_direction"] == {"eng_Latn-tam_Taml": 5}
    quarantine = [json.loads(line) for line in (Path(config.run_uri()) / QUARANTINE).read_text().splitlines()]
    assert [(q["ref"], q["reason"]) for q in quarantine] == [
        ("train.en+train.hi.gz:311", "empty"),
        ("train.en+train.hi.gz:312", "wrong_script"),
        ("train.en+train.hi.gz:313", "invalid_utf8"),
    ]
    assert quarantine[2]["detail"] == "train.en:313: invalid UTF-8 at byte 4"


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in manifest.items() if k not in ("run_id", "created_at")}


@pytest.mark.parametrize("gz", [False, True])
def test_ingest_over_http_resumes_after_giving_up_mid_file(
    http_server: FaultyHTTPServer, tmp_path: Path, gz: bool
) -> None:
    src, tgt = dirty_corpus()
    tgt_name = "train.hi.gz" if gz else "train.hi"
    write_tree(http_server.root, {"en-hi/train.en": src, f"en-hi/{tgt_name}": pack(tgt, gz)})
    source = {
        "name": "web",
        "kind": "aligned",
        "uri": http_server.url("en-hi"),
        "langs": LANGS,
        "pattern": "train.{lang}",
    }
    clean = ingest(make_config(tmp_path / "clean", [source]), str(tmp_path / "clean-run"))
    http_server.plan.clear()

    config = make_config(tmp_path, [source])
    run = Path(config.run_uri())
    http_server.plan.drop(after_bytes=len(src) * 3 // 5, method="GET", path="/train.en")  # part-way, then...
    http_server.plan.fail(times=10, method="GET", path="/train.en")  # ...a server down for longer than we wait
    with pytest.raises(TransientSourceError, match=r"^source 'web': reading http://.*/en-hi/train\.en failed 3 times"):
        ingest(config, str(run))
    progress = json.loads((run / "staging" / "web" / "progress.json").read_text())
    assert 120 <= progress["read"] < 313 and progress["position"]["line"] == progress["read"]
    assert load_manifest(str(run)) is None

    http_server.plan.clear()
    resumed = ingest(config, str(run))
    assert comparable(resumed) == comparable(clean)
    assert (run / QUARANTINE).read_bytes() == (tmp_path / "clean-run" / QUARANTINE).read_bytes()
    first_get = next(r for r in http_server.plan.requests if r.method == "GET" and r.path.endswith("train.en"))
    assert first_get.range == f"bytes={progress['position']['src_offset']}-"  # not the whole file again


@pytest.mark.parametrize("seed", range(20))
def test_ingest_over_http_under_random_faults_ends_as_the_clean_run(
    http_server: FaultyHTTPServer, tmp_path: Path, seed: int
) -> None:
    """Drops, 5xx and cut gzip bodies at random points of either file (HEAD probes included): the run ends with the
    clean manifest, or fails with a one-line error and a re-run without faults resumes to the clean manifest."""
    import random

    rng = random.Random(seed)
    src, tgt = dirty_corpus()
    tree = {"en-hi/train.en": src, "en-hi/train.hi.gz": gzip.compress(tgt)}
    write_tree(http_server.root, tree)
    source = {
        "name": "web",
        "kind": "aligned",
        "uri": http_server.url("en-hi"),
        "langs": LANGS,
        "pattern": "train.{lang}",
    }
    clean = ingest(make_config(tmp_path / "clean", [source]), str(tmp_path / "clean-run"))
    http_server.plan.clear()
    http_server.ranges = rng.random() < 0.7
    for _ in range(rng.randint(1, 4)):
        name, data = rng.choice(list(tree.items()))
        path, cut, times, after = (
            "/" + name.rsplit("/", 1)[-1],
            rng.randrange(len(data)),
            rng.choice([1, 2, 3]),
            rng.choice([0, 1]),
        )
        kind = rng.choice(["drop", "status"] + (["truncate"] if name.endswith(".gz") else []))
        if kind == "drop":
            http_server.plan.drop(after_bytes=cut, times=times, path=path, after=after)
        elif kind == "status":
            http_server.plan.fail(times=times, status=rng.choice([500, 503]), path=path, after=after)
        else:
            http_server.plan.truncate(after_bytes=cut, times=times, path=path, after=after)
    config = make_config(tmp_path, [source])
    run = Path(config.run_uri())
    try:
        manifest = ingest(config, str(run))
    except TransientSourceError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(f"source 'web': reading {http_server.base_url}/en-hi")
        assert load_manifest(str(run)) is None
        http_server.plan.clear()
        manifest = ingest(config.model_copy(update={"source_retry": SourceRetryConfig(**FAST, attempts=6)}), str(run))
    assert comparable(manifest) == comparable(clean)
    assert (run / QUARANTINE).read_bytes() == (tmp_path / "clean-run" / QUARANTINE).read_bytes()


def test_credentials_in_the_uri_come_from_the_environment_and_never_show(
    http_server: FaultyHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(http_server.root, layout_files("samanantar", english(10), hindi(10)))
    monkeypatch.setenv("CORPUS_TOKEN", "s3cr3t-value")
    folder = http_server.url("en-hi").replace("http://", "http://reader:${CORPUS_TOKEN}@")
    assert rows_of(list(aligned(folder, pattern="train.{lang}").iter_records())) == pairs(10)
    http_server.plan.fail(times=100, method="GET")
    with pytest.raises(TransientSourceError) as err:
        list(aligned(folder, {"attempts": 2}, pattern="train.{lang}").iter_records())
    assert "s3cr3t" not in str(err.value) and "http://***@127.0.0.1" in str(err.value)
    monkeypatch.delenv("CORPUS_TOKEN")
    with pytest.raises(SourceError, match=r"its uri names \$\{CORPUS_TOKEN\}, which is not set"):
        aligned(folder)
