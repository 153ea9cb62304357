"""`edufilter serve`: load the classifiers and serve them with uvicorn.

  edufilter serve --model web=models/web --model code=models/code --port 8000

Every flag has an EDUFILTER_* environment variable (flags win). Reload the models from
their directories without dropping requests with `kill -HUP <pid>` (or, when API keys are
configured, `POST /v1/models/reload`). SIGTERM/SIGINT stop accepting connections, let
in-flight requests finish (up to --graceful-shutdown-s) and exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from service.observability import JsonLogFormatter
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter serve",
        description="Serve educational-value classifiers over HTTP (FastAPI + uvicorn).",
        epilog="Environment: EDUFILTER_MODELS (JSON object domain->dir), EDUFILTER_API_KEYS (comma-separated), "
        "and EDUFILTER_<FLAG> for every flag. Reload models: SIGHUP, or POST /v1/models/reload with a key.",
    )
    p.add_argument("--model", action="append", metavar="DOMAIN=DIR", default=None,
                   help="a trained model directory for a domain (web, code, stackoverflow); repeat per domain")
    p.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1; 0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=None, help="uvicorn worker processes, each loading every model (default 1)")
    p.add_argument("--api-keys-file", default=None, help="file with one API key per line (# comments allowed)")
    p.add_argument("--metrics-open", action="store_true", default=None, help="serve /metrics without an API key")
    p.add_argument("--max-documents-per-request", type=int, default=None, help="documents per request (default 256)")
    p.add_argument("--max-document-bytes", type=int, default=None, help="UTF-8 bytes per document (default 1000000)")
    p.add_argument("--max-request-bytes", type=int, default=None, help="bytes per request body (default 16000000)")
    p.add_argument("--batch-max-documents", type=int, default=None,
                   help="micro-batch: score at most this many documents together (default 64)")
    p.add_argument("--batch-max-wait-ms", type=float, default=None,
                   help="micro-batch: wait at most this long for a batch to fill (default 0: take what queued while "
                   "the previous batch was scored)")
    p.add_argument("--scoring-threads", type=int, default=None, help="threads scoring off the event loop (default 1)")
    p.add_argument("--graceful-shutdown-s", type=float, default=None,
                   help="at shutdown, how long in-flight requests may still take (default 30)")
    p.add_argument("--no-access-log", dest="access_log", action="store_false", default=None,
                   help="do not write the JSON access log")
    return p


def parse_models(values: list[str]) -> dict[str, str]:
    models: dict[str, str] = {}
    for value in values:
        domain, sep, path = value.partition("=")
        if not sep or not domain or not path:
            raise ValueError(f"--model expects DOMAIN=DIR, got {value!r}")
        if domain in models:
            raise ValueError(f"--model given twice for domain {domain!r}")
        models[domain] = path
    return models


def settings_from_args(args: argparse.Namespace) -> ServiceSettings:
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "model"}
    if args.model:
        overrides["models"] = parse_models(args.model)
    return ServiceSettings(**overrides)


def configure_access_log(enabled: bool) -> None:
    """JSON access-log lines on stdout, apart from the human-readable logs on stderr."""
    access = logging.getLogger("service.access")
    access.propagate = False
    access.setLevel(logging.INFO if enabled else logging.WARNING)
    if not any(getattr(h, "_edufilter_json", False) for h in access.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(JsonLogFormatter())
        handler._edufilter_json = True  # type: ignore[attr-defined]
        access.addHandler(handler)


def export_to_environment(settings: ServiceSettings) -> None:
    """Worker processes build their app from the environment: write the resolved settings there."""
    for name, value in settings.model_dump(mode="json").items():
        if name == "api_keys":
            value = ",".join(value)
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        elif value is None:
            continue
        os.environ[f"EDUFILTER_{name.upper()}"] = str(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:  # run directly rather than through `edufilter`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except (ValidationError, ValueError) as exc:
        print(f"edufilter serve: invalid configuration: {exc}", file=sys.stderr)
        return 2
    if not settings.models:
        print("edufilter serve: no model given: use --model DOMAIN=DIR (or EDUFILTER_MODELS)", file=sys.stderr)
        return 2
    log.info("configuration: %s", json.dumps(settings.summary(), sort_keys=True))
    configure_access_log(settings.access_log)

    import uvicorn

    common = dict(
        host=settings.host,
        port=settings.port,
        access_log=False,  # our middleware writes a structured line per request instead
        log_config=None,  # keep the logging configured here
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        lifespan="on",
    )
    if settings.workers == 1:
        from service.app import create_app

        server = uvicorn.Server(uvicorn.Config(create_app(settings), **common))
        server.run()
        # uvicorn exits quietly when start-up (model loading) fails: say so with a status.
        return 0 if server.started else 1
    export_to_environment(settings)
    # Each worker keeps its own metrics; prometheus_client's multiprocess mode sums them in /metrics.
    own_metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="edufilter-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    try:
        uvicorn.run("service.app:create_app_from_env", factory=True, workers=settings.workers, **common)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
