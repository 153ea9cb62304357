"""The one document record every stage reads and writes.

Readers yield `Document` (or `BadDocument` for a single bad record inside a
good shard, so the caller counts it with its reason instead of losing it).
Batch stages exchange documents as `pyarrow.Table`s with `DOCUMENT_SCHEMA`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, get_args

import pyarrow as pa

Domain = Literal["web", "code", "stackoverflow"]
DOMAINS: tuple[str, ...] = get_args(Domain)


def check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")
    return domain


@dataclass(frozen=True, slots=True)
class Document:
    """A document with enough provenance to trace it back to its shard and row."""

    id: str
    text: str
    domain: str
    source: str  # the dataset or format it came from: refinedweb, the-stack, stackoverflow, ...
    url: str | None = None  # page URL, or repository path for code
    shard: str = ""  # the input file it was read from
    row: int = -1  # row / record index inside that file
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "domain": self.domain,
            "source": self.source,
            "url": self.url,
            "shard": self.shard,
            "row": self.row,
            "metadata": json.dumps(self.metadata, sort_keys=True, default=str),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Document":
        meta = row.get("metadata") or "{}"
        return cls(
            id=row["id"],
            text=row["text"],
            domain=row["domain"],
            source=row["source"],
            url=row.get("url"),
            shard=row.get("shard") or "",
            row=int(row.get("row", -1) if row.get("row") is not None else -1),
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )


@dataclass(frozen=True, slots=True)
class BadDocument:
    """One record of a good shard that could not become a document, and why."""

    shard: str
    row: int
    reason: str  # short, countable: "empty-text", "not-utf8", "too-large", "not-html", ...
    detail: str = ""


DOCUMENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("shard", pa.string()),
        ("row", pa.int64()),
        ("metadata", pa.string()),  # JSON object
    ]
)


def documents_to_table(documents: Iterable[Document]) -> pa.Table:
    rows = [d.to_row() for d in documents]
    return pa.Table.from_pylist(rows, schema=DOCUMENT_SCHEMA)


def table_to_documents(table: pa.Table) -> list[Document]:
    return [Document.from_row(r) for r in table.to_pylist()]


def content_hash(text: str) -> str:
    """Stable identity of a document's content (dedupe, caches, training-data hashes)."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()
