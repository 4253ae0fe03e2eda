"""GET /health and GET /metrics."""

from __future__ import annotations

from typing import Any

import psutil
from fastapi import APIRouter, Response

from serving.deps import ServiceDep
from serving.schemas import RETRY_AFTER, HealthResponse

router = APIRouter(tags=["operations"])


def _memory(device: str | None) -> dict[str, int]:
    out = {"rss_bytes": int(psutil.Process().memory_info().rss)}
    if device and device.startswith("cuda"):
        import torch

        out["cuda_allocated_bytes"] = int(torch.cuda.memory_allocated(device))
        out["cuda_reserved_bytes"] = int(torch.cuda.memory_reserved(device))
    return out


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={
        503: {
            "model": HealthResponse,
            "description": "Not ready: loading, failed or stopping.",
            "headers": {"Retry-After": RETRY_AFTER},
        },
    },
)
async def health(service: ServiceDep, response: Response) -> dict[str, Any]:
    """Readiness (200 when ready, else 503), loaded adapters, queue depth, device and memory."""
    engine = service.engine
    if not engine.ready:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return {
        "status": engine.state,
        "ready": engine.ready,
        "error": engine.error,
        "base_model": service.config.base_model,
        "device": engine.device,
        "adapters": engine.adapters(),
        "queue_depth": engine.batcher.queue_depth,
        "memory": _memory(engine.device),
    }


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Prometheus text format."""
    return Response(service.metrics.render(), media_type=service.metrics.content_type)
