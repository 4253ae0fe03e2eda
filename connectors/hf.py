"""Hugging Face datasets, streamed: a hub dataset id, or local jsonl/json/csv/tsv/parquet files or a directory of them."""

from __future__ import annotations

import csv
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bhashaflow.config import HfSource
from bhashaflow.core.records import Position, RawRecord
from bhashaflow.core.settings import Settings
from connectors.base import SourceError, TransientSourceError

HUB_PROBE_TIMEOUT_S = 3.0

_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# file suffix -> (datasets builder, builder options)
_BUILDERS: dict[str, tuple[str, dict[str, Any]]] = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".ndjson": ("json", {}),
    # Keep every cell as the text it is: no "NA"/"null" -> NaN (and string columns, see _text_features),
    # no quote stripping in TSV, where a quote is part of the sentence.
    ".csv": ("csv", {"na_filter": False}),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE, "na_filter": False}),
    ".parquet": ("parquet", {}),
}
_FORMAT_SUFFIX = {"jsonl": ".jsonl", "tsv": ".tsv", "parquet": ".parquet"}


def _suffix(path: Path) -> str:
    """The data suffix of a file name, looking through a compression suffix (`x.jsonl.gz` -> `.jsonl`)."""
    name = path.name.lower()
    for comp in _COMPRESSIONS:
        if name.endswith(comp):
            name = name[: -len(comp)]
            break
    return Path(name).suffix


