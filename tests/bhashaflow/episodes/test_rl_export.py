"""RL log export to a folder, moto's S3 server and a local HTTP endpoint, including a crash mid-export."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import PartServer, S3Server

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.export import RECORD_SCHEMA, decode_part, export_rl_logs, part_name
from bhashaflow.episodes.store import EpisodeStore, ExportBusy, NewEpisode
from connectors.retry import RetryPolicy
from connectors.sinks import SinkError, open_sink

REPO = Path(__file__).resolve().parents[3]
FAST = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)
RECORD_KEYS = [
    "episode_id",
    "time",
    "direction",
    "src_lang",
    "tgt_lang",
    "adapter_version",
    "base_model",
    "prompt",
    "response",
    "reward",
    "correction",
    "feedback_time",
    "feedback_seq",
    "latency_ms",
    "script_valid",
    "client",
    "feedback_client",  # added with named API clients, at the end
]


@pytest.fixture
def part_server() -> Iterator[PartServer]:
    with PartServer() as server:
        yield server


def _config(tmp_path: Path, target: str, **rl: Any) -> PipelineConfig:
    return config_from_dict(
        {
            "directions": ["eng_Latn-hin_Deva"],
            "serving": {"episodes_db": str(tmp_path / "episodes.db")},
            "rl_export": {"target": target, **rl},
        }
    )


def _serve(config: PipelineConfig, n: int, start: int = 1) -> list[int]:
    with EpisodeStore(config.serving.episodes_db) as store:
        return store.record(
            [
                NewEpisode(
                    direction="eng_Latn-hin_Deva",
                    src_lang="eng_Latn",
                    tgt_lang="hin_Deva",
                    adapter_version="v0001",
                    base_model="builtin:tiny-seq2seq",
                    input=f"text {i}",
                    output=f"पाठ {i}",
                    latency_ms=float(i),
                    script_valid=True,
                )
                for i in range(start, start + n)
            ]
        )


def _jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").split("\n") if line]


def _folder_records(folder: Path) -> list[dict[str, Any]]:
    return [r for p in sorted(folder.iterdir()) for r in _jsonl(p.read_bytes())]


def test_folder_export_writes_parts_named_by_id_range_and_a_rerun_exports_nothing(tmp_path: Path) -> None:
    config = _config(tmp_path, f"file://{tmp_path}/out")
    _serve(config, 7)
    with EpisodeStore(config.serving.episodes_db) as store:
        store.attach_feedback(2, -0.5, "सुधार")
    result = export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=3)
    names = [
        "episodes-000000000001-000000000003.jsonl",
        "episodes-000000000004-000000000006.jsonl",
        "episodes-000000000007-000000000007.jsonl",
    ]
    assert result == {"exported": 7, "parts": names, "target": f"file://{tmp_path}/out"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names
    records = _folder_records(tmp_path / "out")
    assert [r["episode_id"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert list(records[1]) == RECORD_KEYS
    assert {
        k: records[1][k] for k in ("prompt", "response", "reward", "correction", "direction", "adapter_version")
    } == {
        "prompt": "text 2",
        "response": "पाठ 2",
        "reward": -0.5,
        "correction": "सुधार",
        "direction": "eng_Latn-hin_Deva",
        "adapter_version": "v0001",
    }
    assert records[0]["reward"] is None and records[0]["base_model"] == "builtin:tiny-seq2seq"

    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=3) == {
        "exported": 0,
        "parts": [],
        "target": config.rl_export.target,
    }
    _serve(config, 2, start=8)
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=3)[
        "parts"
    ] == ["episodes-000000000008-000000000009.jsonl"]


def test_parquet_parts_carry_the_record_schema(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "pq"), format="parquet")
    _serve(config, 4)
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["parts"] == [
        "episodes-000000000001-000000000004.parquet"
    ]
    table = pq.read_table(tmp_path / "pq" / "episodes-000000000001-000000000004.parquet")
    assert table.schema.equals(RECORD_SCHEMA)
    assert table.column("prompt").to_pylist() == ["text 1", "text 2", "text 3", "text 4"]


def test_s3_export(tmp_path: Path, s3_server: S3Server) -> None:
    s3_server.create_bucket("rl-logs")
    config = _config(tmp_path, "s3://rl-logs/exports/plain")
    _serve(config, 5)
    assert (
        export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=2)["exported"]
        == 5
    )
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["exported"] == 0
    s3 = s3_server.client
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="rl-logs", Prefix="exports/plain/")["Contents"]]
    assert keys == [f"exports/plain/{part_name('all', a, b, 'jsonl')}" for a, b in [(1, 2), (3, 4), (5, 5)]]
    body = s3.get_object(Bucket="rl-logs", Key=keys[2])["Body"].read()
    assert [r["prompt"] for r in _jsonl(body)] == ["text 5"]


def test_http_export_posts_ndjson(tmp_path: Path, part_server: PartServer) -> None:
    config = _config(tmp_path, part_server.url)
    _serve(config, 3)
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["parts"] == [
        "episodes-000000000001-000000000003.jsonl"
    ]
    assert [r["episode_id"] for r in _jsonl(part_server.parts["episodes-000000000001-000000000003.jsonl"])] == [1, 2, 3]
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["exported"] == 0
    assert len(part_server.posts) == 1


def test_http_target_refuses_parquet(tmp_path: Path, part_server: PartServer) -> None:
    config = _config(tmp_path, part_server.url, format="parquet")
    with pytest.raises(ValueError, match="NDJSON"):
        export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))


def test_a_failed_upload_keeps_the_watermark_and_the_rerun_sends_the_same_part(
    tmp_path: Path, part_server: PartServer
) -> None:
    config = _config(tmp_path, part_server.url)
    _serve(config, 3)
    part_server.fail = [503, 503, 503]
    sink = open_sink(part_server.url, Settings(), FAST)
    with pytest.raises(SinkError, match="gave up after 3 attempts"):
        export_rl_logs(config, Settings(), sink=sink)
    with EpisodeStore(config.serving.episodes_db) as store:
        assert store.export_watermark(part_server.url, "all") == 0
    _serve(config, 2, start=4)  # served meanwhile: must not change the unconfirmed part's range
    result = export_rl_logs(config, Settings(), sink=sink)
    assert result["parts"] == ["episodes-000000000001-000000000003.jsonl", "episodes-000000000004-000000000005.jsonl"]
    assert part_server.posts.count("episodes-000000000001-000000000003.jsonl") == 4


def test_an_unconfirmed_part_is_resent_in_its_own_format_after_the_format_changed(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "out"))
    _serve(config, 3)
    (tmp_path / "out").write_text("a file where the folder should be")
    with pytest.raises(SinkError, match="cannot write"):
        export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings(), FAST))
    (tmp_path / "out").unlink()
    _serve(config, 2, start=4)
    parquet = _config(tmp_path, str(tmp_path / "out"), format="parquet")
    result = export_rl_logs(parquet, Settings(), sink=open_sink(parquet.rl_export.target, Settings(), FAST))
    assert result["parts"] == ["episodes-000000000001-000000000003.jsonl", "episodes-000000000004-000000000005.parquet"]
    assert [r["episode_id"] for r in _jsonl((tmp_path / "out" / result["parts"][0]).read_bytes())] == [1, 2, 3]
    assert pq.read_table(tmp_path / "out" / result["parts"][1]).column("episode_id").to_pylist() == [4, 5]


class _ServingWhileExporting:
    """A folder sink while the service keeps serving: two new episodes arrive during each part's write."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.sink = open_sink(config.rl_export.target, Settings())
        self.target = self.sink.target

    def write(self, name: str, data: bytes, content_type: str) -> None:
        _serve(self.config, 2, start=100)
        self.sink.write(name, data, content_type)


