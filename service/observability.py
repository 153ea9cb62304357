"""Prometheus metrics, structured (JSON) access logs and the request-body limit,
as plain ASGI middleware (no per-request task or body copy beyond the limit check)."""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("service.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORE_BUCKETS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    """The service's metrics in their own registry, so several apps can live in one process (tests).
    With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (the CLI does) and /metrics sums all workers."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edufilter_http_requests_total", "HTTP requests by route, method and status", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "edufilter_http_request_duration_seconds",
            "HTTP request latency by route, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "edufilter_http_requests_in_flight", "HTTP requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.documents = Counter("edufilter_documents_scored_total", "documents scored by domain", ["domain"], registry=r)
        self.scores = Histogram(
            "edufilter_document_score", "continuous 0-5 scores by domain", ["domain"], buckets=SCORE_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "edufilter_batch_documents", "documents per micro-batch by domain", ["domain"], buckets=BATCH_BUCKETS, registry=r
        )
        self.reloads = Counter("edufilter_model_reloads_total", "model reloads by domain and outcome", ["domain", "outcome"], registry=r)

    def observe_scores(self, domain: str, scores: list[float]) -> None:
        self.documents.labels(domain).inc(len(scores))
        histogram = self.scores.labels(domain)
        for score in scores:
            histogram.observe(score)

    def exposition(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


def route_label(scope: Scope) -> str:
    """The matched route template (`/v1/score`), never the raw path: random paths must not create label values."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class ObservabilityMiddleware:
    """Counts and times every request, tracks in-flight requests, stamps an X-Request-ID and writes one
    JSON access-log line per request."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, *, log_requests: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # if the app dies before answering, that is what the client sees
        response_bytes = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_bytes
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", request_id.encode("latin-1"))]
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            elapsed = time.perf_counter() - start
            route = route_label(scope)
            labels = (route, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(
                    "request",
                    extra={
                        "fields": {
                            "request_id": request_id,
                            "method": scope["method"],
                            "path": scope["path"],
                            "route": route,
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                            "response_bytes": response_bytes,
                            "client": f"{client[0]}:{client[1]}" if client else None,
                            "user_agent": _header(scope, b"user-agent"),
                        }
                    },
                )


class BodyLimitMiddleware:
    """Rejects request bodies above `max_bytes` with 413 naming the limit, before any parsing.
    The body is read here (FastAPI reads it whole anyway) and replayed to the app."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(
            {
                "error": {
                    "code": "request_too_large",
                    "message": f"request body exceeds max_request_bytes={self.max_bytes} (EDUFILTER_MAX_REQUEST_BYTES)",
                    "limit": "max_request_bytes",
                    "value": self.max_bytes,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's structured `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
