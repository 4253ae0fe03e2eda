"""Served feedback to training data, end to end: the service over real HTTP writes episodes and takes feedback
from two API clients, `export_rl_logs` writes them to a folder and to moto's S3, and an `rl_logs` source
ingests them: exact counts per skip and reject reason, every corrected episode used once (training or
held out, never both), a stage killed mid-way resumed without counting a record twice, bad parts rejected
by part and line into the quarantine."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn
from servers import S3Server
from tiny_models import dev_lines

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import stage_source, write_shards
from bhashaflow.episodes.export import encode_part, export_rl_logs
from bhashaflow.episodes.store import EpisodeStore, NewEpisode
from connectors.factory import open_connector
from connectors.sinks import open_sink
from serving.app import create_app
from serving.auth import hash_key

SERVING_TESTS = Path(__file__).resolve().parents[1] / "serving"
if str(SERVING_TESTS) not in sys.path:
    sys.path.append(str(SERVING_TESTS))
from serving_helpers import make_adapter, register  # noqa: E402  (tests/serving's helpers, as tests/reliability)

REPO = Path(__file__).resolve().parents[2]
EN_HI = "eng_Latn-hin_Deva"
EN, HI = dev_lines("eng_Latn", 60), dev_lines("hin_Deva", 60)
KEYS = {"web": "bf_web-key-for-the-feedback-test", "other": "bf_other-key-for-the-feedback-test"}


def _auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[client]}"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(
    tmp_path: Path, target: str, *, sources: list[dict[str, Any]] | None = None, **extra: Any
) -> PipelineConfig:
    return config_from_dict(
        {
            "directions": [EN_HI],
            "serving": {"episodes_db": str(tmp_path / "episodes.db")},
            "rl_export": {"target": target},
            "sources": sources or [],
            **extra,
        }
    )


def _rl_source(uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "feedback",
        "kind": "rl_logs",
        "uri": uri,
        "trusted_clients": ["web"],
        "heldout_share": 0.25,
        **extra,
    }


def _ingest(config: PipelineConfig, run: Path, reader: Any = None) -> dict[str, Any]:
    """Stage every source (the real connector unless `reader` is given) and write the shards: the manifest."""
    staged = []
    for source in config.sources:
        connector = reader or open_connector(source, Settings(), config.directions)
        staged.append(stage_source(config, source, connector, str(run)))
    return write_shards(config, staged, str(run))


def _triplets(run: Path, manifest: dict[str, Any], kind: str) -> list[tuple[str, str, str]]:
    """(src, tgt, rejected) of every row of a direction's preference or held-out shards, read back from Parquet."""
    out: list[tuple[str, str, str]] = []
    for shard in manifest["directions"][EN_HI][kind]["shards"]:
        table = pq.read_table(run / shard["path"])
        out += list(zip(*(table.column(c).to_pylist() for c in ("src", "tgt", "rejected")), strict=True))
    return out


def _counts(manifest: dict[str, Any]) -> dict[str, Any]:
    """What must not change between two ingestions of the same parts (no paths, times or positions)."""
    source = {k: v for k, v in manifest["sources"]["feedback"].items() if k not in ("uri", "position")}
    direction = manifest["directions"][EN_HI]
    return {
        "source": source,
        "direction": {k: direction[k] for k in ("accepted", "duplicates", "rejected")},
        "preferences": direction["preferences"]["rows"],
        "heldout": direction["heldout"]["rows"],
        "totals": manifest["totals"],
    }


def _assert_nothing_lost(manifest: dict[str, Any]) -> None:
    source, direction = manifest["sources"]["feedback"], manifest["directions"][EN_HI]
    assert source["skipped"] == sum(source["skipped_by_reason"].values())
    assert source["rejected"] == sum(source["rejected_by_reason"].values())
    assert source["read"] == (
        direction["accepted"]
        + direction["heldout"]["rows"]
        + source["duplicates"]
        + source["rejected"]
        + source["skipped"]
    )


