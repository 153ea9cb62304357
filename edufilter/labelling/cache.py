"""The answer cache: every annotator answer, appended as it arrives.

One JSONL file (``answers.jsonl`` inside the ``--cache`` folder). Each line
is one answer keyed by ``(prompt_version, model, text_hash)`` where
``text_hash = edufilter.documents.content_hash(document_text)``. A line is
written (one unbuffered append) the moment its answer arrives, so killing a run loses at
most the answers still in flight; a torn last line (the process died mid
write) is skipped with a warning when the file is read back. A later line
for the same key wins.

The cache stores the *raw* answer and parses it when labels are built, so a
parser fix never needs the LLM again. Unparseable answers are cached too
(asking again at temperature 0 would give the same answer); transport
failures are not (a rerun retries them).

Stable API (the offline demo records its annotations with it)::

    from edufilter.labelling.cache import AnswerCache, prompt_version, render_response
    cache = AnswerCache("labels-cache/")          # a folder, or a path ending in .jsonl
    cache.put(prompt_version("web"), "my-llm", content_hash(text), render_response("why", 3))
    entry = cache.get(prompt_version("web"), "my-llm", content_hash(text))   # CachedAnswer | None
    entry.raw_response
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from json.encoder import encode_basestring_ascii as _json_string  # C implementation, ASCII-safe: "\"...\""
from pathlib import Path
from typing import Iterator, NamedTuple

from edufilter.documents import content_hash
from edufilter.labelling.prompts import prompt_version, render_response

__all__ = ["AnswerCache", "CachedAnswer", "content_hash", "prompt_version", "render_response", "CACHE_FILE_NAME"]

log = logging.getLogger(__name__)

CACHE_FILE_NAME = "answers.jsonl"


class CachedAnswer(NamedTuple):
    """One recorded answer (immutable). A NamedTuple: it is built once per answer on the hot path."""

    prompt_version: str
    model: str
    text_hash: str
    raw_response: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created: float = 0.0  # unix time the answer arrived
    extra: dict = {}  # e.g. the endpoint that answered; never mutated

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.prompt_version, self.model, self.text_hash)


class AnswerCache:
    """Append-only JSONL answer store with an in-memory index; one writer process at a time."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        self.path = path if path.suffix == ".jsonl" else path / CACHE_FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._index: dict[tuple[str, str, str], CachedAnswer] = {}
        self._lock = threading.Lock()
        self.torn_lines = 0
        if self.path.exists():
            self._load()
        # One unbuffered O_APPEND write per answer: the line is in the file (the OS's page cache) as soon as
        # put() returns, so a killed process loses nothing it has acknowledged, and no buffer flush is needed.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                entry = CachedAnswer(**record)
            except (ValueError, TypeError) as exc:
                self.torn_lines += 1
                log.warning("answer cache %s line %d is unreadable (%s); ignoring it", self.path, number, exc)
                continue
            self._index[entry.key] = entry
        if data and not data.endswith(b"\n"):
            # A run died mid-line: end the torn line so the next append starts on a fresh one.
            with open(self.path, "ab") as f:
                f.write(b"\n")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: tuple[str, str, str]) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[CachedAnswer]:
        return iter(list(self._index.values()))

    def get(self, prompt_version: str, model: str, text_hash: str) -> CachedAnswer | None:
        return self._index.get((prompt_version, model, text_hash))

    def put(
        self,
        prompt_version: str,
        model: str,
        text_hash: str,
        raw_response: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        extra: dict | None = None,
    ) -> CachedAnswer:
        """Record one answer: in the file before this returns."""
        entry = CachedAnswer(
            prompt_version, model, text_hash, raw_response, int(prompt_tokens), int(completion_tokens), time.time(),
            dict(extra) if extra else {},
        )
        # Formatted by hand around the C string encoder: json.dumps of the whole record costs several times more,
        # and this runs once per answer on the labelling hot path. The result is the same JSON object.
        line = (
            f'{{"prompt_version": {_json_string(prompt_version)}, "model": {_json_string(model)}, '
            f'"text_hash": {_json_string(text_hash)}, "raw_response": {_json_string(raw_response)}, '
            f'"prompt_tokens": {entry.prompt_tokens}, "completion_tokens": {entry.completion_tokens}, '
            f'"created": {entry.created!r}, "extra": {json.dumps(entry.extra) if entry.extra else "{}"}}}\n'
        ).encode("utf-8")
        with self._lock:
            if self._fd < 0:
                raise ValueError(f"answer cache {self.path} is closed")
            written = os.write(self._fd, line)
            if written != len(line):  # short writes do not happen on regular files, but never store half a line
                os.write(self._fd, line[written:])
            self._index[entry.key] = entry
        return entry

    def close(self) -> None:
        """fsync and close: after close() the answers survive a machine crash too, not only a killed process."""
        with self._lock:
            if self._fd >= 0:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "AnswerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
