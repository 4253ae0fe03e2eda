"""Fixtures shared by the whole suite: real local servers to stream from and write to."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Hub ids (facebook/nllb-200-distilled-600M, ...) resolve offline to the stand-ins of tests/standins.py. Set before
# anything imports huggingface_hub, which reads HF_HUB_CACHE once, at import; subprocesses inherit it.
# Read once here: tests that point BHASHAFLOW_CACHE_DIR at a scratch folder must not rebuild the stand-ins.
STANDINS_CACHE_DIR = Path(os.environ.get("BHASHAFLOW_CACHE_DIR") or "~/.cache/bhashaflow").expanduser()
HF_STANDINS_CACHE = STANDINS_CACHE_DIR / "hf-standins" / "hub"
os.environ["HF_HUB_CACHE"] = str(HF_STANDINS_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
from servers import FaultyHTTPServer, S3Server  # noqa: E402

from bhashaflow.core.hashing import sha256_bytes  # noqa: E402


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
        "BHASHAFLOW_AWS_ACCESS_KEY_ID",
        "BHASHAFLOW_AWS_SECRET_ACCESS_KEY",
        "BHASHAFLOW_AWS_ENDPOINT_URL",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL_S3",
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


@pytest.fixture(scope="session")
def _cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache_dir(_cache_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """BHASHAFLOW_CACHE_DIR for the session: what is cached (converted CTranslate2 models) stays out of the home folder."""
    monkeypatch.setenv("BHASHAFLOW_CACHE_DIR", str(_cache_root))
    return _cache_root


@pytest.fixture(scope="session")
def tiny_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny models of both families the real bases have: M2M100 (NLLB's layout) and BLOOM."""
    from tiny_models import save_tiny_bloom, save_tiny_m2m100

    root = tmp_path_factory.mktemp("tiny-bases")
    return {"seq2seq": save_tiny_m2m100(root / "m2m100"), "causal": save_tiny_bloom(root / "bloom")}


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer M2M100 with a tokenizer trained on FLORES dev text and no pre-training: built in seconds."""
    from tiny_models import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny-base"), ["eng_Latn", "hin_Deva", "tam_Taml"])


@pytest.fixture(scope="session")
def hf_standins() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE) holding the stand-ins of every base in standins.HUB_IDS.

    Built once per machine into BHASHAFLOW_CACHE_DIR/standins (under a minute), then placed in milliseconds.
    """
    from standins import ensure_hf_cache

    return ensure_hf_cache(HF_STANDINS_CACHE, cache_dir=STANDINS_CACHE_DIR)


# Three aligned lines per language: a FLORES-layout folder small enough to reason about line by line.
FLORES_SAMPLE = {
    "eng_Latn": ["One.", "Two.", "Three."],
    "hin_Deva": ["एक।", "दो।", "तीन।"],
    "tam_Taml": ["ஒன்று.", "இரண்டு.", "மூன்று."],
}


@pytest.fixture
def flores_dir(tmp_path: Path) -> Path:
    """A three-line FLORES-layout folder with dev and devtest splits and their checksum files."""
    root = tmp_path / "flores200"
    for split in ("dev", "devtest"):
        (root / split).mkdir(parents=True)
        sums = []
        for lang, lines in FLORES_SAMPLE.items():
            path = root / split / f"{lang}.{split}"
            path.write_text("".join(f"{split} {line}\n" for line in lines), encoding="utf-8")
            sums.append(f"{sha256_bytes(path.read_bytes())}  {path.name}\n")
        (root / f"{split}.sha256").write_text("".join(sums), encoding="utf-8")
    return root
