"""A planted secret never leaves the process: not in files, logs, messages, HTTP bodies, nor Prefect's records.

One unique secret stem is planted as AWS_SECRET_ACCESS_KEY, HF_TOKEN, BHASHAFLOW_API_TOKEN and QDRANT_API_KEY,
as the key of an API client (BHASHAFLOW_API_KEYS holds its sha256), and as the userinfo or a query parameter
of source URLs. Then ingestion runs (the library, and the CLI as a
user runs it, through Prefect), sources fail in the ways they do (401, 5xx, dropped and refused connections,
an unreachable S3 endpoint), the service answers wrong tokens and errors, and every byte written (run folder,
registry, quarantine, manifests, reports, Prefect's results and database), logged (DEBUG), printed or raised
is searched for the stem and for the base64 of each `user:secret` an HTTP client would send.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from _knobs import count
from fastapi.testclient import TestClient
from servers import FaultyHTTPServer, S3Server
from serving_helpers import EN_HI, make_adapter, register, serving_config

from bhashaflow.config import PipelineConfig, config_from_dict
from bhashaflow.core.redact import redact_text, redact_uri
from bhashaflow.core.settings import Settings
from bhashaflow.data.ingest import stage_source, write_shards
from bhashaflow.episodes.export import export_rl_logs
from connectors import SourceError, open_connector
from connectors.retry import RetryPolicy
from connectors.sinks import HttpSink, SinkError, open_sink
from serving.app import create_app
from serving.auth import hash_key

REPO = Path(__file__).resolve().parents[2]
BHASHAFLOW = str(Path(sys.executable).parent / "bhashaflow")
SECRET = f"s3cr3t-{uuid.uuid4().hex}"
DIRECTION = "eng_Latn-hin_Deva"
FAST = {"attempts": 2, "base_delay_s": 0.002, "max_delay_s": 0.01, "timeout_s": 2.0}
HI = ["यह पहला वाक्य है", "दिल्ली भारत की राजधानी है", "मुझे चाय पसंद है", "आज मौसम अच्छा है"]
SECRET_PARAMS = [
    "token",
    "access_token",
    "api_key",
    "apikey",
    "X-Amz-Signature",
    "sig",
    "password",
    "key",
    "secret",
    "auth",
    "X-Amz-Security-Token",
    "client_secret",
    "sessionid",
]


def _needles() -> list[bytes]:
    """The stem, and `user:secret` as HTTP Basic auth sends it, for every user name the tests use."""
    out = [SECRET.encode()]
    for user in ("user", SECRET, "", "admin"):
        for suffix in ("", "-url", "-user"):
            out.append(base64.b64encode(f"{user}:{SECRET}{suffix}".encode()))
    return out


NEEDLES = _needles()


def hits_in_text(text: str | bytes) -> bool:
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return any(n in data for n in NEEDLES)


def leaking_files(*roots: Path) -> list[str]:
    out = []
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            if hits_in_text(path.read_bytes()):
                out.append(str(path))
    return out


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def log_text(records: Iterable[logging.LogRecord]) -> str:
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    return "\n".join(handler.format(r) for r in records)


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret in every credential the settings read."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")
    monkeypatch.setenv("HF_TOKEN", f"{SECRET}-hf")
    monkeypatch.setenv("BHASHAFLOW_API_TOKEN", f"{SECRET}-api")
    monkeypatch.setenv("QDRANT_API_KEY", f"{SECRET}-qdrant")
    # A named API client whose key holds the secret; the server is given only the key's sha256.
    monkeypatch.setenv(
        "BHASHAFLOW_API_KEYS",
        json.dumps([{"name": "planted", "scopes": ["translate", "feedback"], "sha256": hash_key(f"{SECRET}-key")}]),
    )


def pairs_file(n: int = 30) -> bytes:
    rows = [
        json.dumps(
            {"src": f"Sentence {i}.", "tgt": f"{HI[i % 4]} {i}", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"},
            ensure_ascii=False,
        )
        for i in range(n)
    ]
    rows += [
        '{"src": "broken json',
        json.dumps({"src": "Latin", "tgt": "namaste", "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),
    ]
    return ("\n".join(rows) + "\n").encode()


def secret_url(rng: random.Random, base: str) -> str:
    """`base` (http://host:port/path) with the secret as userinfo, as a query parameter, or both."""
    style = rng.choice(["user:pass", "token-as-user", "query", "both", "query-among-others"])
    scheme, rest = base.split("://", 1)
    param = rng.choice(SECRET_PARAMS)
    if style == "user:pass":
        return f"{scheme}://user:{SECRET}-url@{rest}"
    if style == "token-as-user":
        return f"{scheme}://{SECRET}-user@{rest}"
    if style == "query":
        return f"{base}?{param}={SECRET}-url"
    if style == "both":
        return f"{scheme}://user:{SECRET}-url@{rest}?{param}={SECRET}-url"
    return f"{base}?lang=hi&{param}={SECRET}-url&page=1"


def make_config(tmp_path: Path, sources: list[dict[str, Any]], **extra: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "run_name": "secrets",
            "workdir": str(tmp_path / "runs"),
            "directions": [DIRECTION],
            "sources": sources,
            "ingest": {"commit_rows": 10, "max_reject_fraction": 0.5},
            "source_retry": FAST,
            **extra,
        }
    )


