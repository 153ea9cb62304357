"""The annotation prompts, their versions, the document truncation and the
answer parser.

One prompt per domain follows the additive 0-5 scale of the project rubric
(shared/labelling/RUBRIC.md) in our own words. The annotator is asked for a
short rationale and then a fixed final line, ``Educational score: N``, which
`parse_response` reads back.

`prompt_version(domain)` is a short hash of everything that decides what the
annotator sees (system text, user template, truncation length), so a label can
always be traced to the exact prompt, and the answer cache never mixes answers
to two different prompts. Changing a single character below changes the
version and invalidates recorded answers: do it deliberately.

Truncation is done here, on characters, before any backend sees the text, so
the OpenAI, transformers and replay backends label exactly the same input:
the first `MAX_DOCUMENT_CHARS` characters (the rubric's "first 4,000
characters"), with a marker line when something was cut.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from edufilter.documents import check_domain

MAX_DOCUMENT_CHARS = 4000
TRUNCATION_MARKER = "\n[... document truncated ...]"
SCORE_LINE_PREFIX = "Educational score:"

_FORMAT_INSTRUCTIONS = """\
How to answer:
- Go through the statements in order and stop at the first one that is false. \
The score is the number of statements that held before that (0 to 5).
- Write a rationale of at most 60 words naming what the document is and which \
statement it stopped at.
- End with exactly one final line, and nothing after it:
Educational score: <an integer from 0 to 5>"""

_SYSTEM = {
    "web": """\
You rate web pages for their educational value to a student anywhere from \
primary school to the first year of university. The score is additive: start \
at 0 and add one point for each statement below that is true.

1. It contains some real information on a subject a person could study \
(science, history, health, practical skills, language, economics, technology), \
even when mixed with navigation, adverts, promotion or chatter.
2. The useful part is substantial: a reader comes away with at least one \
concrete fact, method or idea, even though the page is not written to teach \
(a news report, an opinion piece, a product page with specifications, a forum thread).
3. It is coherent and usable in a lesson: it explains a concept instead of \
only listing facts, and carries little unrelated material.
4. It reads like a textbook section, a good tutorial or an encyclopedia entry: \
clear structure, definitions and examples, accurate and neutral.
5. It is outstanding teaching material: step-by-step reasoning, worked examples \
or exercises, nothing superfluous, pitched at a level a student can follow.

Score 0 for boilerplate, spam, listings, adverts, login or cookie pages, pure \
entertainment or gossip, adult content, link lists and machine-generated text.

""" + _FORMAT_INSTRUCTIONS,
    "code": """\
You rate source files for their value to a student who is learning basic \
programming concepts. The score is additive: start at 0 and add one point for \
each statement below that is true.

1. It is real, valid source code (not data, not a generated table, not a \
licence text or a configuration dump).
2. A reader can tell what it does: meaningful names and some structure.
3. It is largely self-contained and clearly shows a recognisable concept \
(an algorithm, a data structure, an API pattern, control flow).
4. It explains itself: docstrings or comments that teach why and how, and a \
clean split into small functions; it is a good example to imitate.
5. It is of textbook quality: a complete, clear, well-commented illustration \
of a concept that a student could learn from directly.

Score 0 for auto-generated or minified code, huge tables of constants, \
boilerplate-only files and files that are mostly imports or configuration. \
A test file can earn 2 or 3 when it clearly shows how an API is used.

""" + _FORMAT_INSTRUCTIONS,
    "stackoverflow": """\
You rate question-and-answer threads from StackOverflow and other Stack \
Exchange sites for their value to a student learning the site's subject \
(programming for StackOverflow, the site's own topic otherwise). The score is \
additive: start at 0 and add one point for each statement below that is true.

1. It is a genuine question on the site's subject and has at least one answer.
2. The question can be understood without outside context.
3. An answer explains its solution (it is not only a code dump or a link).
4. The explanation generalises: it teaches a concept, a pitfall or an idiom \
that applies beyond the asker's case, and any code is correct and readable.
5. It is reference quality: a clear question with a thorough, correct answer \
that gives reasoning and an example, the kind of post people bookmark.

