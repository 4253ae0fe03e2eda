"""POST /v1/feedback: a reward (and optionally a correction) for one episode."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from bhashaflow.episodes.store import UnknownEpisode
from serving.deps import ServiceDep
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


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses=error_responses(
        {404: "Unknown episode.", 413: "A correction too long, or a body over serving.max_body_bytes.", 422: None,
         503: "The service is starting."}
    ),
)
async def give_feedback(body: FeedbackRequest, service: ServiceDep) -> FeedbackResponse:
    """Attach a reward in [-1, 1] and an optional correction to an episode; a second feedback replaces the first."""
    episode_id = parse_episode_id(body.episode_id)
    max_chars = service.config.serving.max_chars
    if body.correction is not None and len(body.correction) > max_chars:
        raise HTTPException(413, f"correction has {len(body.correction)} characters; at most {max_chars} are allowed")
    store = service.episodes()
    try:
        episode = await run_in_threadpool(store.attach_feedback, episode_id, body.reward, body.correction)
    except UnknownEpisode:
        raise HTTPException(404, f"no episode has id {episode_id}") from None
    assert episode.reward is not None and episode.feedback_at is not None
    return FeedbackResponse(
        episode_id=episode.id, reward=episode.reward, correction=episode.correction, feedback_at=episode.feedback_at
    )