def test_episodes_served_during_an_export_go_into_the_next_run(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "out"))
    _serve(config, 4)
    result = export_rl_logs(config, Settings(), sink=_ServingWhileExporting(config), part_rows=2)
    assert result["parts"] == ["episodes-000000000001-000000000002.jsonl", "episodes-000000000003-000000000004.jsonl"]
    with EpisodeStore(config.serving.episodes_db) as store:
        assert store.count() == 8
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=4)[
        "parts"
    ] == ["episodes-000000000005-000000000008.jsonl"]


def test_exports_to_one_target_take_turns_and_a_killed_holder_frees_its_turn(tmp_path: Path) -> None:
    db = tmp_path / "episodes.db"
    with EpisodeStore(db) as first, EpisodeStore(db) as second:
        with first.export_lock("s3://b/rl", "all"):
            with (
                pytest.raises(ExportBusy, match="another export to this target still holds .*episodes.db.export-"),
                second.export_lock("s3://b/rl", "all", wait_s=0.2),
            ):
                pass
            with (
                second.export_lock("s3://b/other", "all", wait_s=0),
                second.export_lock("s3://b/rl", "feedback", wait_s=0),
            ):
                pass  # other targets and modes have turns of their own
        with second.export_lock("s3://b/rl", "all", wait_s=0):
            pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom bhashaflow.episodes.store import EpisodeStore\n"
            f"with EpisodeStore({str(db)!r}).export_lock('s3://b/rl', 'all'):\n    print('held', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with EpisodeStore(db) as store:
            with pytest.raises(ExportBusy):
                with store.export_lock("s3://b/rl", "all", wait_s=0.1):
                    pass
            holder.send_signal(signal.SIGKILL)
            holder.wait(timeout=30)
            with store.export_lock("s3://b/rl", "all", wait_s=5):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_only_with_feedback_exports_rated_episodes_whenever_feedback_arrives(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "fb"), only_with_feedback=True)
    _serve(config, 5)
    with EpisodeStore(config.serving.episodes_db) as store:
        store.attach_feedback(4, 1.0)
        store.attach_feedback(2, 0.0)
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["parts"] == [
        "feedback-000000000001-000000000002.jsonl"
    ]
    with EpisodeStore(config.serving.episodes_db) as store:
        store.attach_feedback(1, 0.5)  # late feedback on an old episode
        store.attach_feedback(4, -1.0, "नया")  # replaced feedback: exported again, newer seq
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["parts"] == [
        "feedback-000000000003-000000000004.jsonl"
    ]
    records = _folder_records(tmp_path / "fb")
    assert [(r["episode_id"], r["reward"], r["feedback_seq"]) for r in records] == [
        (4, 1.0, 1),
        (2, 0.0, 2),
        (1, 0.5, 3),
        (4, -1.0, 4),
    ]
    assert export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["exported"] == 0


