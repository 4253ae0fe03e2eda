"""FLORES-200 files in the official layout (`dev/<lang>.dev`, `devtest/<lang>.devtest`) and their checksums."""

from __future__ import annotations

from pathlib import Path

from bhashaflow.core.hashing import sha256_file
from bhashaflow.core.records import SourceError

FLORES_SPLITS = ("dev", "devtest")


def flores_file(flores_dir: str | Path, lang: str, split: str) -> Path:
    """Path of one language's file of a split: `<flores_dir>/<split>/<lang>.<split>`."""
    if split not in FLORES_SPLITS:
        raise SourceError(f"FLORES-200 split {split!r} does not exist; expected one of {', '.join(FLORES_SPLITS)}")
    return Path(flores_dir) / split / f"{lang}.{split}"


def read_flores(flores_dir: str | Path, lang: str, split: str) -> list[str]:
    """The sentences of one language of a FLORES-200 split, one per line, in file order.

    Args:
        flores_dir: directory in the official layout (holding `dev/` and `devtest/`).
        lang: FLORES-200 code, e.g. `hin_Deva`.
        split: `dev` or `devtest`.

    Raises:
        SourceError: the file is missing or not UTF-8; the message names the file.
    """
    path = flores_file(flores_dir, lang, split)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SourceError(f"FLORES-200 file {path} does not exist (no {lang} in the {split} split)") from None
    except UnicodeDecodeError as exc:
        raise SourceError(f"FLORES-200 file {path} is not UTF-8: {exc}") from None
    except OSError as exc:
        raise SourceError(f"cannot read FLORES-200 file {path}: {exc.strerror or exc}") from None
    # Split on "\n" only: str.splitlines would also break on U+2028 and U+0085 inside sentences.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


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
