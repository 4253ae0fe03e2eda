"""LibreTranslate's HTTP API beside the service's own: POST /translate, GET /languages, POST /detect,
POST /suggest and GET /frontend/settings, as LibreTranslate documents them (its app/app.py), for the clients
that already speak it (Mastodon, Weblate, Discourse, browser extensions, libretranslatepy...).

Bodies are JSON or form-encoded, whichever the client sends; the API key comes as `api_key` (body or query)
or as the service's usual `Authorization: Bearer` header. Languages are ISO 639-1 codes (`en`, `hi`, `ta`) mapped
to FLORES-200 codes through connectors.langtags (a FLORES code or `hi-IN` is taken too); `source: auto` is read
from the text's script where exactly one served language is written in it. Translations are episodes like
those of POST /v1/translate; a suggestion is a correction on the client's latest episode of that text (or on a
new one) under the feedback scope and its rate limit, like POST /v1/feedback. Errors answer
`{"error": "..."}` (400 for bad input), as LibreTranslate does.
"""

from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bhashaflow.core.languages import LANGUAGES, parse_direction, script_fraction, script_of
from connectors.langtags import ISO_639_1, flores_code
from serving.auth import Client
from serving.deps import MissingScope, Service, ServiceDep, bearer_key, check_scope, client_for_key
from serving.engine import NoAdapter
from serving.routes.feedback import within_feedback_limit
from serving.routes.translate import translate_and_record
from serving.schemas import RETRY_AFTER, Text

log = logging.getLogger(__name__)

# A suggestion's reward: the served output needed fixing (the feedback loop's convention); one that repeats the
# served output confirms it.
SUGGESTION_REWARD = -0.5
CONFIRMATION_REWARD = 1.0
FRONTEND_TIMEOUT_MS = 500  # LibreTranslate's default: how long its web page waits after typing before translating
_KEY_HOW = "Authorization: Bearer <key>, or as api_key"


# --- errors: LibreTranslate's {"error": ...} on these endpoints -------------------------------------------------


class LibreError(BaseModel):
    """Every error answer of the LibreTranslate endpoints."""

    error: str = Field(description="What went wrong, in one line.")


class LibreRoute(APIRoute):
    """A route whose errors answer `{"error": ...}`: 400 for bad input (never 422), other statuses as elsewhere."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_libre(request: Request) -> Response:
            try:
                return await handle(request)
            except RequestValidationError as exc:
                return _error(400, f"Invalid request: {exc.errors()[0].get('msg', 'malformed')}")
            except StarletteHTTPException as exc:
                status = 400 if exc.status_code == 422 else exc.status_code
                response = _error(status, str(exc.detail), exc.headers)
                if isinstance(exc, MissingScope):
                    response = JSONResponse({"error": str(exc.detail), "missing_scope": exc.scope}, status_code=status)
                return response
            except Exception as exc:  # noqa: BLE001 - answered in this API's form, and logged
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                return _error(500, f"internal error: {type(exc).__name__}")

        return handle_libre


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _bad(message: str) -> HTTPException:
    return HTTPException(400, message)


def _responses(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in statuses.items():
        entry: dict[str, Any] = {"model": LibreError, "description": description}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": RETRY_AFTER}
        out[status] = entry
    # The body limit is checked before any route (serving/middleware.py), in the service's own error form.
    out[413] = {
        "description": "Request body over serving.max_body_bytes.",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
            }
        },
    }
    return out


_AUTH_ERRORS = {
    400: "Invalid request (the error says which parameter).",
    401: "Missing or unknown API key (no key: only without serving.require_auth).",
}

router = APIRouter(tags=["libretranslate"], route_class=LibreRoute)


# --- request bodies: JSON or form, api_key from the body, the query or the usual header ---------------------------

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def read_params(request: Request) -> dict[str, Any]:
    """The request's parameters, as LibreTranslate reads them: a JSON body's object, or else the form fields
    and the query string. An empty body is no parameters, whatever its type (Mastodon's GET /languages says
    application/json and sends none)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    params: dict[str, Any]
    raw = await request.body()
    if (media == "application/json" or media.endswith("+json")) and raw.strip():
        try:
            params = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            raise _bad("Invalid JSON format") from None
        if not isinstance(params, dict):
            raise _bad("Invalid JSON format: the body must be a JSON object")
    else:
        params = dict(request.query_params)
        if media in _FORM_TYPES:
            try:
                form = await request.form()
            except Exception:  # noqa: BLE001 - python-multipart's errors have no common base
                raise _bad("Invalid form body") from None
            for name in form:
                value = form.get(name)
                if not isinstance(value, str):
                    raise _bad(f"Invalid request: {name[:40]} must be text, not a file")
                params[name] = value
    return params