def stage(config: PipelineConfig, run_uri: str) -> list[Any]:
    settings = Settings()
    return [
        stage_source(config, s, open_connector(s, settings, config.directions, config.source_retry), run_uri)
        for s in config.sources
    ]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


def test_redaction_masks_userinfo_and_secret_parameters(seed: int, record: Any) -> None:
    """The one redaction function, on random URLs: secrets gone, the rest (scheme, host, path, others) kept."""
    n = count("redact_runs", 500, 5000)
    for i in range(n):
        rng = random.Random(seed + i)
        host = rng.choice(["127.0.0.1:8080", "example.org", "[::1]:9000", "bucket.s3.amazonaws.com"])
        path = "/" + "/".join(
            rng.choice(["data", "pairs.jsonl", "x%20y", "%2F", "hi"]) for _ in range(rng.randint(0, 3))
        )
        base = f"{rng.choice(['http', 'https', 's3', 'hf'])}://{host}{path}"
        url = secret_url(rng, base)
        out = redact_uri(url)
        assert not hits_in_text(out), f"seed {seed} run {i}: {url} -> {out}"
        assert out.startswith(base.split("://")[0] + "://") and host in out and path in out, (url, out)
        if "lang=hi" in url:
            assert "lang=hi" in out and "page=1" in out, (url, out)
        message = f"source 'web': GET {url} answered 401 Unauthorized; see {url}."
        assert not hits_in_text(redact_text(message)) and "answered 401 Unauthorized" in redact_text(message)
    assert redact_uri("https://example.org/pairs.jsonl?lang=hi") == "https://example.org/pairs.jsonl?lang=hi"
    assert redact_uri("data/flores200") == "data/flores200"
    assert redact_uri(f"http://u:{SECRET}@h/a b/x.jsonl") == "http://***@h/a b/x.jsonl"
    assert redact_uri("https://u:p@h/x?token=t&lang=hi") == "https://***@h/x?token=***&lang=hi"
    record("secrets: redaction of random URLs", area="security", tried=n, lost=0)


def test_ingestion_writes_and_logs_no_secret(
    planted: None,
    http_server: FaultyHTTPServer,
    s3_server: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A successful ingestion from secret-bearing URLs and S3 credentials leaves them nowhere."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")  # after s3_server set its own (moto takes any)
    caplog.set_level(logging.DEBUG)
    (http_server.root / "pairs.jsonl").write_bytes(pairs_file())
    s3_server.client.create_bucket(Bucket="corpora")
    s3_server.client.put_object(Bucket="corpora", Key="pairs.jsonl.gz", Body=gzip.compress(pairs_file()))
    base = http_server.url("pairs.jsonl")
    config = make_config(
        tmp_path,
        [
            {"name": "web-user", "kind": "http", "uri": base.replace("http://", f"http://user:{SECRET}-url@")},
            {"name": "web-query", "kind": "http", "uri": f"{base}?token={SECRET}-url&lang=hi"},
            {"name": "bucket", "kind": "s3", "uri": "s3://corpora/pairs.jsonl.gz"},
        ],
    )
    run_uri = config.run_uri()
    manifest = write_shards(config, stage(config, run_uri), run_uri)
    assert manifest["totals"]["accepted"] == 30 and manifest["totals"]["rejected"] == 6
    assert manifest["sources"]["web-query"]["uri"].endswith("pairs.jsonl?token=***&lang=hi")
    assert leaking_files(tmp_path / "runs") == []
    assert not hits_in_text(json.dumps(manifest))
    assert not hits_in_text(log_text(caplog.records))
    assert any("HTTP Request: GET" in r.getMessage() for r in caplog.records)  # httpx did log the URLs


