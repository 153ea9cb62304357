"""Typed dependencies the routers declare; tests can swap them with `app.dependency_overrides`.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request that cost more than the scoring of a short document."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.observability import ServiceMetrics
from service.registry import ModelRegistry
from service.settings import ServiceSettings


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_registry(request: Request) -> ModelRegistry:
    return request.app.state.registry


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def get_key_digests(request: Request) -> tuple[bytes, ...]:
    return request.app.state.api_key_digests


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
RegistryDep = Annotated[ModelRegistry, Depends(get_registry)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]

_bearer = HTTPBearer(auto_error=False, description="an API key from EDUFILTER_API_KEYS or the keys file")


def digest(key: str) -> bytes:
    # Comparing fixed-length digests keeps the comparison's time independent of the key's length too.
    return hashlib.sha256(key.encode("utf-8")).digest()


def key_matches(presented: str, digests: tuple[bytes, ...]) -> bool:
    candidate = digest(presented)
    matched = False
    for known in digests:  # no early exit: the time does not tell which key (or whether any) matched
        matched |= hmac.compare_digest(candidate, known)
    return matched


async def require_api_key(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    digests: Annotated[tuple[bytes, ...], Depends(get_key_digests)],
) -> None:
    """Open when no key is configured; otherwise `Authorization: Bearer <key>` must match one."""
    if not digests:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge)
    if not key_matches(credentials.credentials, digests):
        raise HTTPException(401, "invalid API key", headers=challenge)


ApiKeyDep = Depends(require_api_key)
