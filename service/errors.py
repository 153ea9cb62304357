"""Every error leaves the service as `{"error": {"code", "message", ...}}` with a 4xx
status that names the problem, or a bare 500 "internal error" (details go to the log only)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.registry import ModelLoadError, UnknownDomainError

log = logging.getLogger(__name__)

MAX_VALIDATION_ERRORS = 20


class ApiError(Exception):
    """An error to show the client as is."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class LimitExceeded(ApiError):
    """A request over one of the configured limits; the message names the limit and its variable."""

    def __init__(self, limit: str, value: int, subject: str, status: int = 413) -> None:
        env = "EDUFILTER_" + limit.upper()
        message = f"{subject}: over the limit {limit}={value} (set by {env})"
        super().__init__(status, "limit_exceeded", message, limit=limit, value=value)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "JSON decode error")
        return error_response(422, "invalid_json", f"request body is not valid JSON: {detail} at {_location(first['loc'])}")
    # Never echo `input` back: it can be megabytes of the caller's text.
    details = [{"location": _location(e["loc"]), "problem": e["msg"], "type": e["type"]} for e in errors[:MAX_VALIDATION_ERRORS]]
    summary = "; ".join(f"{d['location']}: {d['problem']}" for d in details[:3])
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return error_response(422, "invalid_request", f"invalid request: {summary}{more}", details=details)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI raises this for bodies json.loads cannot even decode: invalid UTF-8, nesting too deep.
        return error_response(422, "invalid_json", "request body is not valid JSON (invalid UTF-8 or nested too deeply)")
    codes = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.message, **exc.extra)


async def _unknown_domain(request: Request, exc: UnknownDomainError) -> JSONResponse:
    return error_response(422, "unknown_domain", str(exc), loaded=exc.loaded)


async def _model_load_error(request: Request, exc: ModelLoadError) -> JSONResponse:
    return error_response(422, "model_load_failed", str(exc))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.error("unhandled error on %s %s (request %s)", request.method, request.url.path, request_id, exc_info=exc)
    return error_response(500, "internal", "internal error", request_id=request_id)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(UnknownDomainError, _unknown_domain)
    app.add_exception_handler(ModelLoadError, _model_load_error)
    app.add_exception_handler(Exception, _internal_error)
