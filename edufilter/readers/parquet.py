"""Parquet readers for the pretraining-corpus schemas: Falcon-RefinedWeb, FineWeb, The Stack.

Memory stays bounded by reading `iter_batches` of `batch_size` rows and only
the columns the reader needs (the text column plus provenance).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from edufilter.documents import BadDocument
from edufilter.readers.base import Reader, ReadResult, ShardError, decode_utf8, require_file, shard_name


@dataclass(frozen=True)
class ParquetReader(Reader):
    """One text column, an optional id column, the rest of the wanted columns go to metadata."""

    text_column: ClassVar[str]
    url_column: ClassVar[str | None] = "url"
    required_columns: ClassVar[tuple[str, ...]] = ()
    metadata_columns: ClassVar[tuple[str, ...]] = ()

    batch_size: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def open(self, path: str) -> pq.ParquetFile:
        require_file(path)
        try:
            return pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise ShardError(path, f"not a readable parquet file ({err})") from err

    def columns_to_read(self, path: str, schema: pa.Schema) -> list[str]:
        names = set(schema.names)
        missing = [c for c in (self.text_column, *self.required_columns) if c not in names]
        if missing:
            raise ShardError(path, f"missing column(s) {', '.join(missing)} for source {self.source!r}; "
                                   f"the file has: {', '.join(schema.names)}")
        wanted = [self.text_column, "id", self.url_column, *self.required_columns, *self.metadata_columns]
        return list(dict.fromkeys(c for c in wanted if c and c in names))

    def keep(self, row: dict[str, Any]) -> bool:
        """Row filter applied before building the document (The Stack's language filter)."""
        return True

    def url_of(self, row: dict[str, Any]) -> str | None:
        return row.get(self.url_column) if self.url_column else None

    def read(self, path: str) -> Iterator[ReadResult]:
        path = os.fspath(path)
        parquet = self.open(path)
        columns = self.columns_to_read(path, parquet.schema_arrow)
        base = shard_name(path)
        row = 0
        batches = parquet.iter_batches(batch_size=self.batch_size, columns=columns)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as err:
                raise ShardError(path, f"unreadable parquet data ({err})", row=row) from err
            for record in batch.to_pylist():
                if self.keep(record):
                    yield self.document(path, base, row, record)
                row += 1

    def document(self, path: str, base: str, row: int, record: dict[str, Any]) -> ReadResult:
        text = record.get(self.text_column)
        if isinstance(text, (bytes, bytearray)):  # a binary text column: decode strictly
            text = decode_utf8(bytes(text), path, row)
            if isinstance(text, BadDocument):
                return text
        doc_id = record.get("id")
        metadata = {c: record[c] for c in self.metadata_columns if c in record}
        return self.make(id=str(doc_id) if doc_id not in (None, "") else f"{base}:{row}", text=text, shard=path,
                         row=row, url=self.url_of(record), metadata=metadata)


@dataclass(frozen=True)
class RefinedWebReader(ParquetReader):
    """tiiuae/falcon-refinedweb: content, url, timestamp, dump, segment, image_urls."""

    source: ClassVar[str] = "refinedweb"
    domain: ClassVar[str] = "web"
    text_column: ClassVar[str] = "content"
    required_columns: ClassVar[tuple[str, ...]] = ("url",)
    metadata_columns: ClassVar[tuple[str, ...]] = ("timestamp", "dump", "segment", "image_urls")


@dataclass(frozen=True)
class FineWebReader(ParquetReader):
    """HuggingFaceFW/fineweb(-edu): text, id, dump, url, date, file_path, language, language_score, token_count."""

    source: ClassVar[str] = "fineweb"
    domain: ClassVar[str] = "web"
    text_column: ClassVar[str] = "text"
    metadata_columns: ClassVar[tuple[str, ...]] = (
        "dump", "date", "file_path", "language", "language_score", "token_count", "score", "int_score")


@dataclass(frozen=True)
class TheStackReader(ParquetReader):
    """bigcode/the-stack: content, lang, max_stars_repo_path/name/licenses, size, line statistics.

    `languages` keeps only files whose `lang` is listed (The Stack's spelling: "Python", "C", ...;
    compared case-insensitively); empty keeps every language.
    """

    source: ClassVar[str] = "the-stack"
    domain: ClassVar[str] = "code"
    text_column: ClassVar[str] = "content"
    url_column: ClassVar[str | None] = None
    required_columns: ClassVar[tuple[str, ...]] = ("lang",)
    metadata_columns: ClassVar[tuple[str, ...]] = (
        "lang", "max_stars_repo_name", "max_stars_repo_path", "max_stars_repo_licenses", "max_stars_count",
        "hexsha", "size", "ext", "avg_line_length", "max_line_length", "alphanum_fraction")

    languages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.languages, str):  # languages="Python" would otherwise mean P, y, t, ...
            object.__setattr__(self, "languages", (self.languages,))
        object.__setattr__(self, "languages", tuple(self.languages))
        object.__setattr__(self, "_wanted", frozenset(lang.casefold() for lang in self.languages))

    def keep(self, row: dict[str, Any]) -> bool:
        return not self.languages or str(row.get("lang") or "").casefold() in self._wanted

    def url_of(self, row: dict[str, Any]) -> str | None:
        repo, path = row.get("max_stars_repo_name"), row.get("max_stars_repo_path")
        if repo and path:
            return f"{repo}/{path}"
        return path or None
