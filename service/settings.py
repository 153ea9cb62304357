"""Service configuration: one frozen pydantic-settings object, read from
`EDUFILTER_*` environment variables and overridden by `edufilter serve` flags.

Environment examples:
  EDUFILTER_MODELS='{"web": "/models/web", "code": "/models/code"}'
  EDUFILTER_API_KEYS=key-one,key-two        (comma-separated; or EDUFILTER_API_KEYS_FILE)
  EDUFILTER_BATCH_MAX_DOCUMENTS=64  EDUFILTER_BATCH_MAX_WAIT_MS=2
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edufilter.documents import DOMAINS


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDUFILTER_", frozen=True, extra="ignore")

    # domain -> model directory (a trained classifier artefact with model.json)
    models: dict[str, Path] = Field(default_factory=dict)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes; each loads every model")

    # Protection. No key configured at all means the service is open.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    api_keys_file: Path | None = None
    metrics_open: bool = Field(False, description="serve /metrics without an API key (in-cluster scraping)")

    # Limits; every rejection names the limit and its environment variable.
    max_documents_per_request: int = Field(256, ge=1)
    max_document_bytes: int = Field(1_000_000, ge=1)
    max_request_bytes: int = Field(16_000_000, ge=1)
    explain_max_terms: int = Field(50, ge=1)

    # Micro-batching: concurrent requests for one model are scored together, up to this many
    # documents or after waiting this long for more. With 0 ms a batch is whatever queued up
    # while the previous batch was being scored (continuous batching): no added latency when
    # idle, large batches under load. A few ms help when requests trickle in one at a time.
    batch_max_documents: int = Field(64, ge=1)
    batch_max_wait_ms: float = Field(0.0, ge=0.0)
    scoring_threads: int = Field(1, ge=1, description="threads running CPU-bound scoring off the event loop")

    graceful_shutdown_s: float = Field(30.0, ge=0.0, description="how long in-flight requests may take at shutdown")
    access_log: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: dict[str, Path]) -> dict[str, Path]:
        for domain, path in value.items():
            if domain not in DOMAINS:
                raise ValueError(f"unknown domain {domain!r} for model {path}; expected one of {', '.join(DOMAINS)}")
            if not (Path(path) / "model.json").is_file():
                raise ValueError(f"model directory for {domain!r} has no model.json: {path}")
        return value

    @model_validator(mode="after")
    def _check_keys_file(self) -> "ServiceSettings":
        if self.api_keys_file is not None and not Path(self.api_keys_file).is_file():
            raise ValueError(f"API keys file not found: {self.api_keys_file}")
        return self

    def resolved_api_keys(self) -> tuple[str, ...]:
        """Keys from EDUFILTER_API_KEYS plus one per line of the keys file (blank lines and # comments skipped)."""
        keys = list(self.api_keys)
        if self.api_keys_file is not None:
            for line in Path(self.api_keys_file).read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(keys)

    def summary(self) -> dict[str, object]:
        """The resolved configuration for the start-up log, with secrets counted rather than shown."""
        data = self.model_dump(mode="json")
        data["api_keys"] = f"{len(self.resolved_api_keys())} configured"
        return data
