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
