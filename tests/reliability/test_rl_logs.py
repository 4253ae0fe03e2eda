"""RL logs: exporters SIGKILLed at random points, and sinks failing half the uploads; every episode arrives once.

Kills: a fork server (one real process that has imported the exporter) forks one exporter per run; the run
is SIGKILLed before a part is begun, after it is begun, between its verified upload and the watermark, after
the watermark, at a random time, mid-rename (folder), by the sink on receipt (HTTP), or while the proxy holds
its PUT (S3, which lands after the exporter died). New episodes arrive between runs and during them.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from _knobs import count
from servers import PartAction, PartServer, S3Server

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.export import export_rl_logs
from bhashaflow.episodes.store import EpisodeStore, NewEpisode
from connectors.retry import RetryPolicy
from connectors.sinks import SinkError, open_sink

REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(attempts=3, base_delay_s=0.005, max_delay_s=0.02)
PART = re.compile(r"episodes-(\d{12})-(\d{12})\.jsonl")
TEXTS = ["Good morning.", "नमस्ते, आप कैसे हैं?", "வணக்கம்", 'a "quoted"\nline\u2028x', "tab\tand\\slash", "ok"]
BUCKET = "rl-logs"

# Kill points every sink shares, and those only one kind of sink has.
POINTS = ["before-begin", "after-begin", "between", "after-watermark", "random-time"]
SINK_POINTS = {"folder": ["before-rename"], "http": ["sink-received", "sink-stored"], "s3": ["stalled-put"]}

_FORK_SERVER = r"""
import json, os, signal, sys
from bhashaflow.config import config_from_dict
from bhashaflow.episodes.store import EpisodeStore
from bhashaflow.episodes.export import export_rl_logs
from bhashaflow.core.settings import Settings
from connectors.retry import RetryPolicy
from connectors.sinks import open_sink
import s3fs  # noqa: F401 - imported once here, so a forked export starts in milliseconds


def run(job):
    point, k, seen = job["point"], job["part"], {}

    def hooked(name, real, before, after):
        def call(*args, **kwargs):
            n = seen[name] = seen.get(name, -1) + 1
            if point == before and n == k:
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kwargs)
            if point == after and n == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return call

    EpisodeStore.begin_export_part = hooked("begin", EpisodeStore.begin_export_part, "before-begin", "after-begin")
    # "between": the part is uploaded and verified, the watermark is not written yet.
    EpisodeStore.finish_export_part = hooked("finish", EpisodeStore.finish_export_part, "between", "after-watermark")
    os.replace = hooked("replace", os.replace, "before-rename", None)  # the folder sink's rename into place
    config = config_from_dict(job["config"])
    settings = Settings()
    policy = RetryPolicy(attempts=3, base_delay_s=0.005, max_delay_s=0.02)
    sink = open_sink(config.rl_export.target, settings, policy)
    export_rl_logs(config, settings, sink=sink, part_rows=job["part_rows"])


print("ready", flush=True)
while line := sys.stdin.readline():
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run(json.loads(line))
        except BaseException as exc:
            sys.stderr.write(f"export failed: {exc!r}\n")
            code = 1
        sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    sys.stdin.readline()  # the parent is done killing: only now may the pid be reaped (and reused)
    _, status = os.waitpid(pid, 0)
    killed = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    print(json.dumps({"signal": killed, "code": os.WEXITSTATUS(status) if killed is None else None}), flush=True)
