"""Typed dependencies the routers declare; tests can swap them with `app.dependency_overrides`.

All are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
dependency per request that cost more than the scoring of a short document."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.observability import ServiceMetrics
from service.registry import ModelRegistry
from service.settings import ServiceSettings


@dataclass(frozen=True)
class Service:
    """What the handlers need, as one dependency (each dependency costs FastAPI time per request)."""

    settings: ServiceSettings
    registry: ModelRegistry
    metrics: ServiceMetrics
    api_key_digests: tuple[bytes, ...]  # sha256 of each configured key; empty = open service


async def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]

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
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Open when no key is configured; otherwise `Authorization: Bearer <key>` must match one."""
    digests = request.app.state.service.api_key_digests
    if not digests:
        return
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'", headers=challenge)
    if not key_matches(credentials.credentials, digests):
        raise HTTPException(401, "invalid API key", headers=challenge)


ApiKeyDep = Depends(require_api_key)
