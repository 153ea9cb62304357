"""Labelling run: cached answers first, the backend for the rest, then the
labels table.

Every answer goes into the `AnswerCache` the moment it arrives, so a run
killed at any point loses only the requests in flight, and the same command
run again asks the backend only for what the cache does not have. Labels are
built from the cache (raw answer -> `parse_response`), so an unparseable
answer is kept as a row with ``status="unparseable"`` and its reason, a
transport failure as ``status="failed"`` (retried by the next run), and a
document left out by the token budget as ``status="not-labelled"``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

from edufilter.documents import Document, content_hash
from edufilter.labelling.backends import Answer, Backend, LabelRequest, ReplayBackend
from edufilter.labelling.cache import AnswerCache
from edufilter.labelling.prompts import build_messages, parse_response, prompt_version

log = logging.getLogger(__name__)

LABELS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("ref", pa.string()),  # url / path, else shard:row
        ("text", pa.large_string()),
        ("score", pa.int64()),  # 0-5; null unless status == "ok"
        ("rationale", pa.string()),
        ("annotator", pa.string()),
        ("prompt_version", pa.string()),
        ("raw_response", pa.large_string()),
        ("status", pa.string()),  # ok | unparseable | failed | not-labelled
        ("reason", pa.string()),  # why, when status != ok
        ("text_hash", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
    ]
)


@dataclass
class LabelSummary:
    documents: int = 0
    cached: int = 0  # answered from the cache without asking
    asked: int = 0  # sent to the backend this run
    answered: int = 0  # answers received this run
    status: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)  # "failed:timeout", "unparseable:no-score-line", ...
    prompt_tokens: int = 0  # this run
    completion_tokens: int = 0
    budget_exhausted: bool = False
    retries: int = 0
    elapsed_s: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict:
        return {
            "documents": self.documents,
            "cached": self.cached,
            "asked": self.asked,
            "answered": self.answered,
            "status": dict(self.status),
            "reasons": dict(self.reasons),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "tokens": self.tokens,
            "budget_exhausted": self.budget_exhausted,
            "retries": self.retries,
            "elapsed_s": round(self.elapsed_s, 3),
            "answers_per_s": round(self.answered / self.elapsed_s, 2) if self.elapsed_s else None,
        }

    def log(self) -> None:
        log.info(
            "labelled %d documents: %s; %d from cache, %d asked, %d answered, %d retries; tokens used %d "
            "(prompt %d, completion %d)%s; %.1fs",
            self.documents,
            ", ".join(f"{k} {v}" for k, v in sorted(self.status.items())) or "nothing",
            self.cached,
            self.asked,
            self.answered,
            self.retries,
            self.tokens,
            self.prompt_tokens,
            self.completion_tokens,
            "; TOKEN BUDGET EXHAUSTED" if self.budget_exhausted else "",
            self.elapsed_s,
        )
        for reason, count in sorted(self.reasons.items()):
            log.info("  %-40s %d", reason, count)


def document_ref(doc: Document) -> str:
    if doc.url:
        return doc.url
    return f"{doc.shard}:{doc.row}" if doc.shard else ""


def label_documents(
    documents: Sequence[Document],
    *,
    domain: str,
    backend: Backend,
    cache: AnswerCache,
    max_tokens_budget: int | None = None,
    progress: bool = True,
) -> tuple[pa.Table, LabelSummary]:
    """Label `documents` (distinct texts) for `domain`; returns the labels table and the run summary."""
    started = time.perf_counter()
    version = prompt_version(domain)
    model = backend.annotator
    summary = LabelSummary(documents=len(documents))
    hashes = [content_hash(d.text) for d in documents]

    requests: list[LabelRequest] = []
    queued: set[str] = set()
    for doc, text_hash in zip(documents, hashes):
        if cache.get(version, model, text_hash) is not None:
            summary.cached += 1
        elif text_hash not in queued:
            queued.add(text_hash)
            ref = document_ref(doc)
            requests.append(LabelRequest(text_hash, f"{doc.id} ({ref})" if ref else doc.id, build_messages(domain, doc.text)))
    summary.asked = len(requests)
    log.info(
        "%d documents: %d answered before (cache %s), %d to ask %s (prompt %s)",
        len(documents), summary.cached, cache.path, len(requests), model, version,
    )

    failures: dict[str, Answer] = {}
    # Replay has nothing to show progress for: any request reaching it is a miss and fails at once.
    bar = None if isinstance(backend, ReplayBackend) else _progress_bar(len(requests), model, progress)

    def on_answer(answer: Answer) -> None:
        text_hash = answer.request.text_hash
        if answer.ok:
            cache.put(
                version, model, text_hash, answer.raw_response,
                prompt_tokens=answer.prompt_tokens, completion_tokens=answer.completion_tokens, extra=answer.extra,
            )
            failures.pop(text_hash, None)
            summary.answered += 1
        else:
            failures[text_hash] = answer
        summary.prompt_tokens += answer.prompt_tokens
        summary.completion_tokens += answer.completion_tokens
        if bar is not None:
            bar.update(1)
            bar.set_postfix(tokens=summary.tokens, failed=len(failures), refresh=False)

    def should_stop() -> bool:
        if max_tokens_budget is not None and summary.tokens >= max_tokens_budget:
            summary.budget_exhausted = True
            return True
        return False

    try:
        if requests:
            backend.run(requests, on_answer, should_stop)
    finally:
        if bar is not None:
            bar.close()
        summary.retries = int(getattr(backend, "retries", 0))
    if summary.budget_exhausted:
        log.warning("token budget of %d spent (%d used): stopped asking; rerun with a larger budget to go on",
                    max_tokens_budget, summary.tokens)

    rows = []
    for doc, text_hash in zip(documents, hashes):
        row = {
            "id": doc.id, "domain": domain, "source": doc.source, "ref": document_ref(doc), "text": doc.text,
            "score": None, "rationale": "", "annotator": model, "prompt_version": version, "raw_response": None,
            "status": "", "reason": "", "text_hash": text_hash, "prompt_tokens": 0, "completion_tokens": 0,
        }
        entry = cache.get(version, model, text_hash)
        if entry is not None:
            parsed = parse_response(entry.raw_response)
            row.update(
                score=parsed.score, rationale=parsed.rationale, raw_response=entry.raw_response,
                status=parsed.status, reason=parsed.reason,
                prompt_tokens=entry.prompt_tokens, completion_tokens=entry.completion_tokens,
            )
        elif text_hash in failures:
            failure = failures[text_hash]
            row.update(status="failed", reason=failure.failure, rationale=failure.detail[:500])
        else:
            row.update(status="not-labelled", reason="token-budget-exhausted" if summary.budget_exhausted else "not-asked")
        summary.status[row["status"]] += 1
        if row["reason"]:
            summary.reasons[f"{row['status']}:{row['reason']}"] += 1
        rows.append(row)
    summary.elapsed_s = time.perf_counter() - started
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA), summary


def _progress_bar(total: int, model: str, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"label {model}", unit="doc", mininterval=1.0, smoothing=0.1)