_KILLED_EXPORT = """
import json, os, sys
from bhashaflow.config import config_from_dict
from bhashaflow.episodes.store import EpisodeStore
from bhashaflow.episodes.export import export_rl_logs
from bhashaflow.core.settings import Settings
from connectors.sinks import open_sink

def die_after_upload(self, part):
    os._exit(17)  # the part is uploaded and verified; the process dies before the watermark moves

EpisodeStore.finish_export_part = die_after_upload
config = config_from_dict(json.loads(sys.argv[1]))
export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()), part_rows=3)
"""


@pytest.mark.parametrize("kind", ["folder", "http", "s3"])
def test_a_kill_between_upload_and_watermark_leaves_no_duplicate_and_no_gap(
    kind: str, tmp_path: Path, part_server: PartServer, s3_server: S3Server
) -> None:
    s3_server.create_bucket("rl-logs")
    target = {"folder": str(tmp_path / "out"), "http": part_server.url, "s3": f"s3://rl-logs/exports/{tmp_path.name}"}[
        kind
    ]
    config = _config(tmp_path, target)
    _serve(config, 4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # s3_server put its endpoint and credentials in os.environ
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, json.dumps(config.model_dump(mode="json"))],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 17, proc.stderr

    def stored() -> dict[str, bytes]:
        if kind == "folder":
            return {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
        if kind == "http":
            return dict(part_server.parts)
        s3 = s3_server.client
        listing = s3.list_objects_v2(Bucket="rl-logs", Prefix=f"exports/{tmp_path.name}/").get("Contents", [])
        return {
            o["Key"].rsplit("/", 1)[1]: s3.get_object(Bucket="rl-logs", Key=o["Key"])["Body"].read() for o in listing
        }

    names = [part_name("all", a, b, "jsonl") for a, b in [(1, 3), (4, 6), (7, 7)]]
    assert sorted(stored()) == names[:1]  # uploaded before the kill
    with EpisodeStore(config.serving.episodes_db) as store:
        assert store.export_watermark(target, "all") == 0
    _serve(config, 3, start=5)  # more traffic before the re-run

    settings = Settings()
    result = export_rl_logs(config, settings, sink=open_sink(config.rl_export.target, settings), part_rows=3)
    assert result == {"exported": 7, "parts": names, "target": target}
    if kind == "http":
        assert part_server.posts == [names[0], *names]  # the first part was sent again, under the same key
    parts = stored()
    assert sorted(parts) == names
    ids = [r["episode_id"] for name in names for r in _jsonl(parts[name])]
    assert ids == [1, 2, 3, 4, 5, 6, 7]
    assert (
        export_rl_logs(config, settings, sink=open_sink(config.rl_export.target, settings), part_rows=3)["exported"]
        == 0
    )


def test_parts_are_valid_utf8_ndjson_for_any_text(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "u"))
    with EpisodeStore(config.serving.episodes_db) as store:
        store.record(
            [
                NewEpisode(
                    "eng_Latn-hin_Deva",
                    "eng_Latn",
                    "hin_Deva",
                    "v0001",
                    "b",
                    'a "quoted"\nline\u2028x',
                    "नमस्ते\t\x00",
                    1.0,
                    False,
                )
            ]
        )
    export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))
    (part,) = (tmp_path / "u").iterdir()
    lines = part.read_bytes().split(b"\n")
    assert len(lines) == 2 and lines[1] == b""
    assert len(lines[0].decode("utf-8").splitlines()) == 1
    record = json.load(io.BytesIO(lines[0]))
    assert (record["prompt"], record["response"], record["script_valid"]) == (
        'a "quoted"\nline\u2028x',
        "नमस्ते\t\x00",
        False,
    )