# ---------------------------------------------------------------------------------------------------------------
# 1. The service, two clients, feedback over HTTP, export to a folder and to S3, ingestion with exact counts
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_registry(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("feedback-registry")
    registry = str(folder / "registry")
    register(registry, EN_HI, make_adapter(tiny_base, folder / "adapter", seed=1), tiny_base)
    return registry


@contextlib.contextmanager
def _service(config: PipelineConfig) -> Iterator[str]:
    """The app under uvicorn on 127.0.0.1 (a thread of this process), keys `web` and `other`; its base URL."""
    entries = [{"name": n, "scopes": ["translate", "feedback"], "sha256": hash_key(k)} for n, k in KEYS.items()]
    app = create_app(config, Settings(api_keys=json.dumps(entries), api_token=None))  # type: ignore[call-arg]
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="feedback-service", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert thread.is_alive(), "the service stopped while starting"
            assert time.monotonic() < deadline, "the service never became ready"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health", headers=_auth("web"), timeout=5).status_code == 200:
                    break
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the service did not stop"


def _translate(http: httpx.Client, client: str, texts: list[str]) -> list[tuple[int, str]]:
    resp = http.post(
        "/v1/translate", json={"texts": texts, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, headers=_auth(client)
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return list(zip(body["episode_ids"], body["translations"], strict=True))


def _feedback(http: httpx.Client, client: str, episode: int, reward: float, correction: str | None = None) -> None:
    body: dict[str, Any] = {"episode_id": episode, "reward": reward}
    if correction is not None:
        body["correction"] = correction
    resp = http.post("/v1/feedback", json=body, headers=_auth(client))
    assert resp.status_code == 200, resp.text
    assert resp.json()["client"] == client


def test_feedback_over_http_exported_to_a_folder_and_s3_ingests_with_exact_counts(
    tmp_path: Path, tiny_base: str, served_registry: str, s3_server: S3Server
) -> None:
    serve = _config(
        tmp_path,
        str(tmp_path / "unused"),
        base_model=tiny_base,
        registry=served_registry,
        evaluation={"max_new_tokens": 6},
        serving={"episodes_db": str(tmp_path / "episodes.db"), "require_auth": True, "feedback_per_minute": 0},
    )
    expected: dict[str, tuple[str, str]] = {}  # prompt -> (correction, served output): the triplets to train on
    with _service(serve) as url, httpx.Client(base_url=url, timeout=60) as http:
        web = _translate(http, "web", EN[:16])
        web += _translate(http, "web", [EN[0]])  # the same text again, corrected alike: a duplicate pair
        other = _translate(http, "other", EN[16:20])
        unrated = _translate(http, "web", EN[20:23]) + _translate(http, "other", EN[23:25])
        # web (trusted): 10 corrections, the second one replacing an earlier, wrong correction
        for i in range(10):
            if i == 1:
                _feedback(http, "web", web[i][0], -1.0, HI[40])
            _feedback(http, "web", web[i][0], -0.5, HI[41] if i == 2 else HI[i])  # web[2]: replaced below
            expected[EN[i]] = (HI[i], web[i][1])
        _feedback(http, "web", web[16][0], -0.5, HI[0])  # duplicate of episode web[0]'s pair
        _feedback(http, "web", web[10][0], -0.5, " ".join([HI[10]] * 5))  # far longer than its text: length_ratio
        equal = [(e, out) for e, out in web[11:14] if out.strip()]
        assert equal, "the tiny model served only empty outputs"
        for episode, output in equal:  # the correction repeats what was served
            _feedback(http, "web", episode, 1.0, output)
        for episode, _ in web[14:16]:  # a reward alone
            _feedback(http, "web", episode, 0.5)
        # other (untrusted): three corrections and one reward without a correction
        for j, (episode, _) in enumerate(other[:3]):
            _feedback(http, "other", episode, -0.5, HI[16 + j])
        _feedback(http, "other", other[3][0], 1.0)
        # Rated episodes only, in feedback order, to S3; then web[2]'s correction is replaced and exported again.
        s3_server.create_bucket("rl-logs")
        rated = "s3://rl-logs/exports/rated"
        rated_export = _config(tmp_path, rated, rl_export={"target": rated, "only_with_feedback": True})
        first = export_rl_logs(rated_export, Settings(), sink=open_sink(rated, Settings()), part_rows=8)
        _feedback(http, "web", web[2][0], -0.5, HI[2])
        again = export_rl_logs(rated_export, Settings(), sink=open_sink(rated, Settings()), part_rows=8)
    assert again["exported"] == 1 and again["parts"][0].startswith("feedback-")
    episodes = len(web) + len(other) + len(unrated)
    assert episodes == 26
    skipped = {
        # web[11:14] left unrated, rewards alone (web 2, other 1), episodes without feedback
        "no_correction": (3 - len(equal)) + 3 + len(unrated),
        "untrusted_client": 3,
        "correction_equals_output": len(equal),
    }
    assert sum(skipped.values()) == episodes - 10 - 2  # all but the 10 corrections, the duplicate and the too long one

    manifests = {}
    for name, target in (("folder", str(tmp_path / "rl-logs")), ("s3", "s3://rl-logs/exports/web")):
        export = _config(tmp_path, target)
        result = export_rl_logs(export, Settings(), sink=open_sink(target, Settings()), part_rows=8)
        assert result["exported"] == episodes and len(result["parts"]) == 4  # 8 + 8 + 8 + 2
        ingest = _config(tmp_path, target, sources=[_rl_source(target)])
        run = tmp_path / f"run-{name}"
        manifest = _ingest(ingest, run)
        source, direction = manifest["sources"]["feedback"], manifest["directions"][EN_HI]
        assert source["read"] == episodes
        assert source["skipped_by_reason"] == skipped
        assert source["skipped"] == sum(skipped.values())
        assert source["rejected_by_reason"] == {"length_ratio": 1} and source["rejected"] == 1
        assert source["duplicates"] == 1 and direction["duplicates"] == 1
        assert direction["accepted"] + direction["heldout"]["rows"] == len(expected) == 10
        assert direction["preferences"]["rows"] == direction["accepted"]  # every pair kept is a triplet too
        # A source's `accepted` counts the corrections it kept, held-out ones included; a direction's, training pairs.
        assert source["accepted"] == direction["accepted"] + direction["heldout"]["rows"]
        _assert_nothing_lost(manifest)

        training, heldout = _triplets(run, manifest, "preferences"), _triplets(run, manifest, "heldout")
        assert len(training) == len(set(training)) == direction["accepted"]
        assert len(heldout) == len(set(heldout)) == direction["heldout"]["rows"]
        assert not set(training) & set(heldout)
        assert set(training) | set(heldout) == {(src, tgt, out) for src, (tgt, out) in expected.items()}
        assert training and heldout  # heldout_share 0.25 of these ten pairs: both sides non-empty
        pairs = pq.read_table(run / direction["shards"][0]["path"])
        assert sorted(zip(pairs.column("src").to_pylist(), pairs.column("tgt").to_pylist(), strict=True)) == sorted(
            (s, t) for s, t, _ in training
        )  # the SFT shards hold the training pairs, the held-out ones are not among them
        quarantine = [json.loads(line) for line in (run / "quarantine.jsonl").read_text().splitlines()]
        assert [(q["reason"], q["ref"].split(":")[0]) for q in quarantine] == [("length_ratio", result["parts"][1])]
        manifests[name] = manifest
    assert _counts(manifests["folder"]) == _counts(manifests["s3"])

    # The rated-only export: every rated episode once, web[2] twice (its first record superseded by the second).
    rated_episodes = first["exported"] + again["exported"]
    assert first["exported"] == episodes - len(unrated) - (3 - len(equal))  # the web[11:14] without feedback too
    run = tmp_path / "run-rated"
    manifest = _ingest(_config(tmp_path, rated, sources=[_rl_source(rated)]), run)
    source, direction = manifest["sources"]["feedback"], manifest["directions"][EN_HI]
    assert source["read"] == rated_episodes
    assert source["skipped_by_reason"] == {
        "no_correction": 3,
        "untrusted_client": 3,
        "correction_equals_output": len(equal),
        "superseded": 1,
    }
    assert source["rejected_by_reason"] == {"length_ratio": 1} and source["duplicates"] == 1
    _assert_nothing_lost(manifest)
    training, heldout = _triplets(run, manifest, "preferences"), _triplets(run, manifest, "heldout")
    assert not set(training) & set(heldout) and len(training) + len(heldout) == 10
    assert set(training) | set(heldout) == {(src, tgt, out) for src, (tgt, out) in expected.items()}
    assert sorted(training) == sorted(_triplets(tmp_path / "run-s3", manifests["s3"], "preferences"))


# ---------------------------------------------------------------------------------------------------------------
# 2. A stage stopped mid-way through the parts, resumed: the counts of an uninterrupted ingestion
# ---------------------------------------------------------------------------------------------------------------

N_EPISODES = 23  # parts of 5: five parts, the last short


def _served_episodes(tmp_path: Path) -> None:
    """Episodes as the service stores them: trusted corrections, untrusted ones, rewards alone, none at all."""
    with EpisodeStore(tmp_path / "episodes.db") as store:
        ids = store.record(
            [
                NewEpisode(
                    direction=EN_HI,
                    src_lang="eng_Latn",
                    tgt_lang="hin_Deva",
                    adapter_version="v0001",
                    base_model="builtin:tiny-seq2seq",
                    input=EN[i],
                    output=f"served {i}",
                    latency_ms=1.0,
                    script_valid=False,
                    client="web" if i % 4 else "other",
                )
                for i in range(N_EPISODES)
            ]
        )
        for i, episode in enumerate(ids):
            client = "web" if i % 4 else "other"
            if i % 3 == 0:
                store.attach_feedback(episode, 0.5, client=client, requested_by=client)
            elif i % 7 != 6:
                store.attach_feedback(episode, -0.5, HI[i], client=client, requested_by=client)


class _StopsAfter:
    """A connector that ends the stage the way a crash would, with an exception after `n` records."""

    def __init__(self, inner: Any, n: int) -> None:
        self.inner, self.n, self.name = inner, n, inner.name

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        for i, record in enumerate(self.inner.iter_records(start)):
            if i == self.n:
                raise ConnectionResetError(f"stopped after {self.n} records")
            yield record


def _exported(tmp_path: Path) -> tuple[PipelineConfig, list[str]]:
    _served_episodes(tmp_path)
    target = str(tmp_path / "rl-logs")
    parts = export_rl_logs(_config(tmp_path, target), Settings(), sink=open_sink(target, Settings()), part_rows=5)
    assert parts["exported"] == N_EPISODES and len(parts["parts"]) == 5
    return _config(tmp_path, target, sources=[_rl_source(target)], ingest={"commit_rows": 3}), parts["parts"]


_KILL_CHILD = """
import os, signal, sys
from bhashaflow.config import load_config
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import stage_source
from connectors.factory import open_connector

config = load_config(sys.argv[1])
source = config.sources[0]
inner = open_connector(source, Settings(), config.directions)

class KilledAfter:
    def iter_records(self, start=None):
        for i, record in enumerate(inner.iter_records(start)):
            if i == int(sys.argv[3]):
                os.kill(os.getpid(), signal.SIGKILL)
            yield record

stage_source(config, source, KilledAfter(), sys.argv[2])
"""


def test_a_stage_stopped_mid_way_through_the_parts_resumes_to_the_counts_of_an_uninterrupted_one(
    tmp_path: Path,
) -> None:
    config, parts = _exported(tmp_path)
    whole = _ingest(config, tmp_path / "run-whole")
    assert whole["sources"]["feedback"]["read"] == N_EPISODES
    _assert_nothing_lost(whole)
    expected = _counts(whole)
    triplets = {kind: sorted(_triplets(tmp_path / "run-whole", whole, kind)) for kind in ("preferences", "heldout")}
    source = config.sources[0]

    for cut in (4, 7, 11, 16):  # inside the first part, at a part boundary's neighbour, deep in later parts
        run = tmp_path / f"run-cut-{cut}"
        reader = _StopsAfter(open_connector(source, Settings(), config.directions), cut)
        with pytest.raises(ConnectionResetError):
            stage_source(config, source, reader, str(run))
        progress = json.loads((run / "staging" / "feedback" / "progress.json").read_text())
        assert 0 < progress["read"] <= cut and not progress["done"]  # committed some, not all
        assert progress["position"]["part"] in parts
        resumed = _ingest(config, run)
        assert _counts(resumed) == expected, cut
        assert {kind: sorted(_triplets(run, resumed, kind)) for kind in triplets} == triplets

    # A real crash: the staging process SIGKILLed in the middle of the third part, then a fresh process resumes.
    path = tmp_path / "ingest.yaml"
    path.write_text(json.dumps(config.model_dump(mode="json")))
    run = tmp_path / "run-killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", _KILL_CHILD, str(path), str(run), "12"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    progress = json.loads((run / "staging" / "feedback" / "progress.json").read_text())
    assert 0 < progress["read"] <= 12 and not progress["done"]
    resumed = _ingest(config, run)
    assert _counts(resumed) == expected
    assert {kind: sorted(_triplets(run, resumed, kind)) for kind in triplets} == triplets


# ---------------------------------------------------------------------------------------------------------------
# 3. Bad parts: broken lines, a record without a prompt, unknown languages and unconfigured directions
# ---------------------------------------------------------------------------------------------------------------


def _record(i: int, **changes: Any) -> dict[str, Any]:
    record = {
        "episode_id": i,
        "time": "2026-12-04T10:00:00.000Z",
        "direction": EN_HI,
        "src_lang": "eng_Latn",
        "tgt_lang": "hin_Deva",
        "adapter_version": "v0001",
        "base_model": "builtin:tiny-seq2seq",
        "prompt": EN[i],
        "response": f"served {i}",
        "reward": -0.5,
        "correction": HI[i],
        "feedback_time": "2026-12-04T10:00:01.000Z",
        "feedback_seq": i,
        "latency_ms": 1.0,
        "script_valid": False,
        "client": "web",
        "feedback_client": "web",
    }
    record.update(changes)
    return record


def test_broken_lines_missing_prompts_and_unknown_languages_are_counted_and_quarantined_by_part_and_line(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "rl-logs"
    folder.mkdir()
    first = "episodes-000000000001-000000000005.jsonl"
    lines = encode_part([_record(1), _record(2)], "jsonl").decode().splitlines()
    lines.insert(1, '{"episode_id": 99, "prompt": "cut off by a cra')  # line 2: not JSON
    no_prompt = _record(3)
    del no_prompt["prompt"]
    lines.append(json.dumps(no_prompt, ensure_ascii=False))  # line 4: no prompt
    lines.append(json.dumps(_record(4, prompt=None), ensure_ascii=False))  # line 5: a null prompt
    (folder / first).write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = "episodes-000000000006-000000000010.jsonl"
    (folder / second).write_bytes(
        encode_part(
            [
                _record(6),
                _record(7, src_lang="xyz_Latn", direction="xyz_Latn-hin_Deva"),  # no such language
                _record(8, tgt_lang="tam_Taml", direction="eng_Latn-tam_Taml", correction=dev_lines("tam_Taml", 9)[8]),
                _record(9, correction=None),
                _record(10, feedback_client="other"),
            ],
            "jsonl",
        )
    )
    target = str(folder)
    config = _config(
        tmp_path, target, sources=[_rl_source(target, heldout_share=0)], ingest={"max_reject_fraction": 1.0}
    )
    run = tmp_path / "run"
    manifest = _ingest(config, run)
    source, direction = manifest["sources"]["feedback"], manifest["directions"][EN_HI]
    assert source["read"] == 10
    assert source["rejected_by_reason"] == {"malformed": 1, "missing_field": 2, "unknown_language": 1}
    assert source["skipped_by_reason"] == {"unconfigured_direction": 1, "no_correction": 1, "untrusted_client": 1}
    assert source["skipped_by_direction"] == {"eng_Latn-tam_Taml": 1}
    assert direction["accepted"] == 3 and direction["heldout"]["rows"] == 0  # episodes 1, 2 and 6
    assert direction["preferences"]["rows"] == 3
    _assert_nothing_lost(manifest)

    quarantine = [json.loads(line) for line in (run / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    assert manifest["quarantine"]["rows"] == len(quarantine) == 4
    by_ref = {q["ref"]: q for q in quarantine}
    assert set(by_ref) == {f"{first}:2", f"{first}:4", f"{first}:5", f"{second}:2"}
    assert by_ref[f"{first}:2"]["reason"] == "malformed"
    assert "cut off by a cra" in by_ref[f"{first}:2"]["raw"]
    for line in (4, 5):
        q = by_ref[f"{first}:{line}"]
        assert q["reason"] == "missing_field"
        assert f"{first}:{line}" in q["detail"] and "'prompt'" in q["detail"]
    assert by_ref[f"{second}:2"]["reason"] == "unknown_language"
    assert all(q["source"] == "feedback" for q in quarantine)
    assert sorted(_triplets(run, manifest, "preferences")) == sorted((EN[i], HI[i], f"served {i}") for i in (1, 2, 6))
