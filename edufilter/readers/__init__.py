"""Corpus readers: real dataset formats in, `Document`s (or `BadDocument`s) out, streaming.

    for item in read_documents("refinedweb", "/data/refinedweb/*.parquet", rank=r, world_size=n):
        if isinstance(item, BadDocument): count it
        else: score it

| source        | files                                   | domain        |
|---------------|-----------------------------------------|---------------|
| refinedweb    | Falcon-RefinedWeb parquet (`content`)   | web           |
| fineweb       | FineWeb parquet (`text`, `id`)          | web           |
| the-stack     | The Stack parquet (`content`, `lang`)   | code          |
| stackoverflow | Posts.xml, or posts as JSON/JSONL rows  | stackoverflow |
| html          | .html / .htm (optionally .gz)           | web           |
| warc          | .warc / .warc.gz (and WET)              | web           |
| jsonl         | JSONL with a `text` field               | web (or row's)|
| auto          | each file's format recognised (`detect_source`) |       |

Files are sorted and dealt round-robin: file i goes to rank i % world_size, so
ranks never share a file and a rerun gives each rank the same files.

A bad document inside a good file is yielded as `BadDocument(shard, row, reason, detail)`;
reasons: empty-text, missing-text, too-large (over `max_bytes`, default 10 MB), not-utf8,
invalid-json, bad-domain, bad-type, not-html, http-status, no-text-extracted (HTML with no main
text), bad-post, not-qa-post, orphan-answer (Stack Exchange). A bad file (missing, truncated,
not the format, missing column, malformed XML) raises `ShardError(path, reason, row=...)`, a
ValueError whose message names the file and, where known, the row or record.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Iterable, Iterator, Sequence

from edufilter.documents import BadDocument, Document
from edufilter.readers.base import DEFAULT_MAX_BYTES, Reader, ReadResult, ShardError
from edufilter.readers.jsonl import JsonlReader
from edufilter.readers.parquet import FineWebReader, RefinedWebReader, TheStackReader
from edufilter.readers.stackoverflow import StackOverflowReader, post_html_to_text, render_thread
from edufilter.readers.web import HtmlFileReader, WarcReader

__all__ = [
    "READERS", "DEFAULT_MAX_BYTES", "Reader", "ShardError", "read_documents", "read_shard", "expand_paths",
    "detect_source", "make_reader", "post_html_to_text", "render_thread", "Document", "BadDocument",
]

logger = logging.getLogger(__name__)

READERS: dict[str, type[Reader]] = {
    cls.source: cls
    for cls in (RefinedWebReader, FineWebReader, TheStackReader, StackOverflowReader, HtmlFileReader, WarcReader,
                JsonlReader)
}

# File name endings a directory is expanded to (after an optional .gz).
_SUFFIXES = {".parquet": None, ".xml": "stackoverflow", ".html": "html", ".htm": "html", ".warc": "warc",
             ".wet": "warc", ".arc": "warc", ".jsonl": None, ".json": None, ".ndjson": None}
_GLOB_CHARS = set("*?[")


def make_reader(source: str, options: dict[str, Any] | None = None) -> Reader:
    """The reader for `source` configured with `options`; ValueError naming what it accepts."""
    if source not in READERS:
        raise ValueError(f"unknown source {source!r}; expected one of {', '.join(READERS)} or 'auto'")
    cls = READERS[source]
    options = dict(options or {})
    unknown = sorted(set(options) - set(cls.option_names()))
    if unknown:
        raise ValueError(f"reader {source!r} does not take option(s) {', '.join(unknown)}; "
                         f"it takes: {', '.join(cls.option_names())}")
    return cls(**options)


def read_shard(source: str, path: str | os.PathLike, **options: Any) -> Iterator[ReadResult]:
    """Documents of ONE file; `source="auto"` recognises the format from the file."""
    path = os.fspath(path)
    if source == "auto":
        _check_any_reader_takes(options)
        source = detect_source(path)
        options = {k: v for k, v in options.items() if k in READERS[source].option_names()}
    return make_reader(source, options).read(path)


def _check_any_reader_takes(options: dict[str, Any]) -> None:
    accepted = set().union(*(cls.option_names() for cls in READERS.values()))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(f"no reader takes option(s) {', '.join(unknown)}; options are: {', '.join(sorted(accepted))}")


def read_documents(source: str, paths: str | os.PathLike | Sequence[str | os.PathLike], *, rank: int = 0,
                   world_size: int = 1, on_shard_error: str = "raise", **options: Any) -> Iterator[ReadResult]:
    """Stream the documents of this rank's share of `paths` (files, directories or globs).

    Arguments are checked now (unknown source or option, bad rank, missing file raise at the call);
    reading happens as the iterator is consumed. A bad file raises `ShardError` naming it, or with
    `on_shard_error="record"` becomes one `BadDocument(shard, row, "bad-shard", message)` and the
    remaining files are still read.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if on_shard_error not in ("raise", "record"):
        raise ValueError(f"on_shard_error must be 'raise' or 'record', got {on_shard_error!r}")
    if source != "auto":
        reader = make_reader(source, options)  # validates source and options before any file is touched
    else:
        _check_any_reader_takes(options)
        reader = None
    files = expand_paths(paths)[rank::world_size]
    return _read_files(files, reader, options, on_shard_error)


