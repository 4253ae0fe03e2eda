"""The translation service: `create_app(config)` builds it, `run(config, host, port)` serves it with uvicorn.

At start-up the base model and the promoted adapter of every configured direction are loaded in the
generation thread; until that is done /health answers 503 and /v1/translate 503 with Retry-After.
Every request is answered for an API client (serving/auth.py): a key's client, or `anonymous` without
one where serving.require_auth is off, which `run` allows only on loopback unless serving.allow_anonymous.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bhashaflow import __version__
from bhashaflow.config import ConfigError, PipelineConfig, ServingConfig
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import EpisodeStore
from serving.auth import exposure_warning, load_key_ring
from serving.deps import MissingScope, Service, identify_client
from serving.engine import Engine
from serving.metrics import MetricsMiddleware, ServingMetrics
from serving.middleware import BodyLimitMiddleware
from serving.ratelimit import RateLimiter
from serving.routes import adapters, feedback, libretranslate, ops, translate
from serving.schemas import error_responses

log = logging.getLogger(__name__)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            where, msg = "body", "not valid JSON"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        errors.append({"loc": where, "msg": msg, "type": str(err.get("type", ""))})
    return "; ".join(f"{e['loc']}: {e['msg']}" for e in errors) or "malformed request", errors


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, errors = _validation_message(exc)
    return JSONResponse({"detail": message, "errors": errors}, status_code=422)


# FastAPI's answer to a body it cannot decode at all (bytes that are not UTF-8): a malformed body, so 422.
_UNPARSABLE_BODY = "There was an error parsing the body"


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _UNPARSABLE_BODY:
        return JSONResponse({"detail": "body: not valid JSON (it must be UTF-8)"}, status_code=422)
    body: dict[str, Any] = {"detail": str(exc.detail)}
    if isinstance(exc, MissingScope):
        body["missing_scope"] = exc.scope
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def _on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


async def _poll_registry(engine: Engine, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        if not engine.ready:
            continue
        try:
            result = await engine.reload()
            if result["swapped"]:
                log.info("registry poll swapped %s", result["swapped"])
        except Exception:  # noqa: BLE001 - the next poll tries again
            log.exception("registry poll failed")


def _document_limits(app: FastAPI, serving: ServingConfig) -> None:
    """Put this deployment's size limits into the OpenAPI schema, so clients (and fuzzers) see them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = generate()["components"]["schemas"]
            texts = schemas["TranslateRequest"]["properties"]["texts"]
            texts["maxItems"] = serving.max_texts
            texts["items"]["maxLength"] = serving.max_chars
            for option in schemas["FeedbackRequest"]["properties"]["correction"]["anyOf"]:
                if option.get("type") == "string":
                    option["maxLength"] = serving.max_chars
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(config: PipelineConfig, settings: Settings | None = None) -> FastAPI:
    """Build the service for a pipeline config; loading starts when the app starts (lifespan).

    Args:
        config: the pipeline config (`serving`, `directions`, `base_model`, `registry`, generation settings).
        settings: credentials, the API token and keys; read from the environment when omitted.
    """
    settings = settings or Settings()
    keys = load_key_ring(settings, config.serving)
    if config.serving.require_auth and not keys.configured:
        raise ConfigError(
            "serving.require_auth is set but no API key is: set BHASHAFLOW_API_TOKEN, BHASHAFLOW_API_KEYS "
            "or serving.api_keys_file"
        )
    metrics = ServingMetrics()
    engine = Engine(config, settings, metrics)
    metrics.queue_depth.set_function(lambda: engine.batcher.queue_depth)
    limit = RateLimiter(config.serving.feedback_per_minute, config.serving.feedback_burst)
    service = Service(config=config, settings=settings, engine=engine, metrics=metrics, keys=keys, feedback_limit=limit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.store = EpisodeStore(config.serving.episodes_db)
        engine.start()
        poller = None
        if config.serving.reload_poll_s > 0:
            poller = asyncio.create_task(_poll_registry(engine, config.serving.reload_poll_s))
        try:
            yield
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await asyncio.to_thread(engine.stop)
            service.store.close()

    app = FastAPI(
        title="bhashaflow",
        version=__version__,
        summary="LoRA translation adapters for Indic languages, served with dynamic batching.",
        lifespan=lifespan,
    )
    app.state.service = service
    unauthorized = error_responses({401: None})  # every endpoint: an unknown key, or none under require_auth
    for router in (translate.router, feedback.router, adapters.router, ops.router):
        app.include_router(router, dependencies=[Depends(identify_client)], responses=unauthorized)
    # LibreTranslate's API: its clients send the key in the body too, and read errors as {"error": ...}.
    app.include_router(libretranslate.router)
    _document_limits(app, config.serving)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
    # Added last = outermost: every response is counted, the 413s of the body limit included.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=config.serving.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


class _NoQueryInAccessLog(logging.Filter):
    """Drops query strings from uvicorn's access log: a client that puts its key there must not see it logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?...", *args[3:])
        return True


def run(config: PipelineConfig, host: str | None = None, port: int | None = None) -> None:
    """Serve the app with uvicorn until interrupted; raises RuntimeError when the model cannot be loaded.

    Args:
        config: the pipeline config.
        host: address to bind (default serving.host); one that is not loopback needs serving.require_auth
            or serving.allow_anonymous (ConfigError otherwise, before anything starts).
        port: port to bind (default serving.port; 0 picks a free one).
    """
    host = host or config.serving.host
    warning = exposure_warning(config.serving, host)
    app = create_app(config)
    service: Service = app.state.service
    if warning:
        log.warning("%s", warning)
    clients = ", ".join(f"{c.name} ({'+'.join(sorted(c.scopes))})" for c in service.keys.clients()) or "none"
    log.info("API clients: %s; without a key: %s", clients, "refused" if config.serving.require_auth else "anonymous")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=config.serving.port if port is None else port,
            log_level="info",
            timeout_graceful_shutdown=int(config.serving.request_timeout_s) + 5,
        )
    )
    logging.getLogger("uvicorn.access").addFilter(_NoQueryInAccessLog())

    async def serve() -> None:
        async def stop_when_loading_fails() -> None:
            while service.engine.state == "loading":
                await asyncio.sleep(0.2)
            if service.engine.state == "failed":
                server.should_exit = True

        watcher = asyncio.create_task(stop_when_loading_fails())
        try:
            await server.serve()
        finally:
            watcher.cancel()

    asyncio.run(serve())
    if service.engine.error:
        raise RuntimeError(service.engine.error)
