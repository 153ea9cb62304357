"""Builds the FastAPI app: `create_app(settings)`.

Lifespan: load every model (fails fast on a bad directory), start the micro-batchers,
reload on SIGHUP; at shutdown uvicorn first lets in-flight requests finish, then the
batchers score whatever is still queued before the scoring threads stop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from edufilter import __version__
from service.dependencies import ApiKeyDep, Service, digest
from service.errors import install_error_handlers
from service.observability import BodyLimitMiddleware, ObservabilityMiddleware, ServiceMetrics
from service.registry import ModelRegistry
from service.routers import health, models, page, scoring
from service.settings import ServiceSettings

log = logging.getLogger(__name__)

DESCRIPTION = """Scores documents 0-5 for educational value with the edufilter classifiers
(the same `Scorer` as the batch jobs, so a text scores identically here and there).

Authenticate with `Authorization: Bearer <key>` when the service has API keys configured.
Errors are `{"error": {"code", "message"}}`; limits are named in their messages."""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    metrics = ServiceMetrics()
    registry = ModelRegistry(settings, on_batch=lambda domain, n: metrics.batch_size.labels(domain).observe(n))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        for slot in registry.slots():
            log.info("serving %s with %s", slot.domain, slot.scorer.model_id)
        reload_on_sighup = _install_sighup(registry, metrics)
        try:
            yield
        finally:
            if reload_on_sighup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await registry.close()
            log.info("scoring stopped")

    app = FastAPI(
        title="edufilter scoring service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.service = Service(settings, registry, metrics, tuple(digest(key) for key in settings.resolved_api_keys()))

    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(health.metrics_router, dependencies=[] if settings.metrics_open else [ApiKeyDep])
    app.include_router(scoring.router)
    app.include_router(models.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC_DIR), name="static")

    # Added last = outermost: metrics and access logs see every request, including those the limit rejects.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, log_requests=settings.access_log)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory service.app:create_app_from_env` and for worker processes."""
    settings = ServiceSettings()
    if not logging.getLogger().handlers:  # a spawned worker starts with no logging configured
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.cli import configure_access_log

    configure_access_log(settings.access_log)
    return create_app(settings)


def _install_sighup(registry: ModelRegistry, metrics: ServiceMetrics) -> bool:
    """SIGHUP reloads every model from its directory (only possible in the main thread's loop)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return False
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task] = set()  # keep a reference: the loop holds tasks only weakly

    async def reload() -> None:
        try:
            slots = await registry.reload()
        except Exception:
            log.exception("SIGHUP reload failed; the previous models keep serving")
            for domain in registry.domains:
                metrics.reloads.labels(domain, "failed").inc()
            return
        for slot in slots:
            metrics.reloads.labels(slot.domain, "ok").inc()

    def on_sighup() -> None:
        task = loop.create_task(reload())
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    return True
