"""Readers and writers of the outside world: one module per source kind, each a `RecordSource`; the sinks.

No Prefect here: tasks wrap these.
"""

from __future__ import annotations

from connectors.base import SourceError, TransientSourceError
from connectors.factory import open_connector

__all__ = ["SourceError", "TransientSourceError", "open_connector"]