def test_records_name_the_client_of_the_episode_and_of_its_feedback(tmp_path: Path) -> None:
    config = _config(tmp_path, str(tmp_path / "out"), format="parquet")
    with EpisodeStore(config.serving.episodes_db) as store:
        ids = store.record(
            [
                NewEpisode("eng_Latn-hin_Deva", "eng_Latn", "hin_Deva", "v0001", "b", f"t{i}", "x", 1.0, True, client)
                for i, client in enumerate(["web", "anonymous", "web"])
            ]
        )
        store.attach_feedback(ids[0], 1.0, client="web", requested_by="web")
        store.attach_feedback(ids[2], -1.0, "सही", client="ops")
    (name,) = export_rl_logs(config, Settings(), sink=open_sink(config.rl_export.target, Settings()))["parts"]
    records = decode_part((tmp_path / "out" / name).read_bytes(), "parquet")
    assert [(r["client"], r["feedback_client"]) for r in records] == [
        ("web", "web"),
        ("anonymous", None),
        ("web", "ops"),
    ]
    assert pq.read_table(tmp_path / "out" / name).schema.equals(RECORD_SCHEMA)


def test_parts_written_before_clients_were_recorded_still_decode(tmp_path: Path) -> None:
    """An old part lacks `client` and `feedback_client`: they read as None (not attributed), in both formats."""
    old = {
        "episode_id": 1,
        "time": "2025-01-31T12:00:00.123Z",
        "direction": "eng_Latn-hin_Deva",
        "src_lang": "eng_Latn",
        "tgt_lang": "hin_Deva",
        "adapter_version": "v0002",
        "base_model": "b",
        "prompt": "p",
        "response": "r",
        "reward": 1.0,
        "correction": None,
        "feedback_time": "2025-01-31T12:00:09.481Z",
        "feedback_seq": 3,
        "latency_ms": 41.7,
        "script_valid": True,
    }
    assert list(old) == RECORD_KEYS[:-2]
    buf = io.BytesIO()
    old_schema = pa.schema([f for f in RECORD_SCHEMA if f.name in old])
    pq.write_table(pa.Table.from_pylist([old], schema=old_schema), buf)
    for data, fmt in ((json.dumps(old).encode() + b"\n", "jsonl"), (buf.getvalue(), "parquet")):
        (record,) = decode_part(data, fmt)
        assert list(record) == RECORD_KEYS and record == {**old, "client": None, "feedback_client": None}, fmt
