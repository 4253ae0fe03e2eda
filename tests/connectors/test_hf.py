"""HfConnector streaming local files through `datasets`, and failing fast when the hub is out of reach."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bhashaflow.config import SourceConfig
from bhashaflow.core.settings import Settings
from connectors import SourceError, open_connector
from connectors.hf import HfConnector, hub_reachable

ROWS = [
    {"english": "Good morning.", "hindi": "सुप्रभात।", "n": 1},
    {"english": "Thank you.", "hindi": "धन्यवाद।", "n": 2},
    {"english": "Where is the station?", "hindi": "स्टेशन कहाँ है?", "n": 3},
    {"english": "I am fine.", "hindi": "मैं ठीक हूँ।", "n": 4},
    {"english": "See you tomorrow.", "hindi": "कल मिलते हैं।", "n": 5},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def hf_source(uri: Path | str, **extra: Any) -> SourceConfig:
    return SourceConfig(name="corpus", kind="hf", uri=str(uri), **extra)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def offline_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return Settings()


@pytest.fixture
def http_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers every request with 404."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_local_jsonl_streams_rows_with_their_own_columns(tmp_path: Path, offline_settings: Settings) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    conn = HfConnector(hf_source(path), offline_settings)
    records = list(conn.iter_records())

    assert conn.name == "corpus"
    assert [r.row for r in records] == ROWS
    assert [r.position for r in records] == [{"consumed": n} for n in range(1, 6)]
    assert [r.ref for r in records] == [f"{path}:{n}" for n in range(1, 6)]


def test_local_parquet_streams_rows(tmp_path: Path, offline_settings: Settings) -> None:
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    records = list(HfConnector(hf_source(path), offline_settings).iter_records())
    assert [r.row for r in records] == ROWS


def test_local_tsv_keeps_every_cell_as_written(tmp_path: Path, offline_settings: Settings) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text('src\ttgt\n"quoted" text\tNA\n007\tnull\n', encoding="utf-8")
    rows = [r.row for r in HfConnector(hf_source(path), offline_settings).iter_records()]
    assert rows == [{"src": '"quoted" text', "tgt": "NA"}, {"src": "007", "tgt": "null"}]


def test_local_directory_reads_its_data_files_in_path_order(tmp_path: Path, offline_settings: Settings) -> None:
    data = tmp_path / "corpus"
    (data / "b").mkdir(parents=True)
    write_jsonl(data / "b" / "part-0.jsonl", ROWS[3:])
    write_jsonl(data / "a.jsonl", ROWS[:3])
    write_jsonl(data / ".hidden.jsonl", [{"english": "hidden", "hindi": "x", "n": 0}])
    (data / "_SUCCESS").write_text("", encoding="utf-8")
    (data / "README.md").write_text("not data\n", encoding="utf-8")

    records = list(HfConnector(hf_source(data), offline_settings).iter_records())
    assert [r.row for r in records] == ROWS
    assert records[-1].ref == f"{data}:5"


def test_local_copy_of_a_hub_repo_reads_the_configured_split(tmp_path: Path, offline_settings: Settings) -> None:
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(ROWS[:4]), tmp_path / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[4:]), tmp_path / "data" / "test-00000-of-00001.parquet")
    (tmp_path / "README.md").write_text("# a dataset card\n", encoding="utf-8")

    train = HfConnector(hf_source(tmp_path), offline_settings)
    assert [r.row for r in train.iter_records()] == ROWS[:4]
    test = HfConnector(hf_source(tmp_path, split="test"), offline_settings)
    assert [r.row for r in test.iter_records()] == ROWS[4:]
    with pytest.raises(SourceError, match=r"has no split 'validation' \(found: test, train\)"):
        next(HfConnector(hf_source(tmp_path, split="validation"), offline_settings).iter_records())


def test_directory_of_mixed_formats_needs_a_format(tmp_path: Path, offline_settings: Settings) -> None:
    write_jsonl(tmp_path / "a.jsonl", ROWS[:2])
    pq.write_table(pa.Table.from_pylist(ROWS[2:]), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"mixes formats \(\.jsonl, \.parquet\)"):
        next(HfConnector(hf_source(tmp_path), offline_settings).iter_records())
    picked = HfConnector(hf_source(tmp_path, format="parquet"), offline_settings)
    assert [r.row for r in picked.iter_records()] == ROWS[2:]


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_resume_from_every_position_continues_exactly_after_it(
    tmp_path: Path, offline_settings: Settings, suffix: str
) -> None:
    path = tmp_path / f"pairs.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    records = list(HfConnector(hf_source(path), offline_settings).iter_records())
    for i, record in enumerate(records):
        resumed = HfConnector(hf_source(path), offline_settings).iter_records(record.position)
        assert [(r.row, r.position) for r in resumed] == [(r.row, r.position) for r in records[i + 1 :]]


def test_a_position_from_elsewhere_is_refused(tmp_path: Path, offline_settings: Settings) -> None:
    conn = HfConnector(hf_source(write_jsonl(tmp_path / "p.jsonl", ROWS)), offline_settings)
    with pytest.raises(SourceError, match="does not belong"):
        next(conn.iter_records({"direction_index": 0, "line": 2}))


def test_unparseable_local_file_fails_the_source_naming_the_file(tmp_path: Path, offline_settings: Settings) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text('{"english": "ok", "hindi": "ठीक"}\nthis is not json\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"'corpus': cannot read .*broken\.jsonl after row 0"):
        list(HfConnector(hf_source(path), offline_settings).iter_records())


def test_missing_local_path_is_a_source_error(tmp_path: Path, offline_settings: Settings) -> None:
    with pytest.raises(SourceError, match=r"local path .*nowhere\.jsonl does not exist"):
        HfConnector(hf_source(tmp_path / "nowhere.jsonl"), offline_settings)


def test_hub_dataset_fails_fast_when_hf_hub_offline_is_set(offline_settings: Settings) -> None:
    conn = HfConnector(hf_source("some-org/some-dataset"), offline_settings)
    began = time.monotonic()
    with pytest.raises(SourceError) as err:
        next(conn.iter_records())
    assert time.monotonic() - began < 5
    message = str(err.value)
    assert "source 'corpus'" in message
    assert "the Hugging Face Hub is not reachable (offline; HF_HUB_OFFLINE is set)" in message
    assert "point uri at a local copy" in message


def test_hub_dataset_fails_fast_when_the_endpoint_does_not_answer() -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(hf_hub_offline=False, hf_endpoint=endpoint)
    conn = open_connector(hf_source("some-org/some-dataset", split="validation"), settings, ["eng_Latn-hin_Deva"])
    began = time.monotonic()
    with pytest.raises(SourceError, match=rf"not reachable \(offline; {endpoint} did not answer\)"):
        next(conn.iter_records())
    assert time.monotonic() - began < 5


def test_hub_probe_tells_an_answering_server_from_a_closed_port(http_server: str) -> None:
    assert hub_reachable(http_server, timeout_s=3) is True
    began = time.monotonic()
    assert hub_reachable(f"http://127.0.0.1:{closed_port()}", timeout_s=3) is False
    assert time.monotonic() - began < 1  # a refused connection is not waited out