Params = Annotated[dict[str, Any], Depends(read_params)]


def libre_client(request: Request, service: ServiceDep, params: Params) -> Client:
    """The request's client: its `Authorization: Bearer` key, else its `api_key` (empty: none)."""
    key = bearer_key(request)
    if key is None:
        given = params.get("api_key")
        if given is not None and not isinstance(given, str):
            raise _bad("Invalid request: api_key must be a string")
        key = given or None
    return client_for_key(service, key, _KEY_HOW)


LibreClient = Annotated[Client, Depends(libre_client)]


M = TypeVar("M", bound=BaseModel)


def _validated(model: type[M], params: dict[str, Any], required: Iterable[str]) -> M:
    """`params` as `model`; 400 naming the first missing or malformed parameter (LibreTranslate's words)."""
    for name in required:
        if params.get(name) in (None, "", []):
            raise _bad(f"Invalid request: missing {name} parameter")
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        err = exc.errors(include_input=False)[0]
        where = str(err["loc"][0]) if err["loc"] else "body"
        raise _bad(f"Invalid request: {where}: {err['msg']}") from None


def _form_text(request: Request, text: str) -> str:
    # LibreTranslate's normalisation of form text (line endings to \n), so a suggestion matches its translation.
    media = request.headers.get("content-type", "").lower()
    return "\n".join(text.splitlines()) if media.startswith(_FORM_TYPES) else text


# --- language codes -----------------------------------------------------------------------------------------------


def libre_code(code: str) -> str:
    """The code LibreTranslate clients know a FLORES-200 language by: ISO 639-1 where it has one (`hin_Deva` -> hi),
    that code with the script for another script of the language (`kas_Deva` -> ks-Deva, `zho_Hant` -> zh-Hant),
    else its ISO 639-3 code (`awa_Deva` -> awa). `flores_code` reads each back to `code`."""
    prefix = code.split("_", 1)[0]
    iso = ISO_639_1.get(code) or next((i for c, i in ISO_639_1.items() if c.split("_", 1)[0] == prefix), None)
    for candidate in ([iso, f"{iso}-{script_of(code)}"] if iso else []) + [prefix]:
        if flores_code(candidate) == code:
            return candidate
    return code


_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")  # en, hi-IN, zh-Hant, hin_Deva


def _language(tag: Any, name: str) -> str:
    code = flores_code(tag) if isinstance(tag, str) and _TAG.fullmatch(tag) else None
    if code is None:
        raise _bad(
            f"{str(tag)[:40]} is not supported" if isinstance(tag, str) else f"Invalid request: {name} must be a string"
        )
    return code


def _unavailable(src: str, tgt: str) -> HTTPException:
    return _bad(
        f"{LANGUAGES[tgt]} ({libre_code(tgt)}) is not available as a target language from "
        f"{LANGUAGES[src]} ({libre_code(src)})"
    )


def detect_by_script(text: str, candidates: Iterable[str]) -> tuple[str, float]:
    """The one language of `candidates` whose script `text` is mostly written in, and the share of its letters in
    that script (0-100); 400 when there is none or more than one (Devanagari: Hindi or Marathi?)."""
    if not any(ch.isalpha() for ch in text):
        raise _bad("Cannot detect a language: the text has no letters")
    scores = {code: script_fraction(text, code) for code in sorted(set(candidates))}
    best = max(scores.values(), default=0.0)
    found = [code for code, score in scores.items() if score >= 0.5 and score == best]
    if not found:
        served = ", ".join(libre_code(c) for c in scores) or "none"
        raise _bad(
            f"Cannot detect a language: no served language ({served}) is written in this text's script; "
            "name the source language"
        )
    if len(found) > 1:
        names = ", ".join(f"{LANGUAGES[c]} ({libre_code(c)})" for c in found)
        raise _bad(f"Cannot detect a language: the text's script is written in {names}; name the source language")
    return found[0], round(best * 100.0, 1)


def _served_pairs(service: Service) -> list[tuple[str, str]]:
    """The (source, target) of every direction served now; 503 while the service is loading."""
    engine = service.engine
    if not engine.ready:
        raise HTTPException(503, f"the service is {engine.state}", headers={"Retry-After": "5"})
    return [parse_direction(direction) for direction in engine.served()]


# --- HTML: translate the text between tags, keep the tags ---------------------------------------------------------

