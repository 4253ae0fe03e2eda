"""What the routes share: the running service, who sent a request (its API client), and the scope checks."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import EpisodeStore
from serving.auth import ANONYMOUS, Client, KeyRing, Scope, hash_key
from serving.engine import Engine
from serving.metrics import ServingMetrics
from serving.ratelimit import RateLimiter


@dataclass
class Service:
    """Everything one app instance runs on."""

    config: PipelineConfig
    settings: Settings
    engine: Engine
    metrics: ServingMetrics
    keys: KeyRing
    feedback_limit: RateLimiter
    store: EpisodeStore | None = None  # opened at start-up

    def episodes(self) -> EpisodeStore:
        if self.store is None:
            raise HTTPException(503, "the service is starting", headers={"Retry-After": "1"})
        return self.store


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


class MissingScope(HTTPException):
    """403: the client is known but may not do this; the body names the scope it lacks (`missing_scope`)."""

    def __init__(self, scope: Scope, detail: str) -> None:
        super().__init__(403, detail)
        self.scope = scope


def _unauthorized(service: Service, what: str) -> HTTPException:
    if not service.keys.configured:
        detail = (
            f"{what} needs a bearer token, and none is configured (set BHASHAFLOW_API_TOKEN, "
            "BHASHAFLOW_API_KEYS or serving.api_keys_file on the server)"
        )
    else:
        detail = f"{what} needs an API key: send it as Authorization: Bearer <key>"
    return HTTPException(401, detail, headers={"WWW-Authenticate": "Bearer"})


def identify_key(keys: KeyRing, key: str) -> Client | None:
    """The client whose key `key` is, or None. Every configured key is compared, each in constant time (the
    token as given, the others by sha256): the timing says nothing about which key, or how much of one, matched.
    """
    given = key.encode("utf-8")
    found: Client | None = None
    if keys.token is not None and hmac.compare_digest(given, keys.token):
        found = keys.token_client
    if keys.hashed:
        digest = hash_key(key).encode("ascii")
        for expected, client in keys.hashed:
            if hmac.compare_digest(digest, expected) and found is None:
                found = client
    return found


def client_for_key(service: Service, key: str | None, how: str = "Authorization: Bearer <key>") -> Client:
    """The client whose key `key` is (None: no key was sent); 401 for a key that is no client's.

    No key is `anonymous` on a service without serving.require_auth, and 401 on one with it. The key itself is
    never logged, stored or answered: only the client's name goes further.

    Args:
        service: the running service (its keys and serving.require_auth).
        key: the key the request carries, or None.
        how: how a client sends its key, for the 401's message.
    """
    if key is None:
        if service.config.serving.require_auth:
            raise _unauthorized(service, "this service")
        return ANONYMOUS
    if not service.keys.configured:
        raise _unauthorized(service, "this service")
    client = identify_key(service.keys, key.strip())
    if client is None:
        raise HTTPException(
            401, f"missing or unknown API key (send it as {how})", headers={"WWW-Authenticate": "Bearer"}
        )
    return client


def bearer_key(request: Request) -> str | None:
    """The key of the request's `Authorization: Bearer` header; "" for another scheme (no client's key), None
    without the header."""
    header = request.headers.get("authorization", "")
    if not header.strip():
        return None
    scheme, _, given = header.partition(" ")
    return given if scheme.lower() == "bearer" else ""


def identify_client(request: Request, service: ServiceDep) -> Client:
    """Every endpoint of the API: the client whose key the request's bearer token is (see `client_for_key`)."""
    return client_for_key(service, bearer_key(request))


ClientDep = Annotated[Client, Depends(identify_client)]


def check_scope(service: Service, client: Client, scope: Scope, what: str) -> Client:
    """`client` when it holds `scope`; else 401 for an anonymous client, 403 (MissingScope) for a known one."""
    if client.can(scope):
        return client
    if client.anonymous:
        raise _unauthorized(service, what)
    raise MissingScope(scope, f"client {client.name!r} lacks the {scope!r} scope, which {what} needs")


def require_scope(scope: Scope, what: str) -> Callable[..., Client]:
    """A dependency that lets through clients holding `scope` (401 for anonymous ones, 403 for others)."""

    def check(client: ClientDep, service: ServiceDep) -> Client:
        return check_scope(service, client, scope, what)

    check.__name__ = f"require_{scope}"
    return check


require_translate = require_scope("translate", "POST /v1/translate")
require_feedback = require_scope("feedback", "POST /v1/feedback")
require_admin = require_scope("admin", "this admin endpoint")

TranslateClient = Annotated[Client, Depends(require_translate)]
FeedbackClient = Annotated[Client, Depends(require_feedback)]
AdminAuth = Depends(require_admin)
