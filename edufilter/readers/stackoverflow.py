"""Stack Overflow / Stack Exchange posts: the dump's Posts.xml, or the same posts as JSON rows.

Each question becomes ONE document joined with its answers, rendered exactly as
the seed set was (../shared/corpus/labelled/edufilter_seed/stackoverflow.jsonl):

    Title: <title>
    Tags: <a><b>
    Score: <question score>

    <question body as text>

    --- Answer (score 12, accepted) ---
    <accepted answer>

    --- Answer (score 3) ---
    <other answers, highest score first>

Memory: an answer may come before or after its question, so a file is read
twice. The first pass keeps only a count of answers per question id (a few
dozen bytes per question; it also validates the whole XML before anything is
yielded). The second pass holds a thread only until its last answer has
arrived, then yields it: memory is bounded by the threads still open at the
current position, not by the file. Documents therefore come out in the order
their threads complete. A dump is split per site already; stackoverflow.com's
own Posts.xml (~100 GB) should be split into files of whole threads first.
"""

from __future__ import annotations

import html
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

from edufilter.documents import BadDocument
from edufilter.readers.base import Reader, ReadResult, ShardError, open_maybe_gzip, require_file
from edufilter.readers.jsonl import iter_json_lines

QUESTION, ANSWER = 1, 2


# Stack Exchange stores sanitised HTML (a literal "<" in text is always "&lt;"), so a tag scanner is
# exact here and ~2x faster than html.parser (same output on every body of the shared dumps).
_TAG = re.compile(r"<!--.*?-->|<(/?)([a-zA-Z][a-zA-Z0-9]*)(?:\s[^>]*)?/?>", re.DOTALL)
_LINE_ENDING_TAGS = frozenset({"p", "li", "h1", "h2", "h3", "h4", "h5", "h6", "div", "tr", "dt", "dd"})
_BLANK_LINES = re.compile(r"\n{3,}")


def post_html_to_text(body: str) -> str:
    """A post body (HTML) as text, the way the seed set has it: paragraphs, list items and headings
    end a line, <br> breaks one, <pre> blocks are fenced with ``` (code kept verbatim), inline markup
    is dropped, entities are decoded, source whitespace is otherwise kept, 3+ newlines become 2."""
    body = body or ""
    parts: list[str] = []
    position = 0
    for match in _TAG.finditer(body):
        if match.start() > position:
            parts.append(html.unescape(body[position:match.start()]))
        position = match.end()
        closing, tag = match.group(1), (match.group(2) or "").lower()
        if tag == "br":
            parts.append("\n")
        elif tag == "pre":
            parts.append("\n```\n")
        elif closing and tag in _LINE_ENDING_TAGS:
            parts.append("\n")
        elif closing and tag in ("td", "th"):
            parts.append(" ")
    parts.append(html.unescape(body[position:]))
    return _BLANK_LINES.sub("\n\n", "".join(parts)).strip()


@dataclass(frozen=True, slots=True)
class Post:
    """The fields of a Posts.xml row a thread needs (body already rendered to text)."""

    id: int
    post_type: int
    row: int
    score: int = 0
    parent_id: int | None = None
    accepted_answer_id: int | None = None
    title: str = ""
    tags: str = ""
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def render_thread(question: Post, answers: Iterable[Post]) -> str:
    """The seed layout: header, question, then answers (accepted first, then by score)."""
    parts = [f"Title: {question.title}\nTags: {question.tags}\nScore: {question.score}\n\n{question.text}"]
    for answer in sort_answers(question, answers):
        accepted = ", accepted" if answer.id == question.accepted_answer_id else ""
        parts.append(f"--- Answer (score {answer.score}{accepted}) ---\n{answer.text}")
    return "\n\n".join(parts)


def sort_answers(question: Post, answers: Iterable[Post]) -> list[Post]:
    return sorted(answers, key=lambda a: (a.id != question.accepted_answer_id, -a.score, a.row))


def _normal_key(key: str) -> str:
    # "PostTypeId" (Posts.xml, Stack Exchange API-ish JSON) and "post_type_id" (BigQuery) -> "posttypeid"
    return key.replace("_", "").lower()


def _as_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _as_tags(value: Any) -> str:
    if isinstance(value, list):
        return "".join(f"<{t}>" for t in value)
    value = str(value or "")
    if value and not value.startswith("<"):  # BigQuery's "python|pandas"
        return "".join(f"<{t}>" for t in value.split("|") if t)
    return value


_EXTRA_FIELDS = {"creationdate": "creation_date", "viewcount": "view_count", "answercount": "answer_count",
                 "closeddate": "closed_date", "favoritecount": "favorite_count", "commentcount": "comment_count"}


def parse_post(fields: dict[str, Any], row: int) -> Post:
    """A post from Posts.xml attributes or a JSON row (either naming style); ValueError if unusable."""
    f = {_normal_key(k): v for k, v in fields.items()}
    post_id = _as_int(f.get("id"))
    if post_id is None:
        raise ValueError("no Id")
    post_type = _as_int(f.get("posttypeid"))
    if post_type is None:  # BigQuery splits questions and answers into tables without the type column
        post_type = ANSWER if f.get("parentid") not in (None, "") else QUESTION
    return Post(
        id=post_id,
        post_type=post_type,
        row=row,
        score=_as_int(f.get("score")) or 0,
        parent_id=_as_int(f.get("parentid")),
        accepted_answer_id=_as_int(f.get("acceptedanswerid")),
        title=str(f.get("title") or ""),
        tags=_as_tags(f.get("tags")),
        text=post_html_to_text(str(f.get("body") or "")) if post_type in (QUESTION, ANSWER) else "",
        extra={name: f[key] for key, name in _EXTRA_FIELDS.items() if f.get(key) not in (None, "")},
    )


