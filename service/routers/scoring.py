"""POST /v1/score, /v1/score/html and /v1/explain."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from fastapi import APIRouter

from service.batching import BatchResult
from service.dependencies import ApiKeyDep, ServiceDep
from service.errors import ApiError, LimitExceeded
from service.registry import ModelRegistry
from service.schemas import (
    DocumentIn,
    ExplainRequest,
    ExplainResponse,
    HtmlScoredDocument,
    HtmlScoreRequest,
    ModelRef,
    ScoredDocument,
    ScoreRequest,
    ScoreResponse,
    Term,
)
from service.settings import ServiceSettings

router = APIRouter(prefix="/v1", tags=["scoring"], dependencies=[ApiKeyDep])


def check_document_bytes(text: str, settings: ServiceSettings, what: str) -> None:
    limit = settings.max_document_bytes
    # A character is 1-4 bytes in UTF-8: encode only when the length alone does not decide.
    if len(text) > limit or (len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit):
        raise LimitExceeded("max_document_bytes", limit, f"{what} is too large")


def check_documents(documents: list[DocumentIn], settings: ServiceSettings) -> None:
    if len(documents) > settings.max_documents_per_request:
        raise LimitExceeded(
            "max_documents_per_request", settings.max_documents_per_request, f"{len(documents)} documents in one request"
        )
    for index, document in enumerate(documents):
        check_document_bytes(document.text, settings, f"documents.{index}.text")


def scored(result: BatchResult, index: int, domain: str, doc_id: str | None) -> ScoredDocument:
    return ScoredDocument(
        id=doc_id,
        domain=domain,
        score=result.score[index],
        int_score=result.int_score[index],
        keep=result.keep[index],
        model=ModelRef(id=str(result.scorer.model_id), version=str(result.scorer.version)),
    )


async def score_grouped(
    registry: ModelRegistry, metrics, documents: list[DocumentIn], default_domain: str | None
) -> list[ScoredDocument]:
    """Score each document with its domain's model (one batcher call per domain), in request order."""
    by_domain: dict[str, list[int]] = defaultdict(list)
    for index, document in enumerate(documents):
        by_domain[registry.resolve(document.domain or default_domain).domain].append(index)
    domains = list(by_domain)
    if len(domains) == 1:  # the common case: no gather, no extra tasks
        results = [await registry.score(domains[0], [document.text for document in documents])]
    else:
        results = await asyncio.gather(
            *(registry.score(domain, [documents[i].text for i in by_domain[domain]]) for domain in domains)
        )
    answers: list[ScoredDocument | None] = [None] * len(documents)
    for domain, result in zip(domains, results):
        metrics.observe_scores(domain, result.score)
        for position, index in enumerate(by_domain[domain]):
            answers[index] = scored(result, position, domain, documents[index].id)
    return answers  # type: ignore[return-value]


@router.post("/score", summary="Score documents for educational value (0-5)")
async def score(body: ScoreRequest, service: ServiceDep) -> ScoreResponse:
    check_documents(body.documents, service.settings)
    return ScoreResponse(results=await score_grouped(service.registry, service.metrics, body.documents, body.domain))


@router.post("/score/html", summary="Extract the text of an HTML page (as the batch jobs do) and score it")
async def score_html(body: HtmlScoreRequest, service: ServiceDep) -> HtmlScoredDocument:
    registry, metrics = service.registry, service.metrics
    check_document_bytes(body.html, service.settings, "html")
    slot = registry.resolve(body.domain)
    from edufilter.extract import extract_html  # the one extraction shared with the readers and jobs

    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(registry.executor, extract_html, body.html, body.url)
    if not text.strip():
        raise ApiError(422, "no_text_extracted", "no text could be extracted from the HTML", extracted_chars=0)
    result = await registry.score(slot.domain, [text])
    metrics.observe_scores(slot.domain, result.score)
    base = scored(result, 0, slot.domain, body.id)
    return HtmlScoredDocument(**base.model_dump(), extracted_chars=len(text), text=text if body.include_text else None)


@router.post("/explain", summary="The words and n-grams that pushed one document's score up or down")
async def explain(body: ExplainRequest, service: ServiceDep) -> ExplainResponse:
    registry, settings = service.registry, service.settings
    check_document_bytes(body.text, settings, "text")
    if body.top_k > settings.explain_max_terms:
        raise LimitExceeded("explain_max_terms", settings.explain_max_terms, f"top_k={body.top_k} is too many terms", status=422)
    slot = registry.resolve(body.domain)
    _, terms, result = await registry.explain(slot.domain, body.text, body.top_k)
    base = scored(result, 0, slot.domain, body.id)
    return ExplainResponse(**base.model_dump(), terms=[Term(term=t, contribution=c) for t, c in terms])