"""


class ForkServer:
    """A real process that imports the exporter once and forks one exporter per job."""

    def __init__(self, workdir: Path) -> None:
        self.stderr_path = workdir / "fork-server.stderr"
        self._stderr = self.stderr_path.open("w")
        # s3_server put its endpoint and credentials in os.environ; the child reads them through Settings.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            cwd=workdir,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self._readline() == "ready", self.stderr()

    def _readline(self) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        assert line, f"the fork server died: {self.stderr()}"
        return line.strip()

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def start(self, job: dict[str, Any]) -> int:
        """Fork an exporter for `job` and return its pid, which stays valid until `wait`."""
        self._send(json.dumps(job))
        return int(json.loads(self._readline())["pid"])

    def wait(self) -> dict[str, int | None]:
        """Let the exporter finish (or die) and return {"signal": ..., "code": ...}."""
        self._send("wait")
        return json.loads(self._readline())

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text()[-3000:]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()


class Traffic:
    """The service's side of the store: serves episodes (some rated) and remembers what each must look like."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.expected: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def serve(self, rng: random.Random, n: int, *, rated: bool) -> None:
        episodes = [
            NewEpisode(
                direction="eng_Latn-hin_Deva",
                src_lang="eng_Latn",
                tgt_lang="hin_Deva",
                adapter_version="v0001",
                base_model="builtin:tiny-seq2seq",
                input=f"{rng.choice(TEXTS)} {rng.randrange(10**6)}",
                output=f"{rng.choice(TEXTS)} {rng.randrange(10**6)}",
                latency_ms=float(rng.randrange(1, 500)),
                script_valid=rng.random() < 0.8,
            )
            for _ in range(n)
        ]
        with EpisodeStore(self.db) as store:
            ids = store.record(episodes)
            for episode_id, ep in zip(ids, episodes, strict=True):
                want = {
                    "prompt": ep.input,
                    "response": ep.output,
                    "latency_ms": ep.latency_ms,
                    "script_valid": ep.script_valid,
                    "reward": None,
                    "correction": None,
                }
                if rated and rng.random() < 0.5:
                    reward, correction = rng.choice([-1.0, -0.5, 0.0, 0.25, 1.0]), rng.choice([None, "सुधार"])
                    store.attach_feedback(episode_id, reward, correction)
                    want.update(reward=reward, correction=correction)
                with self._lock:
                    self.expected[episode_id] = want

    def serve_meanwhile(self, rng: random.Random, stop: threading.Event) -> threading.Thread:
        """Unrated episodes arriving while an export runs (rated ones could be exported before their feedback)."""

        def loop() -> None:
            for _ in range(rng.randint(0, 4)):
                if stop.wait(rng.uniform(0.0, 0.05)):
                    return
                self.serve(rng, rng.randint(1, 3), rated=False)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


def audit(parts: dict[str, bytes], traffic: Traffic, *, watermark: int, where: str) -> dict[str, list[int]]:
    """Read every part at the sink; return the episodes delivered, delivered twice, and missing behind the watermark.

    Asserts what must hold at any moment: parts are named by their id range, and each record is exactly
    what was served (with its feedback).
    """
    seen: dict[int, str] = {}
    twice: list[int] = []
    for name, data in sorted(parts.items()):
        match = PART.fullmatch(name)
        assert match, f"{where}: {name!r} at the sink is no part"
        first, last = int(match[1]), int(match[2])
        records = [json.loads(line) for line in data.decode("utf-8").split("\n") if line]
        ids = [r["episode_id"] for r in records]
        assert ids == sorted(ids) and all(first <= i <= last for i in ids), f"{where}: {name} holds {ids}"
        for rec in records:
            episode_id = rec["episode_id"]
            if episode_id in seen:
                twice.append(episode_id)
            seen[episode_id] = name
            want = traffic.expected.get(episode_id)
            assert want is not None, f"{where}: {name} holds episode {episode_id}, which was never served"
            assert {k: rec[k] for k in want} == want, f"{where}: episode {episode_id} in {name} differs"
            assert (rec["feedback_seq"] is None) == (want["reward"] is None), f"{where}: {episode_id}'s feedback_seq"
    missing = sorted(i for i in traffic.expected if i <= watermark and i not in seen)
    return {"delivered": sorted(seen), "twice": twice, "missing": missing}


def assert_exactly_once(found: dict[str, list[int]], where: str) -> None:
    assert not found["twice"], f"{where}: episodes {found['twice'][:10]} are at the sink twice"
    assert not found["missing"], f"{where}: episodes {found['missing'][:10]} are missing (behind the watermark)"


def _watermark(db: Path, target: str) -> int:
    with EpisodeStore(db) as store:
        return store.export_watermark(target, "all")


def _config(db: Path, target: str) -> PipelineConfig:
    return config_from_dict(
        {"directions": ["eng_Latn-hin_Deva"], "serving": {"episodes_db": str(db)}, "rl_export": {"target": target}}
    )


