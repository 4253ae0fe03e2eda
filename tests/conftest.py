"""Fixtures shared by the whole suite: real local servers to stream from and write to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FaultyHTTPServer, S3Server


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[FaultyHTTPServer]:
    """A file server on 127.0.0.1 over a fresh directory (`.root`), with Range support and a fault `.plan`."""
    root = tmp_path / "http-root"
    root.mkdir()
    server = FaultyHTTPServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _s3_session() -> Iterator[S3Server]:
    server = S3Server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_server(_s3_session: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """moto's S3 server behind a fault-injecting proxy, emptied for each test.

    The environment points `Settings()` at it: fake credentials and AWS_ENDPOINT_URL = the proxy.
    """
    for name in (
        "BHASHAFLOW_AWS_ACCESS_KEY_ID", "BHASHAFLOW_AWS_SECRET_ACCESS_KEY", "BHASHAFLOW_AWS_ENDPOINT_URL",
        "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3Server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3Server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3Server.region)
    monkeypatch.setenv("AWS_REGION", S3Server.region)
    monkeypatch.setenv("AWS_ENDPOINT_URL", _s3_session.endpoint_url)
    _s3_session.reset()
    yield _s3_session
    _s3_session.plan.clear()
