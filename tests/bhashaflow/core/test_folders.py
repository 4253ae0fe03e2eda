"""Published folders on moto's S3 server: the manifest written last, verified fetches, and no half-publish seen."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import S3Server

from bhashaflow.core.folders import (
    FolderError,
    fetch_folder,
    manifest_uri,
    publish_folder,
    published_names,
    read_manifest,
    remove_published,
)
from bhashaflow.core.fsio import open_fs
from bhashaflow.core.settings import Settings

BUCKET = "runs"
REPO = Path(__file__).resolve().parents[3]


def folder(path: Path, **files: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name.replace("_", ".", 1)).write_bytes(data)
    return path


def contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture
def run_uri(s3_server: S3Server) -> str:
    s3_server.create_bucket(BUCKET)
    return f"s3://{BUCKET}/demo/run-1"


def options(uri: str) -> dict[str, object] | None:
    return Settings().storage_options_for(uri)


def test_a_published_folder_comes_back_byte_for_byte_and_its_manifest_lists_it(run_uri: str, tmp_path: Path) -> None:
    local = folder(tmp_path / "adapter", adapter_json=b'{"r": 16}', weights_safetensors=os.urandom(50_000))
    uri = f"{run_uri}/adapters/eng_Latn-hin_Deva/adapter"

    assert fetch_folder(uri, tmp_path / "copy", options(uri)) is None  # nothing published yet
    manifest = publish_folder(local, uri, options(uri))
    fetched = fetch_folder(uri, tmp_path / "copy", options(uri))

    assert fetched == tmp_path / "copy" and contents(fetched) == contents(local)
    assert read_manifest(uri, options(uri)) == manifest
    assert set(manifest["files"]) == {"adapter.json", "weights.safetensors"}
    assert manifest["files"]["weights.safetensors"]["size"] == 50_000
    assert published_names(f"{run_uri}/adapters/eng_Latn-hin_Deva", options(uri)) == ["adapter"]
    assert fetch_folder(uri, tmp_path / "copy", options(uri)) == fetched  # an intact copy is reused


def test_a_republish_replaces_every_file_and_drops_the_ones_gone(run_uri: str, tmp_path: Path) -> None:
    uri = f"{run_uri}/checkpoints/step-4"
    publish_folder(folder(tmp_path / "v1", a_bin=b"one", old_txt=b"stale"), uri, options(uri))
    fetch_folder(uri, tmp_path / "copy", options(uri))
    publish_folder(folder(tmp_path / "v2", a_bin=b"two"), uri, options(uri))

    fetched = fetch_folder(uri, tmp_path / "copy", options(uri))

    assert fetched is not None and contents(fetched) == {"a.bin": b"two"}
    fs, path = open_fs(uri, options(uri))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)) == ["a.bin"]


def test_a_file_that_does_not_match_the_manifest_is_refused(run_uri: str, tmp_path: Path, s3_server: S3Server) -> None:
    uri = f"{run_uri}/adapter"
    publish_folder(folder(tmp_path / "a", w_safetensors=b"weights"), uri, options(uri))
    s3_server.client.put_object(Bucket=BUCKET, Key="demo/run-1/adapter/w.safetensors", Body=b"tampered")

    with pytest.raises(FolderError, match=r"adapter/w.safetensors does not match its manifest"):
        fetch_folder(uri, tmp_path / "copy", options(uri))
    assert not (tmp_path / "copy").exists()  # nothing half-copied left behind


def test_unpublishing_removes_the_manifest_first(run_uri: str, tmp_path: Path) -> None:
    uri = f"{run_uri}/checkpoints/step-2"
    publish_folder(folder(tmp_path / "a", x_json=b"{}"), uri, options(uri))
    remove_published(uri, options(uri))
    assert fetch_folder(uri, tmp_path / "copy", options(uri)) is None
    fs, _ = open_fs(uri, options(uri))
    assert not fs.exists(manifest_uri(uri).removeprefix("s3://"))


_PUBLISH = """
import json, sys
from pathlib import Path
from bhashaflow.core.folders import publish_folder
from bhashaflow.core.settings import Settings
local, uri = sys.argv[1], sys.argv[2]
publish_folder(Path(local), uri, Settings().storage_options_for(uri))
"""


@pytest.mark.parametrize("stalled", ["a.bin", "z.bin"])
def test_a_kill_during_an_upload_leaves_no_folder_never_a_mix(
    run_uri: str, tmp_path: Path, s3_server: S3Server, stalled: str
) -> None:
    uri = f"{run_uri}/adapters/x/adapter"
    publish_folder(folder(tmp_path / "v1", a_bin=b"a1", z_bin=b"z1"), uri, options(uri))
    new = folder(tmp_path / "v2", a_bin=b"a2" * 1000, z_bin=b"z2" * 1000)
    s3_server.plan.clear()  # forget the requests of the first publish
    s3_server.plan.slow(60.0, method="PUT", path=f"/adapters/x/adapter/{stalled}")  # the upload hangs there
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _PUBLISH, str(new), uri], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(r.method == "PUT" and stalled in r.path for r in s3_server.plan.requests):
            assert proc.poll() is None and time.monotonic() < deadline, "the publish never reached the stalled upload"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    s3_server.plan.clear()

    assert read_manifest(uri, options(uri)) is None  # the old manifest went before the first new byte
    assert fetch_folder(uri, tmp_path / "copy", options(uri)) is None

    publish_folder(new, uri, options(uri))  # the retried publish completes
    fetched = fetch_folder(uri, tmp_path / "copy", options(uri))
    assert fetched is not None and contents(fetched) == contents(new)


def test_a_local_folder_is_its_own_copy_and_incomplete_ones_are_none(tmp_path: Path) -> None:
    done = folder(tmp_path / "adapter", w_bin=b"w")
    assert fetch_folder(str(done), tmp_path / "unused") == done
    (done / ".incomplete").touch()
    assert fetch_folder(str(done), tmp_path / "unused") is None
    target = tmp_path / "published"
    publish_folder(folder(tmp_path / "src", w_bin=b"v"), str(target))
    assert contents(target) == {"w.bin": b"v"}
    assert read_manifest(str(target)) is None  # local folders need no manifest