class FolderParts:
    """The parts in a folder sink. Until the last run, a temporary left by a write killed mid-way is skipped:
    the re-run of that part removes it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, *, final: bool = False) -> dict[str, bytes]:
        if not self.folder.exists():
            return {}
        temporary = re.compile(r"\.episodes-\d{12}-\d{12}\.jsonl\.tmp-[0-9a-f]+")
        return {p.name: p.read_bytes() for p in self.folder.iterdir() if final or not temporary.fullmatch(p.name)}


class HttpParts:
    """The parts an HTTP sink stored, one per Idempotency-Key."""

    def __init__(self, server: PartServer) -> None:
        self.server = server

    def __call__(self, *, final: bool = False) -> dict[str, bytes]:
        return dict(self.server.parts)


class S3Parts:
    """The parts under an S3 prefix, read from moto directly (past the fault proxy); bodies cached by ETag."""

    def __init__(self, s3_server: S3Server, prefix: str) -> None:
        self.client = s3_server.client
        self.prefix = prefix
        self._cache: dict[str, tuple[str, bytes]] = {}

    def __call__(self, *, final: bool = False) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for obj in self.client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix).get("Contents", []):
            key, etag = obj["Key"], obj["ETag"]
            if key not in self._cache or self._cache[key][0] != etag:
                self._cache[key] = (etag, self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            out[key.removeprefix(self.prefix)] = self._cache[key][1]
        return out


class SinkSideKill:
    """The HTTP sink SIGKILLs the exporter when part number `k` of this run arrives, then drops the request,
    before ("sink-received") or after ("sink-stored") storing the part."""

    def __init__(self, k: int, point: str) -> None:
        self.k, self.point = k, point
        self.pid = 0
        self.pid_known = threading.Event()
        self._posts = 0

    def __call__(self, key: str) -> PartAction:
        self._posts += 1
        if self._posts != self.k + 1:
            return "ok"
        assert self.pid_known.wait(30) and self.pid > 0
        os.kill(self.pid, signal.SIGKILL)  # the exporter is alive: it waits for this very answer
        return "drop" if self.point == "sink-received" else "stored-drop"


def _exited(pid: int) -> bool:
    """Whether our (not yet reaped) exporter has exited: a zombie, state Z."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture
def part_server() -> Iterator[PartServer]:
    with PartServer() as server:
        yield server


