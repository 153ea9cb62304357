"""Raw web pages: single HTML files and WARC archives, turned into text by `extract_html`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

from edufilter.documents import BadDocument
from edufilter.extract import decode_html, extract_html
from edufilter.readers.base import Reader, ReadResult, ShardError, open_maybe_gzip, read_bounded, shard_name

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")

_CANONICAL = re.compile(
    rb"""<link\b[^>]*\brel\s*=\s*["']?canonical["']?[^>]*\bhref\s*=\s*["']([^"'<>\s]+)"""
    rb"""|<link\b[^>]*\bhref\s*=\s*["']([^"'<>\s]+)["'][^>]*\brel\s*=\s*["']?canonical"""
    rb"""|<meta\b[^>]*\bproperty\s*=\s*["']og:url["'][^>]*\bcontent\s*=\s*["']([^"'<>\s]+)""",
    re.IGNORECASE,
)


def page_url(data: bytes) -> str | None:
    """The URL a saved page names for itself (<link rel=canonical> or og:url), if any."""
    match = _CANONICAL.search(data[:65536])
    if not match:
        return None
    url = next(g for g in match.groups() if g).decode("utf-8", "replace")
    return url if url.startswith(("http://", "https://")) else None


@dataclass(frozen=True)
class HtmlFileReader(Reader):
    """One saved page per file (.html, .htm, optionally gzipped): one document, or one BadDocument.

    A raw page carries no crawl URL; the page's canonical URL (or og:url) is kept when it names one.
    """

    source: ClassVar[str] = "html"
    domain: ClassVar[str] = "web"

    def read(self, path: str) -> Iterator[ReadResult]:
        path = os.fspath(path)
        try:
            with open_maybe_gzip(path) as stream:
                data, truncated = read_bounded(stream, self.max_bytes)
        except (OSError, EOFError) as err:
            raise ShardError(path, f"unreadable file ({err})") from err
        if truncated:
            yield BadDocument(path, 0, "too-large", f"page over max_bytes={self.max_bytes:,}")
            return
        yield html_document(self, path, 0, f"{shard_name(path)}:0", data, page_url(data), None, {})


def html_document(reader: Reader, path: str, row: int, doc_id: str, data: bytes, url: str | None,
                  charset: str | None, metadata: dict[str, Any]) -> ReadResult:
    if not data.strip():
        return BadDocument(path, row, "empty-text", "empty page")
    text = extract_html(decode_html(data, charset), url=url)
    if not text:
        return BadDocument(path, row, "no-text-extracted", "the extractor found no main text")
    return reader.make(id=doc_id, text=text, shard=path, row=row, url=url, metadata=metadata)


@dataclass(frozen=True)
class WarcReader(Reader):
    """WARC / WET files (.warc, .warc.gz) read with warcio.

    Response and resource records with an HTML payload become documents (text by `extract_html`,
    URL from WARC-Target-URI); WET conversion records (already text) are taken as they are.
    A payload record that is not HTML is a BadDocument "not-html", a non-2xx response "http-status".
    Protocol records (warcinfo, request, metadata, revisit) carry no page and are passed over.
    """

    source: ClassVar[str] = "warc"
    domain: ClassVar[str] = "web"

    def read(self, path: str) -> Iterator[ReadResult]:
        from warcio.archiveiterator import ArchiveIterator

        path = os.fspath(path)
        base = shard_name(path)
        row = -1
        # We gunzip ourselves: warcio reads a truncated gzip member as a short, silent end of file,
        # while Python's gzip raises, which `_EndWatch` turns into a loud ShardError below.
        with open_maybe_gzip(path) as raw:
            stream = _EndWatch(raw)
            try:
                for record in ArchiveIterator(stream):
                    row += 1
                    result = self._record(record, path, base, row)
                    if stream.truncated:
                        break
                    if result is not None:
                        yield result
            except ShardError:
                raise
            except Exception as err:  # warcio fails on garbage with assorted exception types
                raise ShardError(path, f"unreadable WARC data ({type(err).__name__}: {err})", row=row + 1) from err
            if stream.truncated:
                # gzip discards the last partial block, so the records in it are lost with the error.
                raise ShardError(path, f"truncated: the gzip stream ends before its end marker "
                                       f"({max(row, 0)} complete records read before the damaged block)")

    def _record(self, record, path: str, base: str, row: int) -> ReadResult | None:
        if record.rec_type not in ("response", "resource", "conversion"):
            return None
        headers = record.rec_headers
        url = headers.get_header("WARC-Target-URI")
        doc_id = headers.get_header("WARC-Record-ID") or f"{base}:{row}"
        metadata = {"warc_record_id": headers.get_header("WARC-Record-ID"), "warc_date": headers.get_header("WARC-Date"),
                    "warc_type": record.rec_type}
        if record.rec_type == "response" and record.http_headers is not None:
            status = record.http_headers.get_statuscode()
            content_type = record.http_headers.get_header("Content-Type") or ""
            if not str(status).startswith("2"):
                return BadDocument(path, row, "http-status", f"HTTP {status} for {url}")
        else:
            content_type = headers.get_header("Content-Type") or ""
        metadata["content_type"] = content_type
        mime = content_type.split(";")[0].strip().lower()
        is_wet_text = record.rec_type == "conversion" and mime == "text/plain"
        if not is_wet_text and mime not in HTML_CONTENT_TYPES:  # decided before reading the payload
            return BadDocument(path, row, "not-html", f"{record.rec_type} record of type {mime or 'unknown'} ({url})")
        data, truncated = read_bounded(record.content_stream(), self.max_bytes)
        if not truncated and getattr(record.raw_stream, "limit", 0) > 0:
            # the payload ended before its declared Content-Length: the file was cut inside this record
            raise ShardError(path, "the file ends inside this record (truncated)", row=row)
        if truncated:
            return BadDocument(path, row, "too-large", f"record payload over max_bytes={self.max_bytes:,} ({url})")
        if is_wet_text:  # WET: the text is already extracted
            text = decode_html(data, _charset(content_type))
            return self.make(id=doc_id, text=text, shard=path, row=row, url=url, metadata=metadata)
        return html_document(self, path, row, doc_id, data, url, _charset(content_type), metadata)


class _EndWatch:
    """File proxy for warcio that remembers a premature end of a gzip stream instead of hiding it."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.truncated = False

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except EOFError:  # "Compressed file ended before the end-of-stream marker was reached"
            self.truncated = True
            return b""

    def readline(self, size: int = -1) -> bytes:
        try:
            return self.stream.readline(size)
        except EOFError:
            self.truncated = True
            return b""

    def tell(self) -> int:
        return self.stream.tell()


def _charset(content_type: str) -> str | None:
    match = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else None
