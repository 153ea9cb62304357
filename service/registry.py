"""The loaded models, one per domain, each with its micro-batcher, and their
reload without dropping requests: a new `Scorer` is loaded beside the old
one and swapped in between two batches."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from service.batching import BatchResult, MicroBatcher
from service.settings import ServiceSettings

log = logging.getLogger(__name__)


class UnknownDomainError(LookupError):
    def __init__(self, domain: str | None, loaded: list[str]) -> None:
        self.domain = domain
        self.loaded = loaded
        what = "no domain given and more than one model is loaded" if domain is None else f"unknown domain {domain!r}"
        super().__init__(f"{what}; loaded domains: {', '.join(loaded) or 'none'}")


class ModelLoadError(ValueError):
    """A model directory that could not be loaded (the message is safe to show to an authorised operator)."""


def load_scorer(path: Path) -> Any:
    # Imported here so the service module imports (and `--help` runs) without the classifier's dependencies.
    from classifier.scorer import Scorer

    return Scorer.load(path)


@dataclass
class ModelSlot:
    domain: str
    path: Path
    scorer: Any
    loaded_at: float = field(default_factory=time.time)
    batcher: MicroBatcher | None = None

    def describe(self) -> dict[str, Any]:
        scorer = self.scorer
        return {
            "domain": self.domain,
            "model_id": str(scorer.model_id),
            "version": str(scorer.version),
            "kind": str(getattr(scorer, "kind", "")),
            "threshold": float(scorer.threshold),
            "path": str(self.path),
            "loaded_at": self.loaded_at,
            "info": getattr(scorer, "info", {}) or {},
        }


class ModelRegistry:
    """Owns the scoring thread pool, the models and their batchers for one app."""

    def __init__(self, settings: ServiceSettings, *, on_batch: Callable[[str, int], None] | None = None) -> None:
        self._settings = settings
        self._on_batch = on_batch
        self._slots: dict[str, ModelSlot] = {}
        self._executor = ThreadPoolExecutor(settings.scoring_threads, thread_name_prefix="edufilter-score")
        self._reload_lock = asyncio.Lock()

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self._executor

    @property
    def domains(self) -> list[str]:
        return sorted(self._slots)

    def ready(self) -> bool:
        return bool(self._slots) and set(self._slots) == set(self._settings.models)

    def slots(self) -> list[ModelSlot]:
        return [self._slots[d] for d in self.domains]

    def resolve(self, domain: str | None) -> ModelSlot:
        if domain is None and len(self._slots) == 1:
            return next(iter(self._slots.values()))
        if domain is None or domain not in self._slots:
            raise UnknownDomainError(domain, self.domains)
        return self._slots[domain]

    async def start(self) -> None:
        """Load every configured model (in the thread pool: loading is CPU- and IO-bound)."""
        loop = asyncio.get_running_loop()
        for domain, path in self._settings.models.items():
            scorer = await loop.run_in_executor(self._executor, _load_checked, domain, Path(path))
            slot = ModelSlot(domain, Path(path), scorer)
            slot.batcher = MicroBatcher(
                lambda slot=slot: slot.scorer,
                self._executor,
                max_documents=self._settings.batch_max_documents,
                max_wait_s=self._settings.batch_max_wait_ms / 1000.0,
                concurrency=self._settings.scoring_threads,
                on_batch=(lambda n, d=domain: self._on_batch(d, n)) if self._on_batch else None,
            )
            slot.batcher.start()
            self._slots[domain] = slot
            log.info("loaded %s model %s (version %s) from %s", domain, scorer.model_id, scorer.version, path)

    async def close(self) -> None:
        for slot in self._slots.values():
            if slot.batcher is not None:
                await slot.batcher.close()
        self._executor.shutdown(wait=True)

    async def score(self, domain: str, texts: list[str]) -> BatchResult:
        slot = self.resolve(domain)
        assert slot.batcher is not None
        return await slot.batcher.score(texts)

    async def explain(self, domain: str, text: str, top_k: int) -> tuple[Any, list[tuple[str, float]], BatchResult]:
        slot = self.resolve(domain)
        scorer = slot.scorer  # explain and score with the same model even if a reload lands meanwhile
        loop = asyncio.get_running_loop()
        terms = await loop.run_in_executor(self._executor, scorer.explain, text, top_k)
        scores = await loop.run_in_executor(self._executor, scorer.score, [text])
        result = BatchResult(scorer, [float(scores.score[0])], [int(scores.int_score[0])], [bool(scores.keep[0])])
        return scorer, [(str(term), float(weight)) for term, weight in terms], result

    async def reload(self, domains: list[str] | None = None, path: Path | None = None) -> list[ModelSlot]:
        """Load new scorers (from `path`, or each domain's current directory) and swap them in.
        Requests keep being served by the old scorer until the swap; nothing is dropped."""
        targets = domains or self.domains
        for domain in targets:
            self.resolve(domain)
        if path is not None and len(targets) != 1:
            raise ModelLoadError("a new model path can only be given for one domain at a time")
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            new_scorers = {}
            for domain in targets:  # load all first, so a failure leaves every old model in place
                new_path = Path(path) if path is not None else self._slots[domain].path
                new_scorers[domain] = (new_path, await loop.run_in_executor(None, _load_checked, domain, new_path))
            for domain, (new_path, scorer) in new_scorers.items():
                slot = self._slots[domain]
                old = slot.scorer
                slot.scorer, slot.path, slot.loaded_at = scorer, new_path, time.time()
                log.info(
                    "reloaded %s model: %s (version %s) -> %s (version %s) from %s",
                    domain, old.model_id, old.version, scorer.model_id, scorer.version, new_path,
                )
            return [self._slots[d] for d in targets]


def _load_checked(domain: str, path: Path) -> Any:
    if not (path / "model.json").is_file():
        raise ModelLoadError(f"no model.json in {path}")
    try:
        scorer = load_scorer(path)
    except Exception as exc:
        raise ModelLoadError(f"could not load the model in {path}: {type(exc).__name__}: {exc}") from exc
    model_domain = getattr(scorer, "domain", None)
    if model_domain and model_domain != domain:
        raise ModelLoadError(f"the model in {path} was trained for domain {model_domain!r}, not {domain!r}")
    return scorer
