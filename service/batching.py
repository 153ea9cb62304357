"""Micro-batching of concurrent scoring requests.

Many crawlers send one document per request. Scoring them one by one pays the
per-call overhead of the classifier for each; collecting the documents that
arrive within a few milliseconds into one `Scorer.score` call brings the
service's throughput close to in-process batch scoring. The scoring itself is
CPU-bound, so it runs in a thread pool and the event loop keeps accepting
requests (and filling the next batch) meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Scores of one request's documents, with the scorer that produced them
    (a reload may swap the model between two batches)."""

    scorer: Any
    score: Sequence[float]
    int_score: Sequence[int]
    keep: Sequence[bool]


@dataclass(slots=True)
class _Pending:
    texts: list[str]
    future: asyncio.Future


class MicroBatcher:
    """Scores the texts of concurrent requests for one model in shared batches
    of at most `max_documents` documents, waiting at most `max_wait_s` for a
    batch to fill. A request larger than `max_documents` is scored alone.

    `get_scorer` is called once per batch, so a reloaded model takes over at
    the next batch while batches already running finish on the old one.
    `concurrency` batches may be scored at once (one per scoring thread).
    """

    def __init__(
        self,
        get_scorer: Callable[[], Any],
        executor: Executor,
        *,
        max_documents: int,
        max_wait_s: float,
        concurrency: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_documents < 1:
            raise ValueError(f"max_documents must be >= 1, got {max_documents}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._get_scorer = get_scorer
        self._executor = executor
        self._max_documents = max_documents
        self._max_wait_s = max_wait_s
        self._concurrency = concurrency
        self._on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._pending_documents = 0
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._closed = False

    def start(self) -> None:
        self._workers = [asyncio.create_task(self._work(), name=f"batcher-{i}") for i in range(self._concurrency)]

    async def score(self, texts: list[str]) -> BatchResult:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if not texts:
            return BatchResult(self._get_scorer(), [], [], [])
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(texts, future))
        self._pending_documents += len(texts)
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Score what is still queued, then stop the workers."""
        self._closed = True
        while self._pending and any(not task.done() for task in self._workers):
            await asyncio.sleep(0.005)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Let requests whose bodies already arrived reach the queue before taking a batch.
            await asyncio.sleep(0)
            deadline = loop.time() + self._max_wait_s
            while self._pending_documents < self._max_documents:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            try:
                await self._run(batch)
            except Exception:  # a worker that died would leave every later request waiting forever
                log.exception("micro-batch of %d requests failed", len(batch))
                for item in batch:
                    _settle(item.future, exception=RuntimeError("scoring failed"))

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._pending:
            head = self._pending[0]
            if batch and size + len(head.texts) > self._max_documents:
                break
            self._pending.popleft()
            self._pending_documents -= len(head.texts)
            if head.future.done():  # the client went away while it waited
                continue
            batch.append(head)
            size += len(head.texts)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        texts = [text for item in batch for text in item.texts]
        try:
            scorer, scores = await loop.run_in_executor(self._executor, self._score, texts)
        except Exception:
            if len(batch) > 1:
                # One request's documents must not fail the requests batched with it.
                for item in batch:
                    await self._run([item])
                return
            log.exception("scoring a batch of %d documents failed", len(texts))
            _settle(batch[0].future, exception=RuntimeError("scoring failed"))
            return
        if self._on_batch is not None:
            self._on_batch(len(texts))
        start = 0
        for item in batch:
            end = start + len(item.texts)
            result = BatchResult(
                scorer,
                np.asarray(scores.score[start:end], dtype=np.float32).tolist(),
                np.asarray(scores.int_score[start:end], dtype=np.int64).tolist(),
                np.asarray(scores.keep[start:end], dtype=bool).tolist(),
            )
            _settle(item.future, result=result)
            start = end

    def _score(self, texts: list[str]) -> tuple[Any, Any]:
        scorer = self._get_scorer()
        return scorer, scorer.score(texts)


def _settle(future: asyncio.Future, *, result: Any = None, exception: BaseException | None = None) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)
