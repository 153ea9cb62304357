"""Plain JSON Lines: one object per line with a `text` field (optional `id`, `url`, `domain`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from edufilter.documents import DOMAINS, BadDocument
from edufilter.readers.base import Reader, ReadResult, ShardError, decode_utf8, open_maybe_gzip, shard_name


def iter_json_lines(path: str, max_bytes: int) -> Iterator[tuple[int, dict[str, Any] | BadDocument]]:
    """(line number, object) for each non-blank line of a (gzipped) JSONL file; a bad line becomes a BadDocument.

    A line longer than `max_bytes` is skipped without being held in memory whole.
    """
    stream = open_maybe_gzip(path)
    row = -1
    try:
        with stream:
            while True:
                try:
                    line = stream.readline(max_bytes + 1)
                except (OSError, EOFError) as err:  # truncated or corrupt gzip
                    raise ShardError(path, f"unreadable data ({err})", row=row + 1) from err
                if not line:
                    return
                row += 1  # rows are 0-based line numbers, so an error points at the line in an editor
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    size = len(line) + _skip_rest_of_line(stream)
                    yield row, BadDocument(path, row, "too-large", f"line of {size:,} bytes > max_bytes={max_bytes:,}")
                    continue
                if not line.strip():
                    continue
                text = decode_utf8(line, path, row)
                if isinstance(text, BadDocument):
                    yield row, text
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as err:
                    yield row, BadDocument(path, row, "invalid-json", str(err))
                    continue
                if not isinstance(obj, dict):
                    yield row, BadDocument(path, row, "invalid-json", f"a line holds a {type(obj).__name__}, not an object")
                    continue
                yield row, obj
    except (OSError, EOFError) as err:
        raise ShardError(path, f"unreadable data ({err})", row=row) from err


def _skip_rest_of_line(stream, chunk: int = 1 << 20) -> int:
    skipped = 0
    while True:
        part = stream.readline(chunk)
        skipped += len(part)
        if not part or part.endswith(b"\n"):
            return skipped


_NOT_METADATA = frozenset({"text", "id", "url", "domain", "metadata"})


@dataclass(frozen=True)
class JsonlReader(Reader):
    """JSONL (.jsonl, .jsonl.gz, .json.gz lines) with `text`; `id`, `url`, `domain` are optional.

    The first object decides the schema: without `text_field` the file is rejected as a whole
    (another schema), while a later object lacking it is one bad document.
    """

    source: ClassVar[str] = "jsonl"
    domain: ClassVar[str] = "web"

    text_field: str = "text"
    default_domain: str = "web"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.default_domain not in DOMAINS:
            raise ValueError(f"default_domain must be one of {', '.join(DOMAINS)}, got {self.default_domain!r}")

    def read(self, path: str) -> Iterator[ReadResult]:
        path = os.fspath(path)
        with open_maybe_gzip(path) as stream:
            if stream.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
                raise ShardError(path, "a JSON array, not JSON Lines (one object per line)")
        base = shard_name(path)
        schema_checked = False
        for row, obj in iter_json_lines(path, self.max_bytes):
            if isinstance(obj, BadDocument):
                yield obj
                continue
            if self.text_field not in obj:
                if not schema_checked:
                    raise ShardError(path, f"no {self.text_field!r} field; the object has: {', '.join(sorted(obj)) or 'no keys'}", row=row)
                yield BadDocument(path, row, "missing-text", f"no {self.text_field!r} field")
                continue
            schema_checked = True
            yield self.document(path, base, row, obj)

    def document(self, path: str, base: str, row: int, obj: dict[str, Any]) -> ReadResult:
        domain = obj.get("domain") or self.default_domain
        if domain not in DOMAINS:
            return BadDocument(path, row, "bad-domain", f"domain {domain!r} is not one of {', '.join(DOMAINS)}")
        # Keep the provenance the file carries (Dolma/CCNet put it in "metadata", others at top level).
        metadata = dict(obj["metadata"]) if isinstance(obj.get("metadata"), dict) else {}
        metadata.update({k: v for k, v in obj.items() if k not in _NOT_METADATA and not isinstance(v, (dict, list))})
        url = obj.get("url") or metadata.get("url")
        doc_id = obj.get("id")
        return self.make(id=str(doc_id) if doc_id not in (None, "") else f"{base}:{row}", text=obj[self.text_field],
                         shard=path, row=row, url=str(url) if url else None, metadata=metadata, domain=domain)
