"""HTML -> text: the one extraction used by the readers, the REST service and the batch jobs.

A classifier only scores well what looks like its training data, so every
place that turns a web page into text calls `extract_html`. The options are
those the seed set was extracted with (trafilatura 2.3.1, `favor_recall=True,
include_tables=True`, see ../shared/corpus/SOURCES.md section 7), so that
the text the classifier is trained on and the text it scores come out of the
same extractor. `bench/bench_extraction.py` measures them against the
benchmark pages that carry ground truth (ScrapingHub AEB, WCXB, Readability).
"""

from __future__ import annotations

import codecs
import logging
import re
import warnings
from dataclasses import asdict, dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ExtractionOptions:
    """Keyword options handed to `trafilatura.extract` (output is always plain text)."""

    favor_recall: bool = True
    favor_precision: bool = False
    include_tables: bool = True
    include_comments: bool = True
    # trafilatura's own `deduplicate=True` shares one LRU cache across calls, so a page's text
    # would depend on the pages extracted before it in the same process; we never use it.
    deduplicate: bool = False
    fast: bool = False


# The options every caller gets; the benchmark compares others against these.
EXTRACTION = ExtractionOptions()

# Pages bigger than this are not parsed (libxml2 on tens of MB of markup takes seconds and
# hundreds of MB); readers report them as too large before they get here.
MAX_HTML_BYTES = 20_000_000

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_XML_ENCODING = re.compile(rb"""<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _usable_codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def declared_charset(data: bytes) -> str | None:
    """The charset the page declares in a <meta> tag or XML prolog (first 4 kB), if Python knows it."""
    head = data[:4096]
    match = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
    return _usable_codec(match.group(1).decode("ascii", "ignore")) if match else None


def decode_html(data: bytes, http_charset: str | None = None) -> str:
    """Bytes of unknown encoding -> str, never raising.

    Order: a BOM, valid UTF-8 (most of the web), the charset the HTTP header or the page
    declares, charset_normalizer's guess, and finally cp1252 with replacement characters
    (cp1252 maps almost every byte, so a mislabelled page still yields readable text).
    """
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    for candidate in (_usable_codec(http_charset), declared_charset(data)):
        # A page declaring utf-8 that is not valid utf-8 is mislabelled: fall through to guessing.
        if candidate and candidate != "utf-8":
            try:
                return data.decode(candidate)
            except (UnicodeDecodeError, LookupError):
                continue
    try:
        from charset_normalizer import from_bytes

        sample = data if len(data) <= 20_000 else data[:10_000] + data[-10_000:]
        guess = from_bytes(sample).best()
        if guess is not None and guess.encoding:
            return data.decode(guess.encoding, errors="replace")
    except Exception:  # the guesser is best effort; the fallback below always works
        logger.debug("charset guess failed", exc_info=True)
    return data.decode("cp1252", errors="replace")


def extract_html(html: str | bytes, url: str | None = None) -> str:
    """Main text of a web page, or "" when nothing is extractable (empty, not HTML, boilerplate only)."""
    return extract_html_with(html, url, EXTRACTION)


def extract_html_with(html: str | bytes, url: str | None, options: ExtractionOptions) -> str:
    """`extract_html` with explicit options (the benchmark compares option sets with it)."""
    import trafilatura

    if isinstance(html, (bytes, bytearray, memoryview)):
        data = bytes(html)
        if len(data) > MAX_HTML_BYTES:
            raise ValueError(f"HTML of {len(data):,} bytes is over the {MAX_HTML_BYTES:,}-byte extraction limit")
        html = decode_html(data)
    elif not isinstance(html, str):
        raise TypeError(f"extract_html takes str or bytes, not {type(html).__name__}")
    elif len(html) > MAX_HTML_BYTES:
        raise ValueError(f"HTML of {len(html):,} characters is over the {MAX_HTML_BYTES:,} extraction limit")
    if not html.strip():
        return ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lxml/trafilatura warn on odd markup; the result says enough
        try:
            text = trafilatura.extract(html, url=url, output_format="txt", **asdict(options))
        except (ValueError, TypeError, AssertionError, RecursionError) as err:
            # libxml2 gives up on some pathological markup; that page has no extractable text.
            logger.debug("extraction failed for %s: %s", url or "<page>", err)
            return ""
    return (text or "").strip()
