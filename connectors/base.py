"""The one streaming shape every source connector has, and the factory that picks one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from bhashaflow.config import SourceConfig, SourceRetryConfig
from bhashaflow.core.records import Position, RawRecord, SourceError
from bhashaflow.core.settings import Settings

__all__ = ["Connector", "SourceError", "TransientSourceError", "open_connector"]


class TransientSourceError(SourceError):
    """A source failure worth retrying (dropped connection, 5xx) once the connector's own retries ran out."""


class Connector(Protocol):
    """Streams a source's rows, resumable from a position it reports with every record."""

    name: str

    def iter_records(self, start: Position | None = None) -> Iterator[RawRecord]:
        """Yield every row after `start` (from the beginning when None), each with its resume position."""
        ...


def open_connector(
    source: SourceConfig, settings: Settings, directions: list[str], retry: SourceRetryConfig | None = None
) -> Connector:
    """Build the connector for a configured source.

    Args:
        source: the source's config.
        settings: credentials and endpoints.
        directions: configured directions (the FLORES connector yields pairs for these).
        retry: retries and timeouts of http and s3 sources (the defaults when None).
    """
    retry = retry or SourceRetryConfig()
    if source.kind == "flores":
        from connectors.flores import FloresConnector

        return FloresConnector(source, directions)
    if source.kind == "http":
        from connectors.http import HttpConnector

        return HttpConnector(
            source, settings, attempts=retry.attempts, base_delay=retry.base_delay_s, max_delay=retry.max_delay_s,
            timeout=retry.timeout_s,
        )
    if source.kind == "s3":
        from connectors.s3 import S3Connector

        return S3Connector(
            source, settings, attempts=retry.attempts, base_delay=retry.base_delay_s, max_delay=retry.max_delay_s,
            timeout=retry.timeout_s,
        )
    if source.kind == "hf":
        from connectors.hf import HfConnector

        return HfConnector(source, settings)
    if source.kind == "qdrant":
        from connectors.qdrant import QdrantConnector

        return QdrantConnector(source, settings)
    raise SourceError(f"source {source.name!r}: unknown kind {source.kind!r}")