def hub_reachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether an HTTP request to the hub endpoint gets any answer within `timeout_s` seconds.

    Run in a thread so that a hanging DNS lookup, which socket timeouts do not bound, cannot stall the caller.
    """
    done = threading.Event()
    answered: list[bool] = []

    def probe() -> None:
        try:
            with httpx.Client(timeout=timeout_s) as client:
                client.head(endpoint)
            answered.append(True)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            pass
        finally:
            done.set()

    threading.Thread(target=probe, name="hf-hub-probe", daemon=True).start()
    done.wait(timeout_s + 0.5)
    return bool(answered)


class HfConnector:
    """Rows of a Hugging Face dataset split, streamed with `datasets.load_dataset(..., streaming=True)`.

    `uri` is a hub id (`org/name`, with `subset` and `split`, default `train`) or a local file or directory.
    Rows come back with the dataset's own columns. The position is `{"consumed": n}`, the number of rows
    already yielded; resuming skips that many rows of the stream.

    The loaders parse whole blocks, so an unparseable line in a local file fails the source (SourceError naming
    the file) rather than coming back as one malformed record.
    """

    def __init__(self, source: HfSource, settings: Settings) -> None:
        """Args:
        source: an `hf` source.
        settings: supplies the hub token, the offline flag and the hub endpoint.
        """
        self.name = source.name
        self.source = source
        self.settings = settings
        self.split = source.split or "train"
        self.local_path = self._local_path(source.uri)

    def _local_path(self, uri: str) -> Path | None:
        """The local file or directory `uri` names, or None when it is a hub dataset id."""
        if uri.startswith("file://"):
            uri = urlsplit(uri).path
        path = Path(uri).expanduser()
        if path.exists():
            return path
        looks_local = (
            uri.startswith(("/", "./", "../", "~"))
            or uri.count("/") > 1  # hub ids are `name` or `org/name`
            or _suffix(path) in _BUILDERS
        )
        if looks_local:
            raise SourceError(f"source {self.name!r}: local path {uri} does not exist")
        return None

    def _data_files(self, path: Path) -> tuple[str, list[str], dict[str, Any]]:
        """The builder, data files and builder options for a local file or directory."""
        fmt = self.source.format
        if path.is_file():
            suffix = _FORMAT_SUFFIX[fmt] if fmt else _suffix(path)
            if suffix not in _BUILDERS:
                raise SourceError(
                    f"source {self.name!r}: cannot tell the format of {path}; name it "
                    f"{', '.join(_BUILDERS)} or set 'format'"
                )
            builder, options = _BUILDERS[suffix]
            return builder, [str(path)], options
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            # skip hidden and marker files (.DS_Store, _SUCCESS) and any file in a hidden folder
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
            and _suffix(p) in _BUILDERS
            and (fmt is None or _suffix(p) == _FORMAT_SUFFIX[fmt])
        )
        files = self._split_files(path, files)
        if not files:
            wanted = _FORMAT_SUFFIX[fmt] if fmt else ", ".join(_BUILDERS)
            raise SourceError(f"source {self.name!r}: directory {path} holds no data files ({wanted})")
        suffixes = sorted({_suffix(p) for p in files})
        if any(_BUILDERS[s] != _BUILDERS[suffixes[0]] for s in suffixes):
            raise SourceError(
                f"source {self.name!r}: directory {path} mixes formats ({', '.join(suffixes)}); set 'format' to pick one"
            )
        builder, options = _BUILDERS[_suffix(files[0])]
        return builder, [str(p) for p in files], options

    def _split_files(self, path: Path, files: list[Path]) -> list[Path]:
        """The files of the configured split, when file names carry splits as in a hub repo's local copy.

        Split names are read the way `datasets` reads a hub repo (`train-00000-of-00002.parquet`,
        `data/test.jsonl`, ...); a folder without them is one split, `train`.
        """
        from datasets.data_files import DataFilesDict, get_data_patterns

        if not files:
            return files
        try:
            by_split = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable folder layout is this source's failure
            raise SourceError(f"source {self.name!r}: cannot list data files of {path}: {exc}") from exc
        splits = {str(name): {Path(f).resolve() for f in split_files} for name, split_files in by_split.items()}
        if self.split not in splits:
            raise SourceError(
                f"source {self.name!r}: directory {path} has no split {self.split!r} (found: {', '.join(sorted(splits))})"
            )
        return [f for f in files if f.resolve() in splits[self.split]]

    def _text_features(self, first_file: str, options: dict[str, Any]) -> Any:
        """All-string features for a CSV/TSV, named from its header, so "007" stays "007" rather than 7."""
        import datasets
        import fsspec

        with fsspec.open(first_file, "rt", compression="infer", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter=options.get("sep", ","), quoting=options.get("quoting", csv.QUOTE_MINIMAL))
            header = next(reader, None)
        if not header:
            raise SourceError(f"source {self.name!r}: {first_file} has no header line")
        return datasets.Features({column: datasets.Value("string") for column in header})

    def _load(self) -> Any:
        import datasets  # heavy; only sources of this kind pay for it

        if self.local_path is not None:
            builder, files, options = self._data_files(self.local_path)
            try:
                if builder == "csv":
                    options = {**options, "features": self._text_features(files[0], options)}
                return datasets.load_dataset(
                    builder, data_files={self.split: files}, split=self.split, streaming=True, **options
                )
            except SourceError:
                raise
            except Exception as exc:  # noqa: BLE001 - any loader failure is this source's failure
                raise SourceError(f"source {self.name!r}: cannot open {self.local_path}: {exc}") from exc

        uri = self.source.uri
        if self.settings.hf_hub_offline or not hub_reachable(self.settings.hf_endpoint):
            why = (
                "HF_HUB_OFFLINE is set"
                if self.settings.hf_hub_offline
                else f"{self.settings.hf_endpoint} did not answer"
            )
            raise SourceError(
                f"source {self.name!r}: cannot stream hub dataset {uri!r}: the Hugging Face Hub is not reachable "
                f"(offline; {why}); point uri at a local copy (a .jsonl/.csv/.tsv/.parquet file or a directory of them)"
            )
        token = self.settings.hf_token.get_secret_value() if self.settings.hf_token else None
        try:
            return datasets.load_dataset(uri, name=self.source.subset, split=self.split, streaming=True, token=token)
        except (ConnectionError, TimeoutError, httpx.TransportError) as exc:
            raise TransientSourceError(f"source {self.name!r}: hub dataset {uri!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - not found, gated, bad split: not worth retrying
            raise SourceError(f"source {self.name!r}: cannot open hub dataset {uri!r}: {exc}") from exc

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield the split's rows after the `start["consumed"]` first ones."""
        consumed = 0 if start is None else start.get("consumed")
        if not isinstance(consumed, int) or consumed < 0:
            raise SourceError(f"source {self.name!r}: position {start!r} does not belong to this hf source")
        dataset = self._load()
        if consumed:
            dataset = dataset.skip(consumed)
        label = str(self.local_path) if self.local_path is not None else f"{self.source.uri}[{self.split}]"
        rows = iter(dataset)
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except (ConnectionError, TimeoutError, httpx.TransportError) as exc:
                raise TransientSourceError(f"source {self.name!r}: {label} after row {consumed}: {exc}") from exc
            except Exception as exc:  # noqa: BLE001 - a parse or schema failure ends this source
                raise SourceError(f"source {self.name!r}: cannot read {label} after row {consumed}: {exc}") from exc
            consumed += 1
            yield RawRecord(position={"consumed": consumed}, ref=f"{label}:{consumed}", row=dict(row))
