"""Request and response bodies of the service, one schema per direction of travel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from bhashaflow.core.languages import LANGUAGES


def _encodable(text: str) -> str:
    # JSON can carry lone surrogates ("\ud800"), which no tokenizer or database can store.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid Unicode (it holds a lone surrogate)") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_encodable)]
_KNOWN_CODES: dict[str, Any] = {"enum": sorted(LANGUAGES)}  # documented; checked by _known


class ErrorResponse(BaseModel):
    """Every error answer: what went wrong, in one line."""

    detail: str


class ScopeErrorResponse(ErrorResponse):
    """A known client that may not do this (403): the scope it would need."""

    missing_scope: Literal["translate", "feedback", "admin"] = Field(
        description="The scope the client's key lacks (admin: to rate an episode another client requested)."
    )


class FieldError(BaseModel):
    loc: str = Field(description="Where in the body, e.g. texts.0 (body: the body as a whole).")
    msg: str
    type: str


class ValidationErrorResponse(ErrorResponse):
    """A body that does not match its schema (422), with one entry per problem."""

    errors: list[FieldError] = Field(default_factory=list)


def error_responses(statuses: dict[int, str | None]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error statuses, each with the body (and headers) the service really sends.

    Args:
        statuses: status -> description (None: the usual one for that status).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status, description in statuses.items():
        model = {422: ValidationErrorResponse, 403: ScopeErrorResponse}.get(status, ErrorResponse)
        entry: dict[str, Any] = {"model": model, "description": description or _DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": RETRY_AFTER}
        out[status] = entry
    return out


RETRY_AFTER = {"description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 1}}
_DESCRIPTIONS = {
    401: "Missing or unknown API key (a key that is sent must be known; no key: only without serving.require_auth).",
    403: "The client's API key lacks the scope this needs (missing_scope names it).",
    413: "Request body over serving.max_body_bytes.",
    422: "Malformed body.",
    429: "Over the client's rate limit (see Retry-After).",
    503: "The service is loading or stopping (see Retry-After).",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranslateRequest(_Body):
    """Texts to translate from one language to another."""

    texts: list[Text] = Field(min_length=1, description="Texts to translate (at most serving.max_texts).")
    # A validator, not an Enum type: the 422 then names the bad code instead of listing all 50.
    src_lang: StrictStr = Field(
        description="FLORES-200 code of the texts, e.g. eng_Latn.",
        examples=["eng_Latn"],
        json_schema_extra=_KNOWN_CODES,
    )
    tgt_lang: StrictStr = Field(
        description="FLORES-200 code to translate into, e.g. hin_Deva.",
        examples=["hin_Deva"],
        json_schema_extra=_KNOWN_CODES,
    )

    @field_validator("src_lang", "tgt_lang")
    @classmethod
    def _known(cls, code: str) -> str:
        if code not in LANGUAGES:
            raise ValueError(f"unknown FLORES-200 language code {code[:40]!r}")
        return code


class AdapterRef(BaseModel):
    """The adapter version that produced a translation."""

    direction: str
    version: str


class TranslateResponse(BaseModel):
    """Translations in the order of the texts, with the ids to send feedback on."""

    translations: list[str]
    adapter: AdapterRef
    episode_ids: list[int] = Field(description="One id per text; pass one to POST /v1/feedback.")
    script_valid: list[bool] = Field(description="Whether each translation is mostly in the target language's script.")


class FeedbackRequest(_Body):
    """A reward for one translation, and optionally a better one."""

    episode_id: StrictInt | StrictStr = Field(description="An id from episode_ids, as a number or its decimal string.")
    reward: float = Field(
        ge=-1.0, le=1.0, strict=True, allow_inf_nan=False, description="From -1 (wrong) to 1 (right)."
    )
    correction: Text | None = Field(None, description="A better translation (at most serving.max_chars characters).")


class FeedbackResponse(BaseModel):
    """The feedback as stored (a second feedback on an episode replaces the first)."""

    episode_id: int
    reward: float
    correction: str | None
    feedback_at: str
    client: str = Field(description="Who the feedback is recorded as given by: the API client's name, or anonymous.")


class AdapterPublic(BaseModel):
    """What the service serves for one configured direction."""

    direction: str
    version: str | None = Field(description="The served version; null when none is loaded.")
    manifest_sha256: str | None = None
    loaded_at: str | None = None
    in_flight: int = Field(0, description="Requests being translated by this version.")
    engine: Literal["torch", "ctranslate2"] | None = Field(
        None, description="What generates with the served version: ctranslate2, or torch (configured, or a fallback)."
    )
    error: str | None = Field(None, description="Why no (or no newer) version could be loaded.")


class AdaptersResponse(BaseModel):
    adapters: list[AdapterPublic]


class AdapterSwap(BaseModel):
    direction: str
    previous: str | None
    version: str


class ReloadResponse(BaseModel):
    """Adapters swapped in by a reload, and directions that could not be reloaded."""

    swapped: list[AdapterSwap]
    errors: dict[str, str]
    adapters: list[AdapterPublic]


class HealthResponse(BaseModel):
    """Readiness and what is loaded; answered with 503 until the model and adapters are loaded."""

    status: Literal["loading", "ready", "failed", "stopping"]
    ready: bool
    error: str | None
    base_model: str
    device: str | None
    adapters: list[AdapterPublic]
    queue_depth: int
    memory: dict[str, int]
