"""HTTP and S3 sources failing at random points, and a Qdrant collection modified while it is scrolled.

Each randomized run ingests a small corpus (duplicates and invalid rows included) through the real library
steps (`stage_source` with the connectors `open_connector` builds, then `write_shards`) while the local servers
drop connections, answer 5xx, stall and cut gzip bodies short. A run must end with the clean run's manifest, or
fail with a one-line error naming the source and its URL or key and leave no manifest and no shard; a re-run
with the faults cleared then resumes from what was committed and ends with the clean manifest.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _knobs import count
from qdrant_client import QdrantClient
from qdrant_client.models import Distance, PointStruct, VectorParams
from servers import FaultPlan, FaultyHTTPServer, S3Server

from bhashaflow.config import PipelineConfig, SourceConfig, SourceRetryConfig
from bhashaflow.core.names import QUARANTINE
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import load_manifest, stage_source, write_shards
from connectors import TransientSourceError, open_connector
from connectors.qdrant import QdrantConnector

DIRECTION = "eng_Latn-hin_Deva"
# Tight enough that four faults in a row exceed it, a stalled answer times out fast, and backoff costs little.
IMPATIENT = {"attempts": 3, "base_delay_s": 0.002, "max_delay_s": 0.01, "timeout_s": 0.3}
# The re-run after a failure: faults cleared, and time to spare on a loaded machine.
PATIENT = SourceRetryConfig(attempts=6, base_delay_s=0.01, max_delay_s=0.05, timeout_s=30)
# Stalls in seconds; the last is a hung server, which only the read timeout (IMPATIENT's 0.3 s) gets past.
STALLS = (0.05, 0.1, 30.0)
MAX_RUN_S = 20.0  # a run that took longer waited out a hung server
HI = ["यह पहला वाक्य है", "दिल्ली भारत की राजधानी है", "मुझे चाय पसंद है", "आज मौसम अच्छा है"]
DIRTY = [
    '{"src": "broken json',  # malformed
    json.dumps({"src": "No target", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # missing_field
    json.dumps({"src": "Number", "tgt": 7, "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # not_a_string
    json.dumps({"src": "Empty", "tgt": "  ", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # empty
    json.dumps({"src": "Latin", "tgt": "namaste duniya", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),  # script
    json.dumps({"src": "Tamil", "tgt": "வணக்கம்", "src_lang": "eng_Latn", "tgt_lang": "tam_Taml"}),  # skipped
]


def pairs(start: int, stop: int) -> list[dict[str, str]]:
    return [
        {
            "src": f"This is sentence {i}.",
            "tgt": f"{HI[i % len(HI)]} {i}",
            "src_lang": "eng_Latn",
            "tgt_lang": "hin_Deva",
        }
        for i in range(start, stop)
    ]


def jsonl(items: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in items).encode()


def tsv(rows: list[dict[str, str]]) -> bytes:
    lines = ["src\ttgt\tsrc_lang\ttgt_lang"] + [
        "\t".join(r[k] for k in ("src", "tgt", "src_lang", "tgt_lang")) for r in rows
    ]
    return ("\n".join(lines) + "\n").encode()


def make_config(tmp_path: Path, sources: list[dict[str, Any]]) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "run_name": "faults",
            "workdir": str(tmp_path / "runs"),
            "directions": [DIRECTION],
            "sources": sources,
            "ingest": {"commit_rows": 40, "shard_rows": 150},
            "source_retry": IMPATIENT,
        }
    )


def ingest(config: PipelineConfig, run_uri: str) -> dict[str, Any]:
    """The ingest flow's steps without Prefect: stage every source, then write shards and the manifest."""
    settings = Settings()
    staged = [
        stage_source(config, s, open_connector(s, settings, config.directions, config.source_retry), run_uri)
        for s in config.sources
    ]
    return write_shards(config, staged, run_uri)


def comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    """Everything a manifest says about the data: all but the run's id and when it was written."""
    return {k: v for k, v in manifest.items() if k not in ("run_id", "created_at")}


def files_of(run: Path) -> dict[str, tuple[int, int]]:
    """Identity (inode, mtime) of every committed staging file: unchanged ones were not staged again."""
    return {str(p.relative_to(run)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run / "staging").rglob("*-*.*")}


def rows_off(clean: dict[str, Any], got: dict[str, Any]) -> int:
    """Rows lost or gained against the clean manifest, over every count it keeps."""
    keys = ("read", "accepted", "duplicates", "rejected", "skipped")
    return sum(abs(clean["totals"][k] - got["totals"][k]) for k in keys) + abs(
        clean["quarantine"]["rows"] - got["quarantine"]["rows"]
    )


def cut_at(rng: random.Random, size: int) -> int:
    """A byte offset to cut a body at: the edges (nothing, one byte, the last byte) often, else anywhere."""
    if rng.random() < 0.25:
        return rng.choice([0, 1, 2, 9, 10, size // 2, size - 8, size - 1])
    return rng.randrange(size)


def plan_faults(rng: random.Random, plan: FaultPlan, targets: list[tuple[str | None, int]]) -> int:
    """0-4 random faults on random requests; `targets` are (path substring or None for any, body size).

    Truncation (a shorter body with a matching Content-Length) is planned on gzip files only: a cut plain text
    file that announces its cut length is a shorter valid file, which no reader can tell apart.
    """
    faults = rng.randint(0, 4)
    for _ in range(faults):
        path, size = rng.choice(targets)
        gz = path is not None and path.endswith(".gz")
        kind = rng.choice(["drop", "status", "slow"] + (["truncate"] if gz else []))
        times, after = rng.choice([1, 1, 1, 2, 3]), rng.choice([0, 0, 0, 1, 2])
        if kind == "drop":
            plan.drop(cut_at(rng, size), times, path=path, after=after)
        elif kind == "status":
            retry_after = rng.choice([None, None, "0", "1"])
            plan.fail(times, rng.choice([500, 502, 503]), path=path, after=after, retry_after=retry_after)
        elif kind == "slow" and rng.random() < 0.5:
            plan.slow(rng.choice(STALLS), times, path=path, after=after)  # before the answer
        elif kind == "slow":  # inside the body: part of it, a stall, then the connection closes
            plan.drop(cut_at(rng, size), times, path=path, after=after, linger_s=rng.choice(STALLS))
        else:
            plan.truncate(cut_at(rng, size), times, path=path, after=after)
    return faults


def committed_rows(run: Path) -> int:
    """Rows the staging of a run has committed so far, over all sources."""
    return sum(json.loads(p.read_text())["read"] for p in (run / "staging").glob("*/progress.json"))


def run_faulty(
    config: PipelineConfig, run: Path, clean: dict[str, Any], plan: FaultPlan, error_names: str, context: str
) -> tuple[int, int, list[str]]:
    """One faulty ingestion and, if it failed, its re-run without faults.

    Returns (rows kept from the failed run, or -1 when it did not fail; rows off the clean manifest; problems).
    """
    problems: list[str] = []
    kept = -1
    try:
        manifest = ingest(config, str(run))
    except TransientSourceError as exc:
        kept = committed_rows(run)
        message = str(exc)
        if "\n" in message or not re.search(error_names, message) or "failed" not in message:
            problems.append(f"{context}: unclear error {message!r}")
        if load_manifest(str(run)) is not None or list(run.rglob("shard-*")) or (run / "shards").exists():
            problems.append(f"{context}: a manifest or shard was left by the failed run")
        committed = files_of(run)
        plan.clear()
        manifest = ingest(config.model_copy(update={"source_retry": PATIENT}), str(run))
        after = files_of(run)
        redone = [name for name, ident in committed.items() if after.get(name) != ident]
        if redone:
            problems.append(f"{context}: the re-run staged again what was committed: {redone}")
    except Exception as exc:  # noqa: BLE001 - any other failure is a finding: retried, or a clear TransientSourceError
        return -1, 0, [f"{context}: {type(exc).__name__}: {exc}"]
    if comparable(manifest) != comparable(clean):
        problems.append(f"{context}: manifest differs from the clean run's")
    quarantine = (run / QUARANTINE).read_bytes()
    if quarantine != (run.parent / "clean" / QUARANTINE).read_bytes():
        problems.append(f"{context}: quarantine differs from the clean run's")
    return kept, rows_off(clean, manifest), problems


def run_scenario(
    n: int,
    seed: int,
    plan: FaultPlan,
    config: PipelineConfig,
    runs: Path,
    clean: dict[str, Any],
    targets: list[tuple[str | None, int]],
    error_names: str,
    vary: Callable[[random.Random], None] | None = None,
) -> dict[str, int | list[str]]:
    """`n` randomized faulty runs against the clean manifest; the figures and problems they found."""
    failed_clean = hits = planned = lost = kept_rows = 0
    slowest = 0.0
    problems: list[str] = []
    for i in range(n):
        rng = random.Random(seed + i)
        if vary is not None:
            vary(rng)
        planned += plan_faults(rng, plan, targets)
        began = time.perf_counter()
        kept, off, found = run_faulty(config, runs / f"run-{i}", clean, plan, error_names, f"seed {seed} run {i}")
        took = time.perf_counter() - began
        slowest = max(slowest, took)
        if took > MAX_RUN_S:  # a stall the read timeout did not cut short
            problems.append(f"seed {seed} run {i}: took {took:.1f} s")
        failed_clean += kept >= 0
        kept_rows += max(kept, 0)
        lost += off
        problems += found
        hits += sum(1 for r in plan.requests if r.fault is not None)
        plan.clear()
    return {
        "failed_clean": failed_clean,
        "rows_resumed": kept_rows,
        "faults_planned": planned,
        "faults_hit": hits,
        "lost": lost,
        "slowest_run_s": round(slowest, 2),
        "problems": problems,
    }


def test_http_sources_under_random_faults(http_server: FaultyHTTPServer, tmp_path: Path, seed: int, record) -> None:
    n = count("http_runs", 50, 500)
    plain = jsonl(pairs(0, 150) + DIRTY + pairs(0, 15))  # 15 duplicates inside the file
    packed = gzip.compress(jsonl(pairs(140, 260) + DIRTY[:3] + pairs(250, 262)), mtime=0)  # overlaps both ways
    (http_server.root / "web.jsonl").write_bytes(plain)
    (http_server.root / "more.jsonl.gz").write_bytes(packed)
    config = make_config(
        tmp_path,
        [
            {"name": "web", "kind": "http", "uri": http_server.url("web.jsonl")},
            {"name": "webgz", "kind": "http", "uri": http_server.url("more.jsonl.gz")},
        ],
    )
    runs = tmp_path / "runs"
    clean = ingest(config, str(runs / "clean"))
    assert clean["totals"] == {"read": 306, "accepted": 262, "duplicates": 35, "rejected": 8, "skipped": 1}
    assert http_server.plan.count("GET") == 2
    http_server.plan.clear()

    def vary(rng: random.Random) -> None:
        http_server.ranges = rng.random() < 0.7  # else a resumed plain file is re-read and skipped

    found = run_scenario(
        n,
        seed,
        http_server.plan,
        config,
        runs,
        clean,
        targets=[("/web.jsonl", len(plain)), ("/more.jsonl.gz", len(packed)), (None, len(packed))],
        error_names=rf"^source '(web|webgz)': GET {re.escape(http_server.base_url)}/(web\.jsonl|more\.jsonl\.gz) failed",
        vary=vary,
    )
    problems = found.pop("problems")
    record("HTTP sources: drops, 5xx, stalls, cut gzip", area="sources", tried=n, **found)
    assert not problems, "\n".join(problems)


def test_s3_source_under_random_faults(s3_server: S3Server, tmp_path: Path, seed: int, record) -> None:
    n = count("s3_runs", 50, 500)
    objects = {
        "indic/a.jsonl.gz": gzip.compress(jsonl(pairs(0, 100) + DIRTY + pairs(0, 10)), mtime=0),
        "indic/b.jsonl": jsonl(pairs(90, 180) + DIRTY[:2]),
        "indic/c.tsv.gz": gzip.compress(tsv(pairs(170, 260) + pairs(100, 105)), mtime=0),
        "indic/_SUCCESS": b"",  # a marker, not data
    }
    s3_server.create_bucket("corpora")
    for key, data in objects.items():
        s3_server.put("corpora", key, data)
    config = make_config(tmp_path, [{"name": "lake", "kind": "s3", "uri": "s3://corpora/indic/"}])
    runs = tmp_path / "runs"
    clean = ingest(config, str(runs / "clean"))
    assert clean["totals"] == {"read": 303, "accepted": 260, "duplicates": 35, "rejected": 7, "skipped": 1}
    s3_server.plan.clear()

    found = run_scenario(
        n,
        seed,
        s3_server.plan,
        config,
        runs,
        clean,
        targets=[(f"/corpora/{key}", len(data)) for key, data in objects.items() if data] + [(None, 2000)],
        error_names=r"^source 'lake': reading s3://corpora/indic/(a\.jsonl\.gz|b\.jsonl|c\.tsv\.gz)? failed",
    )
    problems = found.pop("problems")
    record("S3 source: drops, 5xx, stalls, cut gzip", area="sources", tried=n, **found)
    assert not problems, "\n".join(problems)


class ObservedClient(QdrantClient):
    """A real in-memory Qdrant client that notes, at every scroll request, the cursor and the collection then.

    The collection as the test changed it (`model`) is copied, so each page read can be checked against what
    the collection held when that page was fetched.
    """

    def __init__(self, model: dict[int, dict[str, Any]]) -> None:
        super().__init__(location=":memory:")
        self.model = model
        self.cursor: int | None = None  # the last point id the test received
        self.fetches: list[tuple[int | None, dict[int, dict[str, Any]]]] = []

    def scroll(self, *args: Any, **kwargs: Any) -> Any:
        self.fetches.append((self.cursor, dict(self.model)))
        return super().scroll(*args, **kwargs)


def point_payload(point_id: int, version: int) -> dict[str, Any]:
    return {
        "src": f"Sentence {point_id} v{version}.",
        "tgt": f"{HI[point_id % len(HI)]} {point_id}",
        "src_lang": "eng_Latn",
        "tgt_lang": "hin_Deva",
        "version": version,
    }


def modify(rng: random.Random, client: ObservedClient, figures: dict[str, int], deleted: set[int]) -> None:
    """1-3 random inserts, deletes or payload updates, anywhere: behind the cursor, in the page in hand, ahead."""
    model = client.model
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["insert", "delete", "update"]) if model else "insert"
        if kind == "insert":
            point_id = rng.choice([i for i in range(1, 300) if i not in model])
            version = 0
        else:
            point_id = rng.choice(sorted(model))
            version = model[point_id]["version"] + 1
        if kind == "delete":
            client.delete("pairs", points_selector=[point_id])
            del model[point_id]
            deleted.add(point_id)
        else:
            model[point_id] = point_payload(point_id, version)
            client.upsert("pairs", [PointStruct(id=point_id, vector=[1.0, 0.5], payload=model[point_id])])
        figures["modifications"] += 1


def versions(points: list[tuple[int, dict[str, Any]]]) -> list[str]:
    return [f"{point_id}v{payload.get('version')}" for point_id, payload in points]


def check_scroll(
    client: ObservedClient, got: list[tuple[int, dict[str, Any], int]], page_size: int, context: str
) -> list[str]:
    """Every page read is exactly the points after the cursor in the collection as it was when it was fetched."""
    problems = []
    ids = [point_id for point_id, _, _ in got]
    if any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
        problems.append(f"{context}: ids not strictly increasing: {ids}")
    for j, (cursor, held) in enumerate(client.fetches):
        page = [(point_id, payload) for point_id, payload, fetch in got if fetch == j]
        ahead = sorted(k for k in held if cursor is None or k > cursor)
        expected = [(k, held[k]) for k in ahead[: len(page)]]
        last = j == len(client.fetches) - 1
        if page != expected:
            problems.append(
                f"{context}: fetch {j} after point {cursor} gave {versions(page)}, the collection then "
                f"held {versions(expected)}"
            )
        elif last and len(page) != len(ahead):
            problems.append(f"{context}: the read ended after {ids[-1:]} though {ahead[len(page) :]} followed")
        elif not last and not page or len(page) > page_size + 1:
            problems.append(f"{context}: fetch {j} gave {len(page)} points with a page size of {page_size}")
    return problems


def test_qdrant_collection_modified_while_scrolling(seed: int, record) -> None:
    """The guarantee documented in QdrantConnector, under random changes between and inside pages, and resumes."""
    n = count("qdrant_runs", 10, 100)
    figures = {"modifications": 0, "resumes": 0, "points_read": 0, "stale_deleted_read": 0, "inserted_read": 0}
    lost = 0
    problems: list[str] = []
    source = SourceConfig(name="vectors", kind="qdrant", uri=":memory:", collection="pairs")
    for i in range(n):
        rng = random.Random(seed + i)
        context = f"seed {seed} run {i}"
        model: dict[int, dict[str, Any]] = {}
        client = ObservedClient(model)
        client.create_collection("pairs", vectors_config=VectorParams(size=2, distance=Distance.COSINE))
        first = rng.sample(range(1, 300), rng.randint(20, 80))
        model.update({k: point_payload(k, 0) for k in first})
        client.upsert("pairs", [PointStruct(id=k, vector=[1.0, 0.5], payload=v) for k, v in model.items()])
        page_size = rng.randint(1, 8)
        connector = QdrantConnector(source, Settings(), client=client, page_size=page_size)
        got: list[tuple[int, dict[str, Any], int]] = []
        deleted: set[int] = set()
        position = None
        while True:
            records = connector.iter_records(position)
            stopped = False
            for record_ in records:
                row = dict(record_.row or {})
                point_id = row.pop("_point_id")
                got.append((point_id, row, len(client.fetches) - 1))
                client.cursor, position = point_id, record_.position
                if rng.random() < 0.3:
                    modify(rng, client, figures, deleted)
                if rng.random() < 0.05:
                    stopped = True  # a later run resumes from the saved position
                    break
            records.close()
            if not stopped:
                break
            figures["resumes"] += 1
        problems += check_scroll(client, got, page_size, context)
        read = {point_id for point_id, _, _ in got}
        throughout = set(first) - deleted
        lost += len(throughout - read)
        if throughout - read:
            problems.append(f"{context}: points present for the whole read were not read: {sorted(throughout - read)}")
        stored, _ = QdrantClient.scroll(client, "pairs", limit=1000, with_payload=True)
        if {p.id: p.payload for p in stored} != model:
            problems.append(f"{context}: the test's model of the collection is off")
        figures["points_read"] += len(got)
        figures["stale_deleted_read"] += len(read & deleted - set(model))
        figures["inserted_read"] += len(read - set(first))
        client.close()
    record("Qdrant collection modified while scrolling", area="sources", tried=n, lost=lost, **figures)
    assert not problems, "\n".join(problems[:20])
