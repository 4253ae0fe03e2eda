"""What the routes share: the running service, and the bearer-token checks."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from bhashaflow.config import PipelineConfig
from bhashaflow.core.settings import Settings
from bhashaflow.episodes.store import EpisodeStore
from serving.engine import Engine
from serving.metrics import ServingMetrics


@dataclass
class Service:
    """Everything one app instance runs on."""

    config: PipelineConfig
    settings: Settings
    engine: Engine
    metrics: ServingMetrics
    store: EpisodeStore | None = None  # opened at start-up

    def episodes(self) -> EpisodeStore:
        if self.store is None:
            raise HTTPException(503, "the service is starting", headers={"Retry-After": "1"})
        return self.store


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


def _check_bearer(request: Request, service: Service, what: str) -> None:
    token = service.settings.api_token
    # A blank token is no token: "Bearer " would otherwise match it.
    if token is None or not token.get_secret_value().strip():
        raise HTTPException(
            401, f"{what} needs a bearer token, and none is configured (set BHASHAFLOW_API_TOKEN on the server)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode("utf-8")
    # Constant-time comparison: response timing must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), expected):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def require_token(request: Request, service: ServiceDep) -> None:
    """Every endpoint, when serving.require_auth is set."""
    if service.config.serving.require_auth:
        _check_bearer(request, service, "this service")


def require_admin(request: Request, service: ServiceDep) -> None:
    """Admin endpoints (adapter reload), always."""
    _check_bearer(request, service, "this admin endpoint")


AdminAuth = Depends(require_admin)
