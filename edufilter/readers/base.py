"""What every reader shares: the shard error, the per-document checks, opening files.

A reader is a small frozen dataclass (its fields are its options) with
`source`, `domain` and `read(path) -> Iterator[Document | BadDocument]` for
ONE file. A bad *document* inside a good file comes out as a `BadDocument`
with a countable reason; a bad *file* raises `ShardError` naming it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, fields
from typing import IO, Any, ClassVar, Iterator

from edufilter.documents import BadDocument, Document

# A single document above this many UTF-8 bytes (10 MB) is recorded as "too-large" instead of
# being scored: real pages, posts and source files are almost always far smaller, while a 50 MB
# blob stalls a batch worker (tokenising, HTML parsing) and is usually a dump or a binary.
DEFAULT_MAX_BYTES = 10_000_000

ReadResult = Document | BadDocument


class ShardError(ValueError):
    """A whole input file cannot be read: missing, truncated, wrong schema, malformed."""

    def __init__(self, path: str | os.PathLike, reason: str, *, row: int | None = None):
        self.path = os.fspath(path)
        self.reason = reason
        self.row = row
        where = f"{self.path} (row {row})" if row is not None else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the fields when Ray pickles the error across processes
        return (_rebuild_shard_error, (self.path, self.reason, self.row))


def _rebuild_shard_error(path: str, reason: str, row: int | None) -> ShardError:
    return ShardError(path, reason, row=row)


@dataclass(frozen=True)
class Reader:
    """Base of every format reader; subclasses add their options as fields."""

    source: ClassVar[str]
    domain: ClassVar[str]

    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {self.max_bytes}")

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def read(self, path: str) -> Iterator[ReadResult]:
        raise NotImplementedError

    # -- helpers for subclasses -------------------------------------------------------------
    def check_text(self, shard: str, row: int, text: Any) -> BadDocument | None:
        """The per-document checks every format shares; None when the text is fine."""
        if text is None:
            return BadDocument(shard, row, "missing-text", "the text field is null")
        if isinstance(text, (bytes, bytearray)):
            return BadDocument(shard, row, "not-utf8", "text is bytes that were not decoded")
        if not isinstance(text, str):
            return BadDocument(shard, row, "bad-type", f"text is {type(text).__name__}, not str")
        size = utf8_size(text)
        if size > self.max_bytes:
            return BadDocument(shard, row, "too-large", f"{size:,} bytes > max_bytes={self.max_bytes:,}")
        if not text.strip():
            return BadDocument(shard, row, "empty-text", "text is empty or whitespace only")
        return None

    def make(self, *, id: str, text: Any, shard: str, row: int, url: str | None = None,
             metadata: dict[str, Any] | None = None, domain: str | None = None) -> ReadResult:
        bad = self.check_text(shard, row, text)
        if bad is not None:
            return bad
        return Document(id=id, text=text, domain=domain or self.domain, source=self.source, url=url or None,
                        shard=shard, row=row, metadata=metadata or {})


def utf8_size(text: str) -> int:
    """UTF-8 size of `text` without encoding it when the character count already decides."""
    n = len(text)
    if text.isascii():
        return n
    return len(text.encode("utf-8", errors="surrogatepass"))


def decode_utf8(data: bytes, shard: str, row: int) -> str | BadDocument:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadDocument(shard, row, "not-utf8", f"invalid UTF-8 at byte {err.start}: {data[err.start:err.start + 8]!r}")


def require_file(path: str) -> None:
    if not os.path.exists(path):
        raise ShardError(path, "no such file")
    if not os.path.isfile(path):
        raise ShardError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise ShardError(path, "file is not readable (permission denied)")


def open_maybe_gzip(path: str) -> IO[bytes]:
    """Open `path` for binary reading, transparently gunzipping by magic number (not by name)."""
    require_file(path)
    raw = open(path, "rb")
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    raw.seek(0)
    return raw


def read_bounded(stream: IO[bytes], limit: int) -> tuple[bytes, bool]:
    """Read at most `limit` bytes; the flag says whether there was more (the rest is not read)."""
    data = stream.read(limit + 1)
    return (data[:limit], True) if len(data) > limit else (data, False)


def shard_name(path: str) -> str:
    return os.path.basename(path)
