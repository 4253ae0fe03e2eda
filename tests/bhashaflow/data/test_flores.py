"""The FLORES reader: lines kept exactly (never split on U+2028), the bundled release and its checksums."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import FLORES

from bhashaflow.core.hashing import sha256_file
from bhashaflow.data.flores import FLORES_SPLITS, read_flores
from connectors import SourceError



def flores_checksums_ok(flores_dir: str | Path, split: str) -> list[str]:
    """Files of a split whose SHA-256 differs from `<split>.sha256` (or that are missing); empty when all match.

    Args:
        flores_dir: directory in the official layout, holding `dev.sha256` / `devtest.sha256`.
        split: `dev` or `devtest`.

    Raises:
        SourceError: the checksum file is missing or has a malformed line.
    """
    if split not in FLORES_SPLITS:
        raise SourceError(f"FLORES-200 split {split!r} does not exist; expected one of {', '.join(FLORES_SPLITS)}")
    sums_path = Path(flores_dir) / f"{split}.sha256"
    try:
        listing = sums_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourceError(f"cannot read FLORES-200 checksums {sums_path}: {exc.strerror or exc}") from None
    bad = []
    for lineno, line in enumerate(listing.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise SourceError(f"{sums_path}:{lineno}: expected '<sha256>  <file>', got {line!r}")
        expected, name = parts[0].lower(), parts[1].strip().lstrip("*")  # '*' marks binary mode in sha256sum
        path = Path(flores_dir) / split / name
        try:
            actual = sha256_file(path)
        except OSError:
            bad.append(name)
            continue
        if actual != expected:
            bad.append(name)
    return bad


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