Score 0 for off-topic posts, spam, "thanks" or "me too" threads, unclear or \
unanswerable questions and answers that are only links.

""" + _FORMAT_INSTRUCTIONS,
}

_DOCUMENT_NOUN = {"web": "web page", "code": "source file", "stackoverflow": "thread"}

_USER_TEMPLATE = """\
Rate this {noun}.

<document>
{document}
</document>"""


def truncate_document(text: str, max_chars: int = MAX_DOCUMENT_CHARS) -> str:
    """The text every backend shows the annotator: the first `max_chars` characters, marked when cut."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + TRUNCATION_MARKER


def system_prompt(domain: str) -> str:
    return _SYSTEM[check_domain(domain)]


def user_prompt(domain: str, text: str) -> str:
    return _USER_TEMPLATE.format(noun=_DOCUMENT_NOUN[check_domain(domain)], document=truncate_document(text))


def build_messages(domain: str, text: str) -> list[dict[str, str]]:
    """The chat messages sent for one document (the same for every backend)."""
    return [
        {"role": "system", "content": system_prompt(domain)},
        {"role": "user", "content": user_prompt(domain, text)},
    ]


def prompt_version(domain: str) -> str:
    """Short, stable hash of what decides the annotator's input for `domain`."""
    material = "\x1f".join(
        [system_prompt(domain), _USER_TEMPLATE, _DOCUMENT_NOUN[domain], str(MAX_DOCUMENT_CHARS), TRUNCATION_MARKER]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()[:12]


# "Educational score: 3", "**Educational score:** 3", "educational score : 3/5", ...
_SCORE_LINE = re.compile(r"educational\s+score\s*\**\s*:\s*\**\s*(-?\d+(?:\.\d+)?)(?:\s*/\s*5)?", re.IGNORECASE)
_RATIONALE_PREFIX = re.compile(r"^\s*\**\s*rationale\s*\**\s*:\s*\**\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedAnswer:
    """What a raw annotator answer says: a score 0-5 and rationale, or why it could not be read."""

    score: int | None
    rationale: str
    status: str  # "ok" or "unparseable"
    reason: str = ""  # why it is unparseable: empty-response, no-score-line, score-out-of-range

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def parse_response(raw: str) -> ParsedAnswer:
    """Read the last ``Educational score: N`` line of an answer; everything before it is the rationale."""
    if not raw or not raw.strip():
        return ParsedAnswer(None, "", "unparseable", "empty-response")
    head, _, last_line = raw.rstrip().rpartition("\n")
    if last_line.startswith(SCORE_LINE_PREFIX):  # the format asked for: skip the regex scan (hot path)
        value = last_line[len(SCORE_LINE_PREFIX) :].strip()
        if len(value) == 1 and value in "012345":
            return ParsedAnswer(int(value), _clean_rationale(head), "ok")
    matches = list(_SCORE_LINE.finditer(raw))
    if not matches:
        return ParsedAnswer(None, _clean_rationale(raw), "unparseable", "no-score-line")
    last = matches[-1]
    rationale = _clean_rationale(raw[: last.start()])
    value = float(last.group(1))
    if value != int(value) or not 0 <= value <= 5:
        return ParsedAnswer(None, rationale, "unparseable", "score-out-of-range")
    return ParsedAnswer(int(value), rationale, "ok")


def _clean_rationale(text: str) -> str:
    text = " ".join(text.split())
    # markdown emphasis that wrapped the score line ("**Educational score:** 4") is not rationale
    return _RATIONALE_PREFIX.sub("", text).strip().rstrip("*_# ").strip()


def render_response(rationale: str, score: int) -> str:
    """A raw answer in the exact format the prompts ask for (recorded annotations, test servers)."""
    if not 0 <= int(score) <= 5:
        raise ValueError(f"score must be an integer 0-5, got {score!r}")
    rationale = " ".join(str(rationale).split())
    return f"{rationale}\n{SCORE_LINE_PREFIX} {int(score)}"
