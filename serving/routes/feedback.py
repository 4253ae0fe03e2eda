"""POST /v1/feedback: a reward (and optionally a correction) for one episode, from the client that requested it."""

from __future__ import annotations

import math

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from bhashaflow.episodes.store import ForeignEpisode, UnknownEpisode
from serving.auth import Client
from serving.deps import FeedbackClient, MissingScope, Service, ServiceDep
from serving.schemas import FeedbackRequest, FeedbackResponse, error_responses

router = APIRouter(prefix="/v1", tags=["feedback"])


def parse_episode_id(raw: int | str) -> int:
    """An episode id given as a number or its decimal string; anything else is a 422."""
    if isinstance(raw, int):
        return raw
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 30:
        raise HTTPException(422, f"episode_id {raw[:40]!r} is not an episode id (a positive integer)")
    return int(text)


def within_feedback_limit(service: Service, client: Client) -> None:
    """429 with Retry-After when the client is over serving.feedback_per_minute (counted in /metrics)."""
    wait_s = service.feedback_limit.take(client.name)
    if wait_s > 0:
        service.metrics.feedback_limited.labels(client.name).inc()
        limits = service.config.serving
        retry_after = max(1, math.ceil(wait_s))
        raise HTTPException(
            429,
            f"client {client.name!r} is over its feedback rate limit ({limits.feedback_per_minute:g} a minute, "
            f"{limits.feedback_burst} at once); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(
        {
            403: "The key lacks the feedback scope, or the episode was requested by another client (needs admin).",
            404: "Unknown episode.",
            413: "A correction too long, or a body over serving.max_body_bytes.",
            422: None,
            429: "Over the client's feedback rate limit (serving.feedback_per_minute).",
            503: "The service is starting.",
        }
    ),
)
async def give_feedback(body: FeedbackRequest, service: ServiceDep, client: FeedbackClient) -> FeedbackResponse:
    """Attach a reward in [-1, 1] and an optional correction to an episode the client requested (any episode
    with the admin scope); a second feedback replaces the first."""
    episode_id = parse_episode_id(body.episode_id)
    max_chars = service.config.serving.max_chars
    if body.correction is not None and len(body.correction) > max_chars:
        raise HTTPException(413, f"correction has {len(body.correction)} characters; at most {max_chars} are allowed")
    store = service.episodes()
    within_feedback_limit(service, client)
    owner = None if client.can("admin") else client.name
    try:
        episode = await run_in_threadpool(
            store.attach_feedback, episode_id, body.reward, body.correction, client=client.name, requested_by=owner
        )
    except UnknownEpisode:
        raise HTTPException(404, f"no episode has id {episode_id}") from None
    except ForeignEpisode:
        raise MissingScope(
            "admin",
            f"episode {episode_id} was requested by another client; client {client.name!r} may rate only "
            "its own episodes (the admin scope may rate any)",
        ) from None
    service.metrics.feedback.labels(client.name).inc()
    assert episode.reward is not None and episode.feedback_at is not None
    return FeedbackResponse(
        episode_id=episode.id,
        reward=episode.reward,
        correction=episode.correction,
        feedback_at=episode.feedback_at,
        client=client.name,
    )
