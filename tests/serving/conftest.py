"""A tiny random M2M100 base, LoRA adapters for it in a real registry, and helpers to start the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from serving_helpers import (
    EN_HI,
    HI_EN,
    TOKEN,
    Clients,
    Serve,
    make_adapter,
    register,
    serving_config,
)
from tiny_models import build_tiny_base

from bhashaflow.core.settings import Settings


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised 1-layer M2M100 with a tokenizer trained on FLORES dev text (no pre-training).

    Bengali too: en-bn is configured (and promoted by some tests); a base without its tag could not serve it.
    """
    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"), ["eng_Latn", "hin_Deva", "ben_Beng"])


@pytest.fixture(scope="session")
def adapters(tiny_base: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Adapter folders: 'a' and 'b' (two versions for a direction), 'c' (another direction)."""
    root = tmp_path_factory.mktemp("adapters")
    return {key: make_adapter(tiny_base, root / key, seed) for key, seed in (("a", 1), ("b", 2), ("c", 3))}


@pytest.fixture
def registry(tmp_path: Path, tiny_base: str, adapters: dict[str, Path]) -> str:
    """A registry with v0001 promoted for en-hi and hi-en; nothing for en-bn."""
    uri = str(tmp_path / "registry")
    register(uri, EN_HI, adapters["a"], tiny_base)
    register(uri, HI_EN, adapters["c"], tiny_base)
    return uri


@pytest.fixture
def engine() -> str:
    """The serving engine; the tests where it matters run on both (`@ENGINES`)."""
    return "torch"


@pytest.fixture
def serve(tmp_path: Path, tiny_base: str, registry: str, engine: str, cache_dir: Path) -> Iterator[Serve]:
    """Start the app (lifespan included) with serving overrides, wait until it is ready, stop it afterwards."""
    clients = Clients()

    def start(*, token: str | None = TOKEN, **serving: Any) -> TestClient:
        config = serving_config(tmp_path, tiny_base, registry, **{"engine": engine, **serving})
        return clients.start(config, Settings(api_token=token))  # type: ignore[call-arg]

    yield start
    clients.close()
