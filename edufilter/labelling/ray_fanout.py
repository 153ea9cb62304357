"""Scale-out: label on a Ray cluster against many OpenAI-compatible replicas.

A Ray Data pipeline spreads the documents still to ask over a pool of actors
(`--ray-actors`); each actor runs the same async `OpenAIBackend` as a local
run, with `--concurrency` requests in flight, and sends them round-robin over
all `--endpoint` replicas (e.g. one vLLM server per GPU node). Answers stream
back to the driver, which alone writes the answer cache, so there is a single
writer, and killing the job and running it again resumes from the cache
exactly like a local run. The token budget is checked by the driver as
batches come back: the run stops within one batch per actor of the budget.

`label_batch` is the pure batch function (no Ray import); `RayOpenAIBackend`
wires it into Ray Data. See edufilter/labelling/README.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Sequence

from edufilter.labelling.backends import (
    Answer,
    LabelRequest,
    OnAnswer,
    OpenAIBackend,
    OpenAIConfig,
    ShouldStop,
    fast_event_loop_factory,
)

log = logging.getLogger(__name__)


def label_batch(batch: dict, backend: OpenAIBackend, loop: asyncio.AbstractEventLoop | None = None) -> dict:
    """Ask the endpoint(s) for every row of a batch {text_hash, doc_ref, messages (JSON)}; returns answer columns."""
    requests = [
        LabelRequest(str(h), str(r), json.loads(m))
        for h, r, m in zip(batch["text_hash"], batch["doc_ref"], batch["messages"])
    ]
    answers: list[Answer] = []
    coroutine = backend.arun(requests, answers.append, lambda: False)
    if loop is None:
        asyncio.run(coroutine)
    else:
        loop.run_until_complete(coroutine)
    return {
        "text_hash": [a.request.text_hash for a in answers],
        "raw_response": [a.raw_response for a in answers],
        "prompt_tokens": [a.prompt_tokens for a in answers],
        "completion_tokens": [a.completion_tokens for a in answers],
        "failure": [a.failure for a in answers],
        "detail": [a.detail for a in answers],
        "endpoint": [a.extra.get("endpoint", "") for a in answers],
    }


class ReplicaLabeller:
    """Ray Data actor: one HTTP client and event loop for its lifetime, reused for every batch."""

    def __init__(self, config: OpenAIConfig):
        self.backend = OpenAIBackend(config)
        self.loop = (fast_event_loop_factory() or asyncio.new_event_loop)()

    def __call__(self, batch: dict) -> dict:
        return label_batch(batch, self.backend, self.loop)


class RayOpenAIBackend:
    """The `openai` backend fanned out over Ray Data actors (`edufilter label --ray`)."""

    def __init__(self, config: OpenAIConfig, *, actors: int = 2, batch_size: int = 64, num_cpus: float = 0.5):
        if actors < 1:
            raise ValueError(f"--ray-actors must be >= 1, got {actors}")
        if batch_size < 1:
            raise ValueError(f"--ray-batch-size must be >= 1, got {batch_size}")
        self.config = config
        self.annotator = config.model
        self.actors = actors
        self.batch_size = batch_size
        self.num_cpus = num_cpus  # the actors wait on the network; they need little CPU
        self.retries = 0

    def run(self, requests: Sequence[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(configure_logging=False)
        by_hash = {r.text_hash: r for r in requests}
        items = [{"text_hash": r.text_hash, "doc_ref": r.doc_ref, "messages": json.dumps(r.messages)} for r in requests]
        blocks = max(1, min(len(items), (len(items) + self.batch_size - 1) // self.batch_size))
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            ReplicaLabeller,
            fn_constructor_kwargs={"config": self.config},
            batch_size=self.batch_size,
            batch_format="numpy",
            concurrency=self.actors,
            num_cpus=self.num_cpus,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for i, text_hash in enumerate(batch["text_hash"]):
                failure = str(batch["failure"][i])
                raw = batch["raw_response"][i]
                on_answer(
                    Answer(
                        by_hash[str(text_hash)],
                        None if failure else str(raw),
                        int(batch["prompt_tokens"][i]),
                        int(batch["completion_tokens"][i]),
                        failure=failure,
                        detail=str(batch["detail"][i]),
                        extra={"endpoint": str(batch["endpoint"][i])} if not failure else {},
                    )
                )
            if should_stop():
                log.warning("token budget spent: stopping the Ray labelling job")
                break
