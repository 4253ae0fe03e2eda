"""The FLORES reader: lines kept exactly (never split on U+2028), the bundled release and its checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import FLORES

from bhashaflow.data.flores import flores_checksums_ok, read_flores
from connectors import SourceError


def test_read_flores_keeps_lines_exactly(tmp_path: Path) -> None:
    (tmp_path / "devtest").mkdir()
    # a Windows line end, an in-sentence line separator, a blank line, no newline at the end
    (tmp_path / "devtest" / "hin_Deva.devtest").write_bytes("क\r\nख\u2028ग\n\nघ".encode())
    assert read_flores(tmp_path, "hin_Deva", "devtest") == ["क", "ख\u2028ग", "", "घ"]
    with pytest.raises(SourceError, match="split 'test' does not exist"):
        read_flores(tmp_path, "hin_Deva", "test")
    with pytest.raises(SourceError, match=r"hin_Deva\.dev does not exist"):
        read_flores(tmp_path, "hin_Deva", "dev")

def test_read_flores_on_the_bundled_release() -> None:
    dev = read_flores(FLORES, "hin_Deva", "dev")
    devtest = read_flores(FLORES, "eng_Latn", "devtest")
    assert (len(dev), len(devtest)) == (997, 1012)
    assert dev[0].startswith("सोमवार को, स्टैनफ़ोर्ड यूनिवर्सिटी")

def test_checksums_of_the_bundled_release_match() -> None:
    assert flores_checksums_ok(FLORES, "dev") == []
    assert flores_checksums_ok(FLORES, "devtest") == []

def test_checksums_list_changed_and_missing_files(flores_dir: Path) -> None:
    assert flores_checksums_ok(flores_dir, "dev") == []
    (flores_dir / "dev" / "hin_Deva.dev").write_text("tampered\n", encoding="utf-8")
    (flores_dir / "dev" / "eng_Latn.dev").unlink()
    assert flores_checksums_ok(flores_dir, "dev") == ["eng_Latn.dev", "hin_Deva.dev"]
    assert flores_checksums_ok(flores_dir, "devtest") == []
    (flores_dir / "devtest.sha256").unlink()
    with pytest.raises(SourceError, match=r"devtest\.sha256"):
        flores_checksums_ok(flores_dir, "devtest")
