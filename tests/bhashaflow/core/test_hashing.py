"""sha256 the one way: bytes, canonical JSON, files on any fsspec store, folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from bhashaflow.core.hashing import sha256_bytes, sha256_dir, sha256_file, sha256_json


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one 1 MiB chunk, not a multiple of it
    (tmp_path / "blob").write_bytes(data)

    assert sha256_file(str(tmp_path / "blob")) == hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "blob") == sha256_bytes(data)  # a Path reads the same bytes
    assert sha256_file(f"file://{tmp_path / 'blob'}") == sha256_bytes(data)  # so does a file:// URL


def test_equal_json_gives_equal_digests_whatever_the_key_order() -> None:
    assert sha256_json({"a": 1, "b": [2, 3]}) == sha256_json({"b": [2, 3], "a": 1})
    assert sha256_json({"a": 1}) != sha256_json({"a": 2})


def test_a_folder_digest_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_bytes(b"one")
    (tmp_path / "sub" / "b.txt").write_bytes(b"two")
    digest = sha256_dir(tmp_path)
    assert digest.startswith("sha256:") and digest == sha256_dir(tmp_path)
    (tmp_path / "sub" / "b.txt").write_bytes(b"TWO")
    changed = sha256_dir(tmp_path)
    assert changed != digest
    (tmp_path / "sub" / "b.txt").rename(tmp_path / "sub" / "c.txt")
    assert sha256_dir(tmp_path) != changed  # a rename alone changes it too
