"""The factory that picks the connector of a configured source."""

from __future__ import annotations

from bhashaflow.config import SourceConfig, SourceRetryConfig
from bhashaflow.core.records import RecordSource, SourceError
from bhashaflow.core.settings import Settings

__all__ = ["open_connector"]


def open_connector(
    source: SourceConfig, settings: Settings, directions: list[str], retry: SourceRetryConfig | None = None
) -> RecordSource:
    """Build the connector for a configured source.

    Each connector module is imported only when its kind is asked for: a pipeline that reads no Qdrant
    collection never loads its client.

    Args:
        source: the source's config.
        settings: credentials and endpoints.
        directions: configured directions (the FLORES connector yields pairs for these).
        retry: retries and timeouts of http, s3, aligned, tmx and rl_logs sources (the defaults when None).
    """
    if source.kind == "flores":
        from connectors.flores_dev import FloresConnector

        return FloresConnector(source, directions)
    if source.kind == "http":
        from connectors.http import HttpConnector

        return HttpConnector(source, settings, retry)
    if source.kind == "s3":
        from connectors.s3 import S3Connector

        return S3Connector(source, settings, retry)
    if source.kind == "hf":
        from connectors.hf import HfConnector

        return HfConnector(source, settings)
    if source.kind == "aligned":
        from connectors.aligned import AlignedConnector

        return AlignedConnector(source, settings, retry)
    if source.kind == "tmx":
        from connectors.tmx import TmxConnector

        return TmxConnector(source, settings, retry)
    if source.kind == "rl_logs":
        from connectors.rl_logs import RlLogsConnector

        return RlLogsConnector(source, settings, retry)
    if source.kind == "qdrant":
        from connectors.qdrant import QdrantConnector

        return QdrantConnector(source, settings)
    raise SourceError(f"source {source.name!r}: unknown kind {source.kind!r}")
