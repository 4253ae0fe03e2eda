"""Readers of the outside world. One module per source kind, one streaming shape (`Connector`).

No Prefect here: tasks wrap these.
"""

from __future__ import annotations

from connectors.base import Connector, SourceError, open_connector

__all__ = ["Connector", "SourceError", "open_connector"]
