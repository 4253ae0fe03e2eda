"""Locations in artifacts: a local path as text with the command that opens it, S3 as presigned links a browser
follows (fetched back here from moto's S3 server), the s3:// URL as text when nothing can sign, http(s) as links."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest
from servers import S3Server

from bhashaflow.core.settings import Settings
from bhashaflow.pipeline.links import Locator

LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def test_a_local_folder_is_text_naming_its_host_and_the_command_that_opens_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "registry" / "v0001").mkdir(parents=True)
    locator = Locator(Settings(), host="worker-1")
    folder = locator.folder("registry/v0001")  # relative to the worker's working directory
    assert folder == f"`{tmp_path}/registry/v0001` on host `worker-1` (open: `ls -l {tmp_path}/registry/v0001`)"
    assert locator.file(f"file://{tmp_path}/chrf.png") == (
        f"`{tmp_path}/chrf.png` on host `worker-1` (open: `xdg-open {tmp_path}/chrf.png`)"
    )
    assert not LINK.search(folder) and "file://" not in folder + locator.file(str(tmp_path / "a b.png"))
    assert "'" + str(tmp_path / "a b.png") + "'" in locator.file(str(tmp_path / "a b.png"))  # quoted for a shell


def test_http_is_a_link() -> None:
    assert Locator(Settings()).file("https://models.example.com/hi/v0001/") == (
        "[v0001](https://models.example.com/hi/v0001/)"
    )


def test_s3_files_get_presigned_links_a_browser_can_follow(s3_server: S3Server) -> None:
    s3_server.create_bucket("registry")
    files = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": b"\x00weights"}
    for name, data in files.items():
        s3_server.put("registry", f"hi/versions/v0001/{name}", data)
    locator = Locator(Settings())
    folder = locator.folder("s3://registry/hi/versions/v0001")
    assert folder.startswith(
        f"`s3://registry/hi/versions/v0001` (`aws s3 cp --recursive s3://registry/hi/versions/"
        f"v0001/ v0001 --endpoint-url {s3_server.endpoint_url}`); files, links valid 7 days: "
    )
    links = dict(LINK.findall(folder))
    assert sorted(links) == sorted(files)
    for name, url in links.items():
        assert "Signature=" in url  # signed: no bucket policy is needed to follow it
        assert _get(url) == files[name]
    [(name, url)] = LINK.findall(locator.file("s3://registry/hi/versions/v0001/adapter_config.json"))
    assert (name, _get(url)) == ("adapter_config.json", files["adapter_config.json"])


def test_s3_is_text_when_signing_is_off_or_impossible(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    s3_server.create_bucket("runs")
    s3_server.put("runs", "demo/1/chrf.png", b"png")
    off = Locator(Settings(artifact_link_ttl_s=0))
    assert off.file("s3://runs/demo/1/chrf.png") == (
        f"`s3://runs/demo/1/chrf.png` (`aws s3 cp s3://runs/demo/1/chrf.png . --endpoint-url {s3_server.endpoint_url}`)"
    )
    assert not LINK.search(off.folder("s3://runs/demo/1"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # nothing to sign with
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    unsigned = Locator(Settings())
    assert unsigned.presigned("s3://runs/demo/1/chrf.png") is None
    assert unsigned.file("s3://runs/demo/1/chrf.png").startswith("`s3://runs/demo/1/chrf.png` (`aws s3 cp ")
