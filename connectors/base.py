"""The errors every source connector raises; the shape they share is `bhashaflow.core.records.RecordSource`."""

from __future__ import annotations

from bhashaflow.core.records import SourceError

__all__ = ["SourceError", "TransientSourceError"]


class TransientSourceError(SourceError):
    """A source failure worth retrying (dropped connection, 5xx) once the connector's own retries ran out."""