def test_failing_sources_name_no_secret(
    planted: None,
    http_server: FaultyHTTPServer,
    s3_server: S3Server,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    record: Any,
) -> None:
    """401s, 5xx, dropped, cut and refused connections, corrupt data, unreachable S3/Qdrant/hub: no secret anywhere."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")
    caplog.set_level(logging.DEBUG)
    (http_server.root / "pairs.jsonl").write_bytes(pairs_file())
    (http_server.root / "bad.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"not gzip at all" * 20)
    s3_server.client.create_bucket(Bucket="corpora")
    s3_server.client.put_object(Bucket="corpora", Key="pairs.jsonl", Body=pairs_file())
    faults = [
        "401",
        "403",
        "404",
        "500",
        "drop",
        "truncate",
        "refused",
        "corrupt",
        "s3-unreachable",
        "s3-500",
        "qdrant-unreachable",
        "hf-offline",
    ]
    n = count("secret_fault_runs", 24, 240)
    failed = leaked = retried = 0
    for i in range(n):
        rng = random.Random(seed + i)
        fault = faults[i % len(faults)] if i < len(faults) else rng.choice(faults)
        where = f"seed {seed} run {i} ({fault})"
        http_server.plan.clear()
        s3_server.plan.clear()
        caplog.clear()
        source: dict[str, Any] = {
            "name": f"src{i}",
            "kind": "http",
            "uri": secret_url(rng, http_server.url("pairs.jsonl")),
        }
        if fault in ("401", "403", "404"):
            http_server.plan.fail(times=10, status=int(fault))
        elif fault == "500":
            http_server.plan.fail(times=10, status=500)
        elif fault == "drop":
            http_server.plan.drop(after_bytes=rng.randint(0, 200), times=10)
        elif fault == "truncate":
            http_server.plan.truncate(after_bytes=rng.randint(1, 200), times=10)
        elif fault == "refused":
            source["uri"] = secret_url(rng, f"http://127.0.0.1:{_closed_port()}/pairs.jsonl")
        elif fault == "corrupt":
            source["uri"] = secret_url(rng, http_server.url("bad.jsonl.gz"))
        elif fault == "s3-unreachable":
            source = {
                "name": f"src{i}",
                "kind": "s3",
                "uri": "s3://corpora/pairs.jsonl",
                "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
            }
        elif fault == "s3-500":
            source = {"name": f"src{i}", "kind": "s3", "uri": "s3://corpora/pairs.jsonl"}
            s3_server.plan.fail(times=10, status=500)
        elif fault == "qdrant-unreachable":
            source = {
                "name": f"src{i}",
                "kind": "qdrant",
                "collection": "pairs",
                "uri": secret_url(rng, f"http://127.0.0.1:{_closed_port()}"),
            }
        else:
            source = {"name": f"src{i}", "kind": "hf", "uri": "some-org/some-dataset"}
        config = make_config(tmp_path / f"run{i}", [source])
        error: BaseException | None = None
        try:
            stage(config, config.run_uri())
        except Exception as exc:  # noqa: BLE001 - every failure is inspected below
            error = exc
        # Drops and cuts hand out rows before failing, and retries resume after them: such a run may finish.
        if fault not in ("drop", "truncate"):
            assert error is not None, f"{where}: did not fail"
        if error is not None:
            assert isinstance(error, SourceError), f"{where}: {exception_text(error)}"
            failed += 1
        retried += sum("retry" in r.getMessage() for r in caplog.records)
        places = {
            "error": exception_text(error) if error is not None else "",
            "logs": log_text(caplog.records),
            "files": "\n".join(leaking_files(tmp_path / f"run{i}")),
        }
        bad = [name for name, text in places.items() if hits_in_text(text)]
        leaked += bool(bad)
        assert not bad, f"{where}: the secret leaked into {bad}: {places[bad[0]][-3000:]}"
    record(
        "secrets: failing sources (status, drop, refused, corrupt, s3, qdrant, hub)",
        area="security",
        tried=n,
        lost=leaked,
        failed_clean=failed,
        retries_logged=retried,
        faults=len(faults),
    )


def test_rl_export_sink_errors_name_no_secret(
    planted: None, http_server: FaultyHTTPServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTTP sink of the RL export: a refused POST, a refused connection, a `${NAME}` credential."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SECURITY_TEST_TOKEN", f"{SECRET}-env")
    policy = RetryPolicy(attempts=2, base_delay_s=0.001, max_delay_s=0.002)
    named = http_server.url("ingest") + "?token=${SECURITY_TEST_TOKEN}"
    assert cast(HttpSink, open_sink(named, Settings(), policy)).target.endswith(f"?token={SECRET}-env")
    for target in (
        http_server.url("ingest").replace("http://", f"http://user:{SECRET}-url@") + f"?token={SECRET}-url",
        f"http://127.0.0.1:{_closed_port()}/ingest?api_key={SECRET}-url",
        named,
    ):
        with pytest.raises(SinkError) as refused:  # the file server answers POST with 501
            open_sink(target, Settings(), policy).write("episodes-1.jsonl", b"{}\n", "application/x-ndjson")
        assert not hits_in_text(exception_text(refused.value)), exception_text(refused.value)
        assert "/ingest" in str(refused.value)
    assert not hits_in_text(log_text(caplog.records))
    with pytest.raises(SinkError, match=r"names \$\{SECURITY_TEST_MISSING\}, which is not set"):
        open_sink("http://127.0.0.1:1/x?token=${SECURITY_TEST_MISSING}", Settings(), policy)


def test_the_service_answers_and_logs_no_secret(
    planted: None, tmp_path: Path, tiny_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = make_adapter(tiny_base, tmp_path / "adapter", seed=1)
    registry = str(tmp_path / "registry")
    register(registry, EN_HI, adapter, tiny_base)
    settings = Settings()
    assert settings.api_token is not None and settings.api_token.get_secret_value() == f"{SECRET}-api"
    right = {"Authorization": f"Bearer {SECRET}-api"}
    bodies: list[str] = []
    with TestClient(
        create_app(serving_config(tmp_path, tiny_base, registry, max_body_bytes=4000), settings),
        raise_server_exceptions=False,
    ) as client:
        while client.get("/health").json()["status"] == "loading":
            time.sleep(0.05)
        for headers in (
            {},
            {"Authorization": f"Bearer {SECRET}-ap"},
            {"Authorization": f"Bearer {SECRET}-api-x"},
            {"Authorization": f"Basic {SECRET}-api"},
            {"Authorization": f"bearer {SECRET}"},
        ):
            resp = client.post("/v1/adapters/reload", headers=headers)
            assert resp.status_code == 401
            bodies.append(resp.text + json.dumps(dict(resp.headers)))
        for method, path, body in (
            ("POST", "/v1/translate", {"texts": ["hi"], "src_lang": "eng_Latn", "tgt_lang": "ben_Beng"}),
            ("POST", "/v1/translate", {"texts": ["hi"], "src_lang": "xx", "tgt_lang": "hin_Deva"}),
            ("POST", "/v1/translate", {"texts": ["x" * 5000], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),
            ("POST", "/v1/feedback", {"episode_id": 999, "reward": 1}),
            ("POST", "/v1/translate", {"texts": ["hello"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}),
            ("POST", "/v1/adapters/reload", None),
            ("GET", "/health", None),
            ("GET", "/v1/adapters", None),
            ("GET", "/metrics", None),
            ("GET", "/openapi.json", None),
            ("GET", "/nope", None),
        ):
            resp = client.request(method, path, json=body, headers=right)
            bodies.append(resp.text + json.dumps(dict(resp.headers)))
        bodies += _use_the_planted_client_key(client)
    # A base that cannot load (a hub id, offline) with HF_TOKEN set: the failure is reported without it.
    failing = serving_config(tmp_path, "some-org/some-model", registry)
    with TestClient(create_app(failing, Settings()), raise_server_exceptions=False) as client:
        while (health := client.get("/health")).json()["status"] == "loading":
            time.sleep(0.05)
        assert health.json()["status"] == "failed"
        bodies.append(health.text)
    # The RL export of what the planted client asked for and rated: its name goes there, never its key.
    export = config_from_dict(
        {
            "directions": [EN_HI],
            "serving": {"episodes_db": str(tmp_path / "episodes.db")},
            "rl_export": {"target": str(tmp_path / "rl-logs")},
        }
    )
    assert export_rl_logs(export, settings, sink=open_sink(export.rl_export.target, settings))["exported"] >= 1
    records = [json.loads(line) for p in (tmp_path / "rl-logs").iterdir() for line in p.read_text().splitlines()]
    assert ("planted", "planted") in {(r["client"], r["feedback_client"]) for r in records}
    assert [b[:300] for b in bodies if hits_in_text(b)] == []
    assert not hits_in_text(log_text(caplog.records))
    assert leaking_files(tmp_path) == []  # the episodes database and the RL logs among them


def _use_the_planted_client_key(client: TestClient) -> list[str]:
    """Translate and rate with the planted client's key, and send near misses of it; the answers."""
    key = {"Authorization": f"Bearer {SECRET}-key"}
    served = client.post(
        "/v1/translate", json={"texts": ["hello"], "src_lang": "eng_Latn", "tgt_lang": "hin_Deva"}, headers=key
    )
    assert served.status_code == 200, served.text
    episode = served.json()["episode_ids"][0]
    answers = [client.post("/v1/feedback", json={"episode_id": episode, "reward": 1}, headers=key)]
    assert answers[0].status_code == 200 and answers[0].json()["client"] == "planted"
    answers.append(client.post("/v1/adapters/reload", headers=key))
    assert answers[-1].status_code == 403 and answers[-1].json()["missing_scope"] == "admin"
    for wrong in (f"{SECRET}-ke", f"{SECRET}-keyx", hash_key(f"{SECRET}-key"), f"{SECRET}-key-api"):
        answers.append(
            client.post(
                "/v1/feedback", json={"episode_id": episode, "reward": 1}, headers={"Authorization": f"Bearer {wrong}"}
            )
        )
        assert answers[-1].status_code == 401
    return [r.text + json.dumps(dict(r.headers)) for r in answers]


