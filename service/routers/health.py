"""GET /healthz (always open), /readyz (always open) and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.dependencies import ServiceDep
from service.schemas import HealthResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/readyz",
    summary="Every configured model is loaded",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "models not loaded (yet)"}},
)
async def readyz(service: ServiceDep):
    registry = service.registry
    if not registry.ready():
        return JSONResponse(HealthResponse(status="loading", models=registry.domains).model_dump(), status_code=503)
    return HealthResponse(status="ready", models=registry.domains)


# Included by the app with or without the API-key dependency (EDUFILTER_METRICS_OPEN).
metrics_router = APIRouter(tags=["health"])


@metrics_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
