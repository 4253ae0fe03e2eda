"""POST /v1/translate: texts in, translations and episode ids out."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException
from starlette.concurrency import run_in_threadpool

from bhashaflow.core.languages import in_script
from bhashaflow.episodes.store import NewEpisode
from bhashaflow.modeling.encoding import LanguageTagError
from serving.auth import Client
from serving.batcher import BatcherStopped, DeadlineExceeded, OutOfMemory, QueueFull
from serving.deps import Service, ServiceDep, TranslateClient
from serving.engine import NoAdapter
from serving.schemas import AdapterRef, TranslateRequest, TranslateResponse, error_responses

router = APIRouter(prefix="/v1", tags=["translate"])


@router.post(
    "/translate",
    response_model=TranslateResponse,
    responses=error_responses(
        {
            403: "The client's key lacks the translate scope.",
            404: "No adapter is served for the direction.",
            413: "Too many texts, a text too long, or a body over serving.max_body_bytes.",
            422: None,
            503: "Loading, the queue is full, or a text ran out of device memory alone (see Retry-After).",
            504: "Not translated within serving.request_timeout_s.",
        }
    ),
)
async def translate_texts(body: TranslateRequest, service: ServiceDep, client: TranslateClient) -> TranslateResponse:
    """Translate texts with the promoted adapter of their direction; every text becomes an episode of the client."""
    limits = service.config.serving
    if len(body.texts) > limits.max_texts:
        raise HTTPException(413, f"{len(body.texts)} texts in one request; at most {limits.max_texts} are allowed")
    for i, text in enumerate(body.texts):
        if len(text) > limits.max_chars:
            raise HTTPException(413, f"texts[{i}] has {len(text)} characters; at most {limits.max_chars} are allowed")
    if body.src_lang == body.tgt_lang:
        raise HTTPException(422, "src_lang and tgt_lang are the same language")
    try:
        served = await translate_and_record(service, client, body.texts, body.src_lang, body.tgt_lang)
    except NoAdapter as exc:
        raise HTTPException(404, f"no promoted adapter is served for {exc.args[0]}") from None
    return TranslateResponse(
        translations=served.outputs,
        adapter=AdapterRef(direction=served.direction, version=served.version),
        episode_ids=served.episode_ids,
        script_valid=served.script_valid,
    )


@dataclass(frozen=True)
class Served:
    """Texts translated by one adapter version, each recorded as an episode."""

    direction: str
    version: str
    outputs: list[str]
    episode_ids: list[int]
    script_valid: list[bool]


async def translate_and_record(service: Service, client: Client, texts: list[str], src: str, tgt: str) -> Served:
    """Translate `texts` from `src` to `tgt` with the direction's served adapter and record every text as an
    episode of `client` (POST /v1/translate and the LibreTranslate endpoints alike).

    Raises NoAdapter when no adapter is served for the direction; HTTPException 503 (loading, queue full,
    stopping, with Retry-After) and 504 (past serving.request_timeout_s).
    """
    started = time.monotonic()
    direction = f"{src}-{tgt}"
    engine = service.engine
    if not engine.ready:
        raise HTTPException(503, f"the service is {engine.state}", headers={"Retry-After": "5"})
    store = service.episodes()
    slot = engine.acquire(direction)
    try:
        outputs = await engine.batcher.submit(slot.name, texts, service.config.serving.request_timeout_s)
    except QueueFull as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except DeadlineExceeded as exc:
        raise HTTPException(504, str(exc)) from None
    except BatcherStopped as exc:
        raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
    except OutOfMemory as exc:  # the rest of its batch was answered; this text does not fit the device alone
        raise HTTPException(503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None
    except LanguageTagError as exc:  # the base cannot be told the language: no translation to give, ever
        raise HTTPException(422, str(exc)) from None
    finally:
        engine.release(slot)
    latency_ms = (time.monotonic() - started) * 1000.0
    valid = [in_script(out, tgt) for out in outputs]
    base = service.config.base_model
    episodes = [
        NewEpisode(direction, src, tgt, slot.version, base, text, out, latency_ms, ok, client.name)
        for text, out, ok in zip(texts, outputs, valid, strict=True)
    ]
    ids = await run_in_threadpool(store.record, episodes)
    service.metrics.texts.labels(direction, slot.version).inc(len(outputs))
    return Served(direction, slot.version, outputs, ids, valid)
