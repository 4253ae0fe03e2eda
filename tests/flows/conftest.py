"""A real Prefect server (the test harness: a temporary database) shared by the flow tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """Start one Prefect server for the session; yields its API URL (for CLI subprocesses too)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def cli_env(prefect_api: str, tmp_path) -> dict[str, str]:
    """Environment for `bhashaflow` subprocesses: the shared server, offline hub, a scratch cache."""
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_API_URL": prefect_api,
            "HF_HUB_OFFLINE": "1",
            "BHASHAFLOW_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
