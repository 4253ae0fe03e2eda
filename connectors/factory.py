"""The factory that picks the connector of a configured source: a table from kind to constructor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bhashaflow.config import (
    AlignedSource,
    FloresSource,
    HfSource,
    HttpSource,
    QdrantSource,
    RlLogsSource,
    S3Source,
    SourceConfig,
    SourceKind,
    SourceRetryConfig,
    TmxSource,
)
from bhashaflow.core.records import RecordSource, SourceError
from bhashaflow.core.settings import Settings

__all__ = ["CONNECTORS", "open_connector"]

# Each builder takes the model of its own kind (tests/connectors/test_factory.py holds the table to that).
# Each connector module is imported only when its kind is asked for: a pipeline that reads no Qdrant
# collection never loads its client.
Builder = Callable[[Any, Settings, list[str], SourceRetryConfig | None], RecordSource]


def _flores(
    source: FloresSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None
) -> RecordSource:
    from connectors.flores_dev import FloresConnector

    return FloresConnector(source, directions)


def _http(
    source: HttpSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None
) -> RecordSource:
    from connectors.http import HttpConnector

    return HttpConnector(source, settings, retry)


def _s3(source: S3Source, settings: Settings, directions: list[str], retry: SourceRetryConfig | None) -> RecordSource:
    from connectors.s3 import S3Connector

    return S3Connector(source, settings, retry)


def _hf(source: HfSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None) -> RecordSource:
    from connectors.hf import HfConnector

    return HfConnector(source, settings)


def _qdrant(
    source: QdrantSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None
) -> RecordSource:
    from connectors.qdrant import QdrantConnector

    return QdrantConnector(source, settings)


def _aligned(
    source: AlignedSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None
) -> RecordSource:
    from connectors.aligned import AlignedConnector

    return AlignedConnector(source, settings, retry)


def _tmx(source: TmxSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None) -> RecordSource:
    from connectors.tmx import TmxConnector

    return TmxConnector(source, settings, retry)


def _rl_logs(
    source: RlLogsSource, settings: Settings, directions: list[str], retry: SourceRetryConfig | None
) -> RecordSource:
    from connectors.rl_logs import RlLogsConnector

    return RlLogsConnector(source, settings, retry)


CONNECTORS: dict[SourceKind, Builder] = {
    "flores": _flores,
    "http": _http,
    "s3": _s3,
    "hf": _hf,
    "qdrant": _qdrant,
    "aligned": _aligned,
    "tmx": _tmx,
    "rl_logs": _rl_logs,
}
"""The connector of each source kind, built from the kind's model, the settings, the directions and the retries."""


def open_connector(
    source: SourceConfig, settings: Settings, directions: list[str], retry: SourceRetryConfig | None = None
) -> RecordSource:
    """Build the connector for a configured source.

    Args:
        source: the source's config.
        settings: credentials and endpoints.
        directions: configured directions (the FLORES connector yields pairs for these).
        retry: retries and timeouts of http, s3, aligned, tmx and rl_logs sources (the defaults when None).
    """
    build = CONNECTORS.get(source.kind)
    if build is None:  # only a model built without validation (model_construct) gets here
        raise SourceError(f"source {source.name!r}: unknown kind {source.kind!r}")
    return build(source, settings, directions, retry)