def _read_files(files: list[str], reader: Reader | None, options: dict[str, Any],
                on_shard_error: str) -> Iterator[ReadResult]:
    for path in files:
        try:
            shard = reader.read(path) if reader is not None else read_shard("auto", path, **options)
            yield from shard
        except ShardError as err:
            if on_shard_error == "raise":
                raise
            logger.error("skipping bad shard: %s", err)
            yield BadDocument(err.path, err.row if err.row is not None else -1, "bad-shard", str(err))


def expand_paths(path_or_glob: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Files named by a path, a directory (recursively: files with a known data suffix), a glob,
    or a list of those: sorted and without duplicates. A missing path or an empty glob raises ShardError."""
    if isinstance(path_or_glob, (str, os.PathLike)):
        items = [os.fspath(path_or_glob)]
    else:
        items = [os.fspath(p) for p in path_or_glob]
        if not items:
            raise ValueError("no input paths given")
    files: set[str] = set()
    for item in items:
        if _GLOB_CHARS & set(item):
            matches = [p for p in glob.glob(item, recursive=True) if os.path.isfile(p)]
            if not matches:
                raise ShardError(item, "the pattern matches no files")
            files.update(matches)
        elif os.path.isdir(item):
            found = [os.path.join(root, name) for root, dirs, names in os.walk(item) for name in names
                     if not name.startswith((".", "_")) and _data_suffix(name) is not None]
            if not found:
                raise ShardError(item, f"the directory holds no data files ({', '.join(sorted(_SUFFIXES))}, optionally .gz)")
            files.update(found)
        elif os.path.exists(item):
            files.add(item)
        else:
            raise ShardError(item, "no such file or directory")
    return sorted(files)


def _data_suffix(name: str) -> str | None:
    stem = name.lower()
    if stem.endswith(".gz"):
        stem = stem[:-3]
    suffix = os.path.splitext(stem)[1]
    return suffix if suffix in _SUFFIXES else None


def detect_source(path: str | os.PathLike) -> str:
    """Recognise a file's source from its name and, for parquet and JSON, its columns/keys."""
    path = os.fspath(path)
    suffix = _data_suffix(os.path.basename(path))
    if suffix is None:
        raise ShardError(path, f"cannot tell the format from the name; give the source explicitly ({', '.join(READERS)})")
    if _SUFFIXES[suffix]:
        return _SUFFIXES[suffix]
    if suffix == ".parquet":
        return _parquet_source(path)
    return _json_source(path)


def _parquet_source(path: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edufilter.readers.base import require_file

    require_file(path)
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as err:
        raise ShardError(path, f"not a readable parquet file ({err})") from err
    if "content" in names and ({"lang", "max_stars_repo_path"} & names):
        return "the-stack"
    if "content" in names:
        return "refinedweb"
    if "text" in names:
        return "fineweb"
    raise ShardError(path, f"parquet of no known schema (needs 'content' or 'text'); it has: {', '.join(sorted(names))}")


def _json_source(path: str) -> str:
    import json

    from edufilter.readers.base import open_maybe_gzip

    with open_maybe_gzip(path) as stream:
        head = stream.read(1 << 16)
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "stackoverflow"  # a JSON array: posts as exported objects; the jsonl reader takes lines only
    first_line = stripped.split(b"\n", 1)[0]
    try:
        keys = {k.replace("_", "").lower() for k in json.loads(first_line)}
    except (ValueError, TypeError, AttributeError):
        return "jsonl"  # let the reader report the bad line with its row
    if "posttypeid" in keys or ("body" in keys and "text" not in keys):
        return "stackoverflow"
    return "jsonl"