@pytest.mark.parametrize("kind", ["folder", "http", "s3"])
def test_kills_at_random_points_leave_every_episode_at_the_sink_exactly_once(
    kind: str, tmp_path: Path, seed: int, record: Any, request: pytest.FixtureRequest
) -> None:
    n = count("rl_kills", 20, 200)
    db = tmp_path / "episodes.db"
    stored: FolderParts | HttpParts | S3Parts
    if kind == "folder":
        target, stored = str(tmp_path / "out"), FolderParts(tmp_path / "out")
    elif kind == "http":
        server: PartServer = request.getfixturevalue("part_server")
        target, stored = server.url, HttpParts(server)
    else:
        s3: S3Server = request.getfixturevalue("s3_server")
        s3.create_bucket(BUCKET)
        target, stored = f"s3://{BUCKET}/kills", S3Parts(s3, "kills/")
    config = _config(db, target)
    traffic = Traffic(db)
    traffic.serve(random.Random(seed), 40, rated=True)
    points = POINTS + SINK_POINTS[kind]
    schedule = [points[i % len(points)] for i in range(n)]  # every point at least once when n allows
    random.Random(seed).shuffle(schedule)
    killed: dict[str, int] = {}
    not_reached = resumed = late_puts = 0
    # Seconds per part, measured on runs killed right after part k: a random kill lands within the run.
    part_s = [0.03]
    fork = ForkServer(tmp_path)
    try:
        for i, point in enumerate(schedule):
            rng = random.Random(seed + i)
            where = f"seed {seed}, run {i}, {kind} sink, kill {point}"
            part_rows = rng.randint(2, 5)
            with EpisodeStore(db) as store:
                pending = store.pending_export_part(target, "all")
                done = max(store.export_watermark(target, "all"), pending.last_key if pending else 0)
                parts = (pending is not None) + -(-(store.last_key("all") - done) // part_rows)
            resumed += pending is not None
            k = rng.randint(0, min(2, max(0, parts - 1)))  # the part (of this run) at which to kill
            sink_kill = SinkSideKill(k, point)
            if point in ("sink-received", "sink-stored"):
                server.decide = sink_kill
            if point == "stalled-put":
                s3.plan.slow(0.5, method="PUT", path="/kills/", after=k)
            stop = threading.Event()
            writer = traffic.serve_meanwhile(random.Random(rng.random()), stop)
            started = time.perf_counter()
            pid = fork.start(
                {"config": config.model_dump(mode="json"), "part_rows": part_rows, "point": point, "part": k}
            )
            sink_kill.pid = pid
            sink_kill.pid_known.set()
            # Until `wait`, the exporter is not reaped, so `pid` cannot name another process.
            if point == "random-time":
                time.sleep(rng.uniform(0.0, sorted(part_s)[len(part_s) // 2] * max(1, parts)))
                os.kill(pid, signal.SIGKILL)
            elif point == "stalled-put":
                while not _exited(pid) and not any(r.fault == "slow" for r in s3.plan.requests):
                    time.sleep(0.002)
                os.kill(pid, signal.SIGKILL)  # its PUT is held by the proxy, which forwards it after the kill
            status = fork.wait()
            elapsed = time.perf_counter() - started
            stop.set()
            writer.join()
            if kind == "http":
                server.decide = None
            if point == "stalled-put":
                time.sleep(0.6)  # the held PUT reaches moto after its exporter died
                held = [r.path.split("/kills/", 1)[1] for r in s3.plan.requests if r.fault == "slow"]
                late_puts += bool(held) and held[0] in stored()
                s3.plan.clear()
            if status["signal"] == signal.SIGKILL:
                killed[point] = killed.get(point, 0) + 1
                if point in ("between", "after-watermark"):
                    part_s.append(elapsed / (k + 1))
            else:
                assert status["code"] == 0, f"{where}: the export failed: {fork.stderr()}"
                not_reached += 1  # the run ended before its kill point (fewer parts than k)
            found = audit(stored(), traffic, watermark=_watermark(db, target), where=where)
            assert_exactly_once(found, where)
            traffic.serve(rng, rng.randint(1, 8), rated=True)  # traffic between runs
    finally:
        fork.close()

    settings = Settings()
    result = export_rl_logs(config, settings, sink=open_sink(target, settings, FAST), part_rows=4)
    where = f"seed {seed}, {kind} sink, after the clean run"
    found = audit(stored(final=True), traffic, watermark=_watermark(db, target), where=where)
    undelivered = sorted(set(traffic.expected) - set(found["delivered"]))
    lost = len(found["twice"]) + len(found["missing"]) + len(undelivered)
    record(
        f"RL export SIGKILLed at random points, {kind} sink",
        area="rl-logs",
        tried=n,
        lost=lost,
        killed=sum(killed.values()),
        kills=" ".join(f"{k}:{v}" for k, v in sorted(killed.items())),
        not_reached=not_reached,
        resumed_parts=resumed,
        episodes=len(traffic.expected),
        last_run_exported=result["exported"],
        **({"late_puts_landed": late_puts} if kind == "s3" else {}),
    )
    assert_exactly_once(found, where)
    assert not undelivered, f"{where}: episodes {undelivered[:10]} never arrived"
    assert export_rl_logs(config, settings, sink=open_sink(target, settings, FAST))["exported"] == 0
    assert sum(killed.values()) >= n // 2, f"seed {seed}: only {killed} of {n} runs were killed"


FAILURES: list[PartAction] = ["refuse", "lost", "drop", "stored-drop"]


def _half_failing_s3(s3: S3Server, prefix: str, rng: random.Random, requests: int = 600) -> None:
    """Fail about half the uploads under `prefix` at random: an upload is a PUT and the HEAD that verifies
    it, so each request fails with p = 0.29 (1 - 0.71**2 = 0.5) with a 500, 502 or 503; a failed HEAD is an
    upload that was stored but never confirmed."""
    planned = 0
    for i in range(requests):
        if rng.random() < 0.29:
            # `after` counts the requests this fault lets through, i.e. the clean ones before it.
            s3.plan.fail(times=1, status=rng.choice([500, 502, 503]), path=prefix, after=i - planned)
            planned += 1


@pytest.mark.parametrize("kind", ["http", "s3"])
def test_a_sink_failing_half_the_uploads_still_gets_every_episode_exactly_once(
    kind: str, tmp_path: Path, seed: int, record: Any, request: pytest.FixtureRequest
) -> None:
    n = count("half_fail_runs", 10, 100)
    s3: S3Server | None = request.getfixturevalue("s3_server") if kind == "s3" else None
    if s3 is not None:
        s3.create_bucket(BUCKET)
    uploads = failed = reruns = resent = episodes = 0
    lost = 0
    for i in range(n):
        rng = random.Random(seed + i)
        where = f"seed {seed}, run {i}, {kind} sink"
        db = tmp_path / f"run-{i}" / "episodes.db"
        traffic = Traffic(db)
        traffic.serve(rng, rng.randint(10, 40), rated=True)
        server: PartServer | None = None
        stored: HttpParts | S3Parts
        if s3 is None:
            server = PartServer()
            server.start()
            faults = random.Random(rng.random())
            server.decide = lambda key, f=faults: f.choice(FAILURES) if f.random() < 0.5 else "ok"
            target, stored = server.url, HttpParts(server)
        else:
            target, stored = f"s3://{BUCKET}/half/{i}", S3Parts(s3, f"half/{i}/")
            _half_failing_s3(s3, f"/half/{i}/", random.Random(rng.random()))
        config = _config(db, target)
        settings = Settings()
        try:
            for _ in range(100):
                try:
                    export_rl_logs(
                        config, settings, sink=open_sink(target, settings, FAST), part_rows=rng.randint(2, 6)
                    )
                    break
                except SinkError:
                    reruns += 1  # a part failed all its attempts: the next run resends it
                    traffic.serve(rng, rng.randint(0, 3), rated=True)
            else:
                pytest.fail(f"{where}: 100 runs did not finish the export")
            found = audit(stored(final=True), traffic, watermark=_watermark(db, target), where=where)
            undelivered = set(traffic.expected) - set(found["delivered"])
            lost += len(found["twice"]) + len(found["missing"]) + len(undelivered)
            assert_exactly_once(found, where)
            assert not undelivered, f"{where}: episodes {sorted(undelivered)[:10]} never arrived"
            episodes += len(traffic.expected)
            if server is not None:
                uploads += len(server.posts)
                failed += len(server.posts) - server.answers.get("ok", 0)
                # Parts stored more than once (answer lost, or resent after a failed run), kept once by key.
                stored_copies = sum(server.answers.get(a, 0) for a in ("ok", "lost", "stored-drop"))
                resent += stored_copies - len(server.parts)
            else:
                assert s3 is not None
                uploads += s3.plan.count("PUT", f"/half/{i}/")
                failed += sum(1 for r in s3.plan.requests if r.fault is not None)
        finally:
            if server is not None:
                server.stop()
            if s3 is not None:
                s3.plan.clear()
    record(
        f"RL export to a sink failing half the uploads, {kind} sink",
        area="rl-logs",
        tried=n,
        lost=lost,
        episodes=episodes,
        uploads=uploads,
        failed_and_retried=failed,
        reruns=reruns,
        **({"stored_twice_kept_once": resent} if kind == "http" else {}),
    )
    assert lost == 0


def test_concurrent_exports_to_one_target_deliver_every_episode_once(tmp_path: Path, seed: int, record: Any) -> None:
    """Overlapping runs (a schedule firing while the last run still works) take turns at the target."""
    n = count("rl_concurrent_runs", 5, 50)
    db, out = tmp_path / "episodes.db", tmp_path / "out"
    config = _config(db, str(out))
    traffic = Traffic(db)
    exports: list[int] = []
    errors: list[str] = []
    for i in range(n):
        rng = random.Random(seed + i)
        traffic.serve(rng, rng.randint(5, 20), rated=True)
        stop = threading.Event()
        writer = traffic.serve_meanwhile(random.Random(rng.random()), stop)

        def exporter(r: random.Random) -> None:
            for _ in range(r.randint(1, 3)):
                try:
                    result = export_rl_logs(
                        config, Settings(), sink=open_sink(str(out), Settings(), FAST), part_rows=r.randint(2, 5)
                    )
                    exports.append(result["exported"])
                except Exception as exc:  # noqa: BLE001 - reported below, with the seed
                    errors.append(repr(exc))

        threads = [threading.Thread(target=exporter, args=(random.Random(rng.random()),)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        writer.join()
        where = f"seed {seed}, round {i}"
        assert not errors, f"{where}: {errors[:3]}"
        assert_exactly_once(audit(FolderParts(out)(), traffic, watermark=_watermark(db, str(out)), where=where), where)
    export_rl_logs(config, Settings(), sink=open_sink(str(out), Settings(), FAST))
    found = audit(FolderParts(out)(final=True), traffic, watermark=_watermark(db, str(out)), where=f"seed {seed}")
    undelivered = set(traffic.expected) - set(found["delivered"])
    record(
        "overlapping RL exports to one folder",
        area="rl-logs",
        tried=n,
        lost=len(found["twice"]) + len(found["missing"]) + len(undelivered),
        exporters_per_round=3,
        exports=len(exports),
        exports_with_nothing_left=exports.count(0),
        episodes=len(traffic.expected),
    )
    assert_exactly_once(found, f"seed {seed}, after the last run")
    assert not undelivered
