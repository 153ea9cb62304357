"""Request and response bodies of the /v1 API."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Id = Field(default=None, max_length=1024, description="caller's id, echoed back; order is preserved anyway")
DomainField = Field(default=None, max_length=64, description="web, code or stackoverflow; one of the loaded models")


class Strict(BaseModel):
    # Unknown fields are an error: a typo such as "domian" must not silently score with the default model.
    model_config = ConfigDict(extra="forbid", strict=True)


class DocumentIn(Strict):
    id: str | None = Id
    text: str = Field(description="the document's text, UTF-8")
    domain: str | None = DomainField


class ScoreRequest(Strict):
    documents: list[DocumentIn] = Field(description="documents to score, answered in the same order")
    domain: str | None = Field(default=None, max_length=64, description="domain of documents that name none")

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"domain": "web", "documents": [{"id": "a", "text": "Photosynthesis is ..."}]}]},
    )


class ModelRef(BaseModel):
    id: str
    version: str


class ScoredDocument(BaseModel):
    id: str | None
    domain: str
    score: float = Field(description="continuous educational value, 0-5")
    int_score: int = Field(description="rounded score, 0-5")
    keep: bool = Field(description="score at or above the model's threshold")
    model: ModelRef


class ScoreResponse(BaseModel):
    results: list[ScoredDocument]


class HtmlScoreRequest(Strict):
    html: str = Field(description="the raw HTML page")
    url: str | None = Field(default=None, max_length=8192, description="the page URL (helps extraction)")
    id: str | None = Id
    domain: str | None = DomainField
    include_text: bool = Field(default=False, description="also return the extracted text")


class HtmlScoredDocument(ScoredDocument):
    extracted_chars: int = Field(description="length of the text extracted from the HTML")
    text: str | None = Field(default=None, description="the extracted text, when include_text was set")


class ExplainRequest(Strict):
    text: str
    domain: str | None = DomainField
    id: str | None = Id
    top_k: int = Field(default=10, ge=1, description="how many terms to return")


class Term(BaseModel):
    term: str
    contribution: float = Field(description="positive pushes the score up, negative down")


class ExplainResponse(ScoredDocument):
    terms: list[Term]


class ModelInfo(BaseModel):
    domain: str
    model_id: str
    version: str
    kind: str
    threshold: float
    path: str
    loaded_at: float = Field(description="unix time the model was (re)loaded")
    info: dict[str, Any] = Field(description="the artefact's model.json")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class ReloadRequest(Strict):
    domain: str | None = Field(default=None, max_length=64, description="reload only this domain (default: all)")
    path: str | None = Field(default=None, max_length=4096, description="load this model directory instead (one domain)")


class HealthResponse(BaseModel):
    status: str
    models: list[str] = []
