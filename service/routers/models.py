"""GET /v1/models and POST /v1/models/reload."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException

from service.dependencies import ApiKeyDep, ServiceDep
from service.registry import ModelLoadError
from service.schemas import ModelInfo, ModelsResponse, ReloadRequest

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[ApiKeyDep])


@router.get("", summary="The loaded models with their model.json")
async def list_models(service: ServiceDep) -> ModelsResponse:
    return ModelsResponse(models=[ModelInfo(**slot.describe()) for slot in service.registry.slots()])


@router.post(
    "/reload",
    summary="Load a model directory again (or a new one) and swap it in without dropping requests",
    description="Requires API keys to be configured (an open service cannot be told to load files); "
    "otherwise send SIGHUP to the server process to reload every model from its configured directory.",
)
async def reload_models(service: ServiceDep, body: ReloadRequest | None = None) -> ModelsResponse:
    registry, metrics = service.registry, service.metrics
    if not service.api_key_digests:
        raise HTTPException(403, "reload over HTTP needs API keys configured; send SIGHUP to reload instead")
    body = body or ReloadRequest()
    domains = [registry.resolve(body.domain).domain] if body.domain else None
    try:
        slots = await registry.reload(domains, Path(body.path) if body.path else None)
    except ModelLoadError:
        for domain in domains or registry.domains:
            metrics.reloads.labels(domain, "failed").inc()
        raise
    for slot in slots:
        metrics.reloads.labels(slot.domain, "ok").inc()
    return ModelsResponse(models=[ModelInfo(**slot.describe()) for slot in slots])