@dataclass(frozen=True)
class StackOverflowReader(Reader):
    """Posts.xml (optionally gzipped) or JSON/JSONL rows of posts -> one document per question thread.

    `site` names the Stack Exchange site in ids and URLs; by default the file's folder name
    (dumps unpack as `<site>/Posts.xml`, e.g. `coffee.stackexchange.com/Posts.xml`).
    """

    source: ClassVar[str] = "stackoverflow"
    domain: ClassVar[str] = "stackoverflow"

    site: str | None = None

    def read(self, path: str) -> Iterator[ReadResult]:
        path = os.fspath(path)
        require_file(path)
        rows = self._xml_rows if _looks_like_xml(path) else self._json_rows
        site = self.site or os.path.basename(os.path.dirname(os.path.abspath(path))) or "stackexchange"
        yield from self._join_threads(path, site, lambda: rows(path))

    # -- the two passes ---------------------------------------------------------------------
    def _join_threads(self, path: str, site: str,
                      rows: Callable[[], Iterator[tuple[int, dict[str, Any] | BadDocument]]]) -> Iterator[ReadResult]:
        expected = Counter()  # question id -> number of answers in this file
        for _, fields in rows():
            parent = _parent_id(fields) if isinstance(fields, dict) else None
            if parent is not None:
                expected[parent] += 1

        questions: dict[int, Post] = {}  # open threads: question seen, answers still to come
        answers: dict[int, list[Post]] = {}  # answers whose thread is still open, by question id
        for row, fields in rows():
            if isinstance(fields, BadDocument):
                yield fields
                continue
            try:
                post = parse_post(fields, row)
            except (TypeError, ValueError) as err:
                yield BadDocument(path, row, "bad-post", f"unusable post: {err}")
                continue
            if post.post_type == QUESTION:
                questions[post.id] = post
                thread_id = post.id
            elif post.post_type == ANSWER and post.parent_id is not None:
                answers.setdefault(post.parent_id, []).append(post)
                thread_id = post.parent_id
            else:
                yield BadDocument(path, row, "not-qa-post", f"PostTypeId={post.post_type} (only questions and answers become documents)")
                continue
            if thread_id in questions and len(answers.get(thread_id, ())) >= expected.get(thread_id, 0):
                yield self._thread_document(path, site, questions.pop(thread_id), answers.pop(thread_id, []))
        # Threads the counts did not close (the file changed between passes) and answers without their question.
        for question in questions.values():
            yield self._thread_document(path, site, question, answers.pop(question.id, []))
        for orphans in answers.values():
            for answer in orphans:
                yield BadDocument(path, answer.row, "orphan-answer", f"answer {answer.id} to question {answer.parent_id}, which is not in this file")

    def _thread_document(self, path: str, site: str, question: Post, answers: list[Post]) -> ReadResult:
        text = render_thread(question, answers)
        url = f"https://{site}/questions/{question.id}" if "." in site else None
        metadata = {"site": site, "question_id": question.id, "title": question.title, "score": question.score,
                    "tags": re.findall(r"<([^>]+)>", question.tags), "answers": len(answers),
                    "accepted_answer_id": question.accepted_answer_id, **question.extra}
        return self.make(id=f"{site}:{question.id}", text=text, shard=path, row=question.row, url=url, metadata=metadata)

    # -- row sources ------------------------------------------------------------------------
    def _xml_rows(self, path: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """Posts.xml rows as attribute dicts, parsed incrementally; elements are freed as we go."""
        row = -1
        with open_maybe_gzip(path) as stream:
            try:
                events = ET.iterparse(stream, events=("start", "end"))
                _, root = next(events)
                for event, elem in events:
                    if event == "end" and elem.tag == "row":
                        row += 1
                        yield row, dict(elem.attrib)
                        root.clear()  # drop every finished row so memory does not grow with the file
            except ET.ParseError as err:
                line, column = err.position
                raise ShardError(path, f"malformed XML at line {line}, column {column}: {err.msg if hasattr(err, 'msg') else err}",
                                 row=row + 1) from err
            except (OSError, EOFError) as err:
                raise ShardError(path, f"unreadable data ({err})", row=row + 1) from err

    def _json_rows(self, path: str) -> Iterator[tuple[int, dict[str, Any] | BadDocument]]:
        if _is_json_array(path):
            yield from _json_array_rows(path)
        else:
            yield from iter_json_lines(path, self.max_bytes)


def _parent_id(fields: dict[str, Any]) -> int | None:
    for key, value in fields.items():
        if _normal_key(key) == "parentid":
            try:
                return _as_int(value)
            except (TypeError, ValueError):
                return None  # reported as a bad post in the second pass
    return None


def _looks_like_xml(path: str) -> bool:
    with open_maybe_gzip(path) as stream:
        head = stream.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"<")


def _is_json_array(path: str) -> bool:
    with open_maybe_gzip(path) as stream:
        head = stream.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_array_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | BadDocument]]:
    """A JSON array of post objects (loaded whole: JSON arrays cannot be streamed with the stdlib)."""
    with open_maybe_gzip(path) as stream:
        try:
            items = json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ShardError(path, f"invalid JSON ({err})") from err
    for row, item in enumerate(items):
        if isinstance(item, dict):
            yield row, item
        else:
            yield row, BadDocument(path, row, "invalid-json", f"an array item is a {type(item).__name__}, not an object")
