"""Artifacts that stay one card while what they show changes."""

from __future__ import annotations

from typing import cast
from uuid import UUID

from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate


class MarkdownCard:
    """One markdown artifact, created by the first `write` and rewritten in place by the next ones.

    Each `create_markdown_artifact` under a key is a new version, and a flow run's Artifacts tab shows every version
    it made: a chart redrawn at each checkpoint would be a pile of cards. Updating the first one keeps a single card.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self.id: UUID | None = None

    def write(self, markdown: str, description: str) -> None:
        if self.id is None:  # sync here: a UUID, not a coroutine
            self.id = cast(UUID, create_markdown_artifact(markdown, key=self.key, description=description))
            return
        with get_client(sync_client=True) as client:
            client.update_artifact(self.id, ArtifactUpdate(data=markdown, description=description))