_MARKUP = re.compile(r"(<!--.*?-->|<![^>]*>|<\?.*?\?>|<[^>]*>)", re.DOTALL)
_RAW_TEXT = re.compile(r"<\s*(script|style)\b", re.IGNORECASE)


def html_pieces(markup: str) -> list[tuple[bool, str]]:
    """`markup` cut into (translatable, piece): the text between tags (unescaped) is translatable; tags, comments,
    whitespace and the insides of <script> and <style> are kept as they are."""
    pieces: list[tuple[bool, str]] = []
    raw = False
    for piece in _MARKUP.split(markup):
        if not piece:
            continue
        if _MARKUP.fullmatch(piece):
            opening = _RAW_TEXT.match(piece)
            if opening:
                raw = True
            elif raw and re.match(r"<\s*/\s*(script|style)\b", piece, re.IGNORECASE):
                raw = False
            pieces.append((False, piece))
        else:
            pieces.append((not raw and bool(piece.strip()), piece))
    return pieces


# --- the bodies -----------------------------------------------------------------------------------------------


class _LibreBody(BaseModel):
    # LibreTranslate clients send fields of their own (secret, ...): ignored, as LibreTranslate does.
    model_config = ConfigDict(extra="ignore")

    api_key: StrictStr | None = Field(None, description="An API key (or send Authorization: Bearer <key>).")


class LibreTranslateRequest(_LibreBody):
    """LibreTranslate's POST /translate."""

    q: Text | list[Text] = Field(description="Text to translate, or a list of texts (JSON bodies only).")
    source: StrictStr = Field(
        description='Source language (ISO 639-1, e.g. en), or "auto" to detect it by script.', examples=["en"]
    )
    target: StrictStr = Field(description="Target language (ISO 639-1, e.g. hi).", examples=["hi"])
    format: Literal["text", "html"] = Field(
        "text", description="text, or html: the text between tags is translated and the tags are kept."
    )
    alternatives: int = Field(0, ge=0, description="Alternative translations wanted; none are made (always []).")


class DetectedLanguage(BaseModel):
    confidence: float = Field(ge=0, le=100, description="Share of the text's letters in the language's script.")
    language: str = Field(description="Language code, e.g. hi.")


class LibreTranslateResponse(BaseModel):
    """The translation(s), in the shape of `q`."""

    translatedText: str | list[str]  # noqa: N815 - LibreTranslate's field names
    detectedLanguage: DetectedLanguage | list[DetectedLanguage] | None = Field(  # noqa: N815
        None, description='With source "auto": the detected language (one per text for a list).'
    )
    alternatives: list[str] | list[list[str]] | None = Field(None, description="With alternatives > 0: empty.")


class LibreDetectRequest(_LibreBody):
    """LibreTranslate's POST /detect."""

    q: Text | list[Text] = Field(description="Text whose language to detect.")


class LibreSuggestRequest(_LibreBody):
    """LibreTranslate's POST /suggest: a better translation of a text."""

    q: Text = Field(description="The original text.")
    s: Text = Field(description="The suggested translation.")
    source: StrictStr = Field(description='Language of q (ISO 639-1, or "auto").', examples=["en"])
    target: StrictStr = Field(description="Language of s (ISO 639-1).", examples=["hi"])


class SuggestResponse(BaseModel):
    success: bool = Field(description="Whether the suggestion was recorded.")


class LibreLanguage(BaseModel):
    code: str = Field(description="Language code, e.g. hi.")
    name: str = Field(description="Its name in English.")
    targets: list[str] = Field(description="Codes it is translated into here.")


class FrontendLanguage(BaseModel):
    code: str
    name: str


class FrontendDefaults(BaseModel):
    source: FrontendLanguage
    target: FrontendLanguage


