"""LLM labelling: versioned prompts, OpenAI-compatible / transformers / replay
backends, a resumable answer cache, agreement checks and active selection.

See edufilter/labelling/README.md and `edufilter label --help`."""

from edufilter.labelling.cache import AnswerCache, CachedAnswer
from edufilter.labelling.prompts import (
    MAX_DOCUMENT_CHARS,
    build_messages,
    parse_response,
    prompt_version,
    render_response,
    truncate_document,
)

__all__ = [
    "AnswerCache",
    "CachedAnswer",
    "MAX_DOCUMENT_CHARS",
    "build_messages",
    "parse_response",
    "prompt_version",
    "render_response",
    "truncate_document",
]
