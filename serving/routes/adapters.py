"""GET /v1/adapters and POST /v1/adapters/reload."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from serving.deps import AdminAuth, ServiceDep
from serving.schemas import AdaptersResponse, ReloadResponse, error_responses

router = APIRouter(prefix="/v1/adapters", tags=["adapters"])


@router.get("", response_model=AdaptersResponse)
async def list_adapters(service: ServiceDep) -> AdaptersResponse:
    """The served version of every configured direction."""
    return AdaptersResponse.model_validate({"adapters": service.engine.adapters()})


@router.post(
    "/reload",
    response_model=ReloadResponse,
    dependencies=[AdminAuth],
    responses={
        **error_responses(
            {401: "Missing or unknown API key.", 403: "The client's key lacks the admin scope.", 503: "Still loading."}
        ),
        409: {
            "model": ReloadResponse,
            "description": "A promoted version was refused (its error says why); that direction keeps its version.",
        },
    },
)
async def reload_adapters(service: ServiceDep, response: Response) -> ReloadResponse:
    """Re-read the registry's promoted pointers and swap changed adapters in; requests in flight finish."""
    if not service.engine.ready:
        raise HTTPException(503, f"the service is {service.engine.state}", headers={"Retry-After": "5"})
    result = ReloadResponse.model_validate(await service.engine.reload())
    if result.errors:
        # Not a 200: whoever promoted the version must learn that the service refused it.
        response.status_code = 409
    return result
