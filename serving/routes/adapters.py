"""GET /v1/adapters and POST /v1/adapters/reload."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from serving.deps import AdminAuth, ServiceDep
from serving.schemas import AdaptersResponse, ReloadResponse

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=AdaptersResponse)
async def list_adapters(service: ServiceDep) -> AdaptersResponse:
    """The served version of every configured direction."""
    return AdaptersResponse.model_validate({"adapters": service.engine.adapters()})


@router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[AdminAuth],
    responses={401: {"description": "Missing or wrong bearer token."}, 503: {"description": "Still loading."}},
)
async def reload_adapters(service: ServiceDep) -> ReloadResponse:
    """Re-read the registry's promoted pointers and swap changed adapters in; requests in flight finish."""
    if not service.engine.ready:
        raise HTTPException(503, f"the service is {service.engine.state}", headers={"Retry-After": "5"})
    return ReloadResponse.model_validate(await service.engine.reload())