def test_the_cli_pipeline_and_a_failing_ingest_leak_no_secret(
    planted: None,
    http_server: FaultyHTTPServer,
    s3_server: S3Server,
    tiny_base: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record: Any,
) -> None:
    """`bhashaflow pipeline --json` (ingest, train, evaluate, promote, report) and a failing `bhashaflow ingest --json`."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")
    (http_server.root / "pairs.jsonl").write_bytes(pairs_file(40))
    s3_server.client.create_bucket(Bucket="corpora")
    s3_server.client.put_object(Bucket="corpora", Key="pairs.jsonl", Body=pairs_file(40))
    base = http_server.url("pairs.jsonl")
    config = {
        "run_name": "secrets",
        "workdir": str(tmp_path / "runs"),
        "registry": str(tmp_path / "registry"),
        "directions": [DIRECTION],
        "base_model": tiny_base,
        "source_retry": FAST,
        "sources": [
            {"name": "web-user", "kind": "http", "uri": base.replace("http://", f"http://user:{SECRET}-url@")},
            {"name": "web-query", "kind": "http", "uri": f"{base}?access_token={SECRET}-url&lang=hi"},
            {"name": "bucket", "kind": "s3", "uri": "s3://corpora/pairs.jsonl"},
            # The way to keep a credential out of the config (and so out of Prefect's records): name it.
            {
                "name": "web-env",
                "kind": "http",
                "uri": base.replace("http://", "http://user:${SECURITY_TEST_PASSWORD}@")
                + "?token=${SECURITY_TEST_TOKEN}",
            },
        ],
        "ingest": {"max_reject_fraction": 0.5},
        "training": {"max_steps": 1, "batch_size": 4},
        "evaluation": {"max_sentences": 2, "max_new_tokens": 4, "batch_size": 2},
        "promotion": {"min_gain": 0.0},
        "serving": {"episodes_db": str(tmp_path / "episodes.db")},
    }
    good = tmp_path / "pipeline.yaml"
    good.write_text(yaml.safe_dump(config))
    failing = tmp_path / "failing.yaml"
    # The failing run keeps its run folder (and Prefect's results) on S3: credentials travel to result storage.
    failing.write_text(
        yaml.safe_dump(
            {
                **config,
                "run_name": "failing",
                "workdir": "s3://corpora/runs",
                "sources": [
                    config["sources"][0],
                    {
                        "name": "web",
                        "kind": "http",
                        "uri": f"http://user:{SECRET}-url@127.0.0.1:{http_server.port}/gone.jsonl?token={SECRET}-url",
                    },
                ],
            }
        )
    )

    def env(home: str) -> dict[str, str]:
        out = dict(os.environ)
        for key in [k for k in out if k.startswith("PREFECT_")]:
            del out[key]
        out.update(
            {
                "PREFECT_HOME": str(tmp_path / home),
                "HF_HUB_OFFLINE": "1",
                "PYTHONUNBUFFERED": "1",
                "SECURITY_TEST_PASSWORD": f"{SECRET}-env",
                "SECURITY_TEST_TOKEN": f"{SECRET}-env",
                "BHASHAFLOW_CACHE_DIR": str(tmp_path / "cache"),
                "PREFECT_LOGGING_LEVEL": "DEBUG",
            }
        )
        return out

    # Both at once, each with its own temporary Prefect server and database.
    runs = {
        "pipeline": subprocess.Popen(
            [BHASHAFLOW, "pipeline", str(good), "--json"],
            cwd=REPO,
            env=env("prefect-a"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        "ingest": subprocess.Popen(
            [BHASHAFLOW, "ingest", str(failing), "--json"],
            cwd=REPO,
            env=env("prefect-b"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    }
    out = {name: proc.communicate(timeout=400) for name, proc in runs.items()}
    stdout, stderr = out["pipeline"]
    assert runs["pipeline"].returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["directions"][DIRECTION]["promoted"] is True
    assert runs["ingest"].returncode == 1
    error_lines = [line for line in out["ingest"][1].splitlines() if line.startswith("bhashaflow ingest: error:")]
    assert len(error_lines) == 1 and "404" in error_lines[0] and "gone.jsonl" in error_lines[0], out["ingest"][1][
        -2000:
    ]

    assert (
        result["directions"][DIRECTION]["promoted"]
        and json.loads((tmp_path / "runs" / "secrets" / result["run_id"] / "manifest.json").read_text())["sources"][
            "web-env"
        ]["read"]
        == 42
    )  # the ${...} source was read, with its credentials

    printed = [name for name, (o, e) in out.items() if hits_in_text(o) or hits_in_text(e)]
    assert printed == [], [out[name][1][-3000:] for name in printed]
    databases = sorted((tmp_path / "prefect-a").glob("*.db")) + sorted((tmp_path / "prefect-b").glob("*.db"))
    assert len(databases) == 2
    written = [
        f
        for f in leaking_files(tmp_path / "runs", tmp_path / "registry", tmp_path / "prefect-a", tmp_path / "prefect-b")
        if not Path(f).name.startswith("prefect.db")
    ]
    assert written == []
    objects = [o["Key"] for o in s3_server.client.list_objects_v2(Bucket="corpora").get("Contents", [])]
    assert any(key.startswith("runs/failing/") for key in objects), objects  # the good source was staged there
    in_bucket = [
        k for k in objects if hits_in_text(s3_server.client.get_object(Bucket="corpora", Key=k)["Body"].read())
    ]
    assert in_bucket == []
    stored = {cell for db in databases for cell in prefect_cells_with_secret(db)}
    # Prefect records a flow run's parameters as given: the URIs that held a secret literally, and nothing else.
    literal = [src["uri"] for src in config["sources"] if SECRET in src["uri"]]
    assert {where for where, _ in stored} <= {"flow_run.parameters"}, stored
    for _, text in stored:
        for uri in literal + [f"http://user:{SECRET}-url@127.0.0.1:{http_server.port}/gone.jsonl?token={SECRET}-url"]:
            text = text.replace(json.dumps(uri)[1:-1], "")
        assert not hits_in_text(text), text[:2000]
    record(
        "secrets: CLI pipeline and failing ingest through Prefect",
        area="security",
        tried=2,
        lost=len(written),
        files_checked=sum(
            1
            for root in ("runs", "registry", "prefect-a", "prefect-b")
            for p in (tmp_path / root).rglob("*")
            if p.is_file()
        ),
        s3_objects_checked=len(objects),
        prefect_parameter_cells=len(stored),
    )


def prefect_cells_with_secret(db: Path) -> list[tuple[str, str]]:
    """(table.column, text) of every cell of a Prefect database that holds the secret stem."""
    out = []
    with sqlite3.connect(db) as con:
        tables = [r[0] for r in con.execute("select name from sqlite_master where type = 'table'")]
        for table in tables:
            for column in [r[1] for r in con.execute(f'pragma table_info("{table}")')]:
                query = f'select cast("{column}" as blob) from "{table}" where instr(cast("{column}" as blob), ?) > 0'
                for (cell,) in con.execute(query, (SECRET.encode(),)):
                    out.append((f"{table}.{column}", bytes(cell).decode("utf-8", "replace")))
    return out