class FrontendSettings(BaseModel):
    """What LibreTranslate's web page and clients read to set themselves up."""

    charLimit: int = Field(description="Longest text, in characters (serving.max_chars).")  # noqa: N815
    frontendTimeout: int = Field(description="Milliseconds a page waits after typing before translating.")  # noqa: N815
    apiKeys: bool = Field(description="Whether API keys are configured.")  # noqa: N815
    keyRequired: bool = Field(description="Whether a key is required (serving.require_auth).")  # noqa: N815
    suggestions: bool = Field(description="Whether POST /suggest takes suggestions (with the feedback scope).")
    filesTranslation: bool = Field(description="File translation: not offered.")  # noqa: N815
    supportedFilesFormat: list[str] = Field(description="File formats: none.")  # noqa: N815
    language: FrontendDefaults = Field(description="The first configured direction's languages.")


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body read by `read_params`: the same object as JSON or as a form."""
    schema = model.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                media: {"schema": schema} for media in ("application/json", "application/x-www-form-urlencoded")
            },
        }
    }


# --- the endpoints ------------------------------------------------------------------------------------------------


@router.post(
    "/translate",
    response_model=LibreTranslateResponse,
    response_model_exclude_none=True,
    openapi_extra=_body_doc(LibreTranslateRequest),
    responses=_responses(
        {
            **_AUTH_ERRORS,
            403: "The client's key lacks the translate scope.",
            503: "Loading, or the queue is full (see Retry-After).",
            504: "Not translated within serving.request_timeout_s.",
        }
    ),
)
async def libre_translate(request: Request, service: ServiceDep, client: LibreClient, params: Params) -> dict[str, Any]:
    """Translate text (LibreTranslate's API) with the served adapter of its direction; each text is an episode."""
    check_scope(service, client, "translate", "POST /translate")
    body = _validated(LibreTranslateRequest, params, ("q", "source", "target"))
    batch = isinstance(body.q, list)
    texts = [_form_text(request, t) for t in (body.q if isinstance(body.q, list) else [body.q])]
    limits = service.config.serving
    if len(texts) > limits.max_texts:
        raise _bad(f"Invalid request: request ({len(texts)}) exceeds text limit ({limits.max_texts})")
    for text in texts:
        if len(text) > limits.max_chars:
            raise _bad(f"Invalid request: request ({len(text)}) exceeds text limit ({limits.max_chars})")
    tgt = _language(body.target, "target")
    detected = None
    if body.source == "auto":
        sources = [s for s, t in _served_pairs(service) if t == tgt]
        if not sources:
            raise _bad(f"{LANGUAGES[tgt]} ({libre_code(tgt)}) is not available as a target language")
        src, confidence = detect_by_script("\n".join(texts), sources)
        detected = {"confidence": confidence, "language": libre_code(src)}
    else:
        src = _language(body.source, "source")
    outputs = await _translate(service, client, texts, src, tgt, body.format)
    result: dict[str, Any] = {"translatedText": outputs if batch else outputs[0]}
    if detected is not None:
        result["detectedLanguage"] = [detected] * len(texts) if batch else detected
    if body.alternatives > 0:
        result["alternatives"] = [[] for _ in texts] if batch else []
    return result


async def _translate(service: Service, client: Client, texts: list[str], src: str, tgt: str, fmt: str) -> list[str]:
    """Each text translated (html: the text between its tags), every translated piece recorded as an episode."""
    if (src, tgt) not in _served_pairs(service):
        raise _unavailable(src, tgt)
    documents = [html_pieces(t) if fmt == "html" else [(bool(t.strip()), t)] for t in texts]
    wanted: list[str] = []  # what the model translates: plain texts whole, html text stripped of its spaces
    for pieces in documents:
        wanted += [html.unescape(piece).strip() if fmt == "html" else piece for ok, piece in pieces if ok]
    if len(wanted) > service.config.serving.max_texts:
        raise _bad(
            f"Invalid request: {len(wanted)} pieces of text between tags; at most "
            f"{service.config.serving.max_texts} are translated in one request"
        )
    try:
        served = await translate_and_record(service, client, wanted, src, tgt) if wanted else None
    except NoAdapter:
        raise _unavailable(src, tgt) from None  # unloaded since the check above
    translated = iter(served.outputs if served else [])
    out = []
    for pieces in documents:
        parts = []
        for ok, piece in pieces:
            if not ok:
                parts.append(piece)
            elif fmt == "html":
                lead, trail = piece[: len(piece) - len(piece.lstrip())], piece[len(piece.rstrip()) :]
                parts.append(lead + html.escape(next(translated), quote=False) + trail)
            else:
                parts.append(next(translated))
        out.append("".join(parts))
    return out


@router.get(
    "/languages",
    response_model=list[LibreLanguage],
    responses=_responses({**_AUTH_ERRORS, 503: "Loading (see Retry-After)."}),
)
async def libre_languages(service: ServiceDep, client: LibreClient) -> list[LibreLanguage]:
    """The languages of the served directions, each with the codes it is translated into."""
    targets: dict[str, list[str]] = {}
    for src, tgt in _served_pairs(service):
        targets.setdefault(src, []).append(tgt)
        targets.setdefault(tgt, [])
    return [
        LibreLanguage(code=libre_code(code), name=LANGUAGES[code], targets=sorted(libre_code(t) for t in tgts))
        for code, tgts in sorted(targets.items(), key=lambda item: libre_code(item[0]))
    ]


@router.post(
    "/detect",
    response_model=list[DetectedLanguage],
    openapi_extra=_body_doc(LibreDetectRequest),
    responses=_responses(
        {
            **_AUTH_ERRORS,
            400: "Invalid request, or no single served language writes the text's "
            "script (the error names the candidates).",
            503: "Loading (see Retry-After).",
        }
    ),
)
async def libre_detect(service: ServiceDep, client: LibreClient, params: Params) -> list[DetectedLanguage]:
    """The language of a text among the served ones, by its script: only where exactly one is written in it."""
    body = _validated(LibreDetectRequest, params, ("q",))
    text = "\n".join(body.q) if isinstance(body.q, list) else body.q
    limits = service.config.serving
    if len(text) > limits.max_chars * limits.max_texts:
        raise _bad(f"Invalid request: request ({len(text)}) exceeds text limit ({limits.max_chars * limits.max_texts})")
    served = {code for pair in _served_pairs(service) for code in pair}
    code, confidence = detect_by_script(text, served)
    return [DetectedLanguage(confidence=confidence, language=libre_code(code))]


@router.post(
    "/suggest",
    response_model=SuggestResponse,
    openapi_extra=_body_doc(LibreSuggestRequest),
    responses=_responses(
        {
            **_AUTH_ERRORS,
            403: "The client's key lacks the feedback scope.",
            429: "Over the client's feedback rate limit (serving.feedback_per_minute).",
            503: "Loading (a text with no episode yet is translated first).",
            504: "Not translated in time.",
        }
    ),
)
async def libre_suggest(request: Request, service: ServiceDep, client: LibreClient, params: Params) -> SuggestResponse:
    """Record a better translation `s` of `q` as a correction on the client's latest episode translating `q` in
    that direction; with none, `q` is translated now (a new episode) and the correction attached to it."""
    check_scope(service, client, "feedback", "POST /suggest")
    body = _validated(LibreSuggestRequest, params, ("q", "s", "source", "target"))
    q, s = _form_text(request, body.q), _form_text(request, body.s)
    max_chars = service.config.serving.max_chars
    for name, text in (("q", q), ("s", s)):
        if len(text) > max_chars:
            raise _bad(f"Invalid request: {name} ({len(text)}) exceeds text limit ({max_chars})")
    tgt = _language(body.target, "target")
    if body.source == "auto":
        src, _ = detect_by_script(q, [a for a, b in _served_pairs(service) if b == tgt])
    else:
        src = _language(body.source, "source")
    if src == tgt:
        raise _unavailable(src, tgt)
    if not q.strip():
        raise _bad("Invalid request: q has no text to translate")
    store = service.episodes()
    within_feedback_limit(service, client)
    direction = f"{src}-{tgt}"
    episode = await run_in_threadpool(store.latest_episode, client.name, direction, q)
    if episode is not None:
        episode_id, output = episode.id, episode.output
    else:
        if (src, tgt) not in _served_pairs(service):
            raise _unavailable(src, tgt)
        try:
            served = await translate_and_record(service, client, [q], src, tgt)
        except NoAdapter:
            raise _unavailable(src, tgt) from None
        episode_id, output = served.episode_ids[0], served.outputs[0]
    reward = CONFIRMATION_REWARD if s.strip() == output.strip() else SUGGESTION_REWARD
    await run_in_threadpool(store.attach_feedback, episode_id, reward, s, client=client.name, requested_by=client.name)
    service.metrics.feedback.labels(client.name).inc()
    return SuggestResponse(success=True)


@router.get(
    "/frontend/settings",
    response_model=FrontendSettings,
    responses=_responses(_AUTH_ERRORS),
)
async def frontend_settings(service: ServiceDep, client: LibreClient) -> FrontendSettings:
    """The settings LibreTranslate's web page and clients read: limits, keys, suggestions, default languages."""
    src, tgt = service.config.directions[0].split("-", 1)
    return FrontendSettings(
        charLimit=service.config.serving.max_chars,
        frontendTimeout=FRONTEND_TIMEOUT_MS,
        apiKeys=service.keys.configured,
        keyRequired=service.config.serving.require_auth,
        suggestions=True,
        filesTranslation=False,
        supportedFilesFormat=[],
        language=FrontendDefaults(
            source=FrontendLanguage(code=libre_code(src), name=LANGUAGES[src]),
            target=FrontendLanguage(code=libre_code(tgt), name=LANGUAGES[tgt]),
        ),
    )
