"""The one text normalisation used by training and by every scoring path.

`normalize_text` is applied to a document before any model sees it, in
`classifier.train` (to the labelled texts) and in `Scorer.score` (which the
service, the batch jobs and `edufilter evaluate` all call), so a document
scores the same wherever it is scored.

What it does, in order:

1. refuses anything that is not a `str` (None, NaN, bytes): a missing text is
   a data error, not an empty document;
2. keeps the first `max_chars` characters (stored in model.json; the
   annotator saw the first 4,000 characters of a web page, so the default
   for web is 4,000). Truncating first bounds the cost: a 10 MB document costs
   what a `max_chars` document costs;
3. lower-cases and turns line breaks into spaces, so the text is one line (fastText reads
   one document per line; its own tokenizer splits on the other whitespace and NUL);
4. with `split_punctuation` (TF-IDF models), also turns every whitespace/control character
   into a space and splits punctuation from words (`foo(bar)` -> `foo ( bar )`), so code
   symbols and comment markers become tokens of their own. fastText and embedding models
   skip this step: it costs several times what fastText's prediction costs, and the embedding
   tokenizer splits punctuation itself;
5. with `punctuation_to_space` (fastText on web; the per-domain default is in classifier.train),
   turns every ASCII punctuation character and C0 control into a space instead (`foo(bar).` ->
   `foo bar `). Words with punctuation attached ("energy.", "(see", "example:") make a sparse
   vocabulary that a few hundred labels cannot learn (repeated 5-fold CV on the web seed labels:
   Spearman 0.63 -> 0.66 with the same hyperparameters). It is one C-level `bytes.translate`
   over the UTF-8 form (multi-byte UTF-8 sequences only use bytes >= 0x80, so non-ASCII text
   passes untouched), which costs about what step 3's `str.replace` calls cost, where padding
   punctuation with spaces (regex or `str.translate` with a multi-character table) runs at
   10-20 MB/s, slower than fastText itself.

An empty or whitespace-only document normalises to "" and the Scorer gives
it score 0.0 without asking the model (nothing to read = no educational value).
"""

from __future__ import annotations

import math
import re
import string

# The annotator's view of a web page was its first 4,000 characters; code files and
# StackOverflow threads were read whole, so those keep more (bounded, for cost).
DEFAULT_MAX_CHARS: dict[str, int] = {"web": 4000, "code": 20000, "stackoverflow": 12000}

# Every character fastText treats as a separator, plus the rest of the C0 controls
# and Unicode line/paragraph separators, becomes a plain space.
_SPACE_TABLE = {c: " " for c in list(range(0, 32)) + [0x7F, 0x85, 0xA0, 0x2028, 0x2029]}
# ASCII punctuation (string.punctuation) and the C0 controls/DEL -> space, byte for byte.
_PUNCT_TO_SPACE_BYTES = bytes(
    0x20 if b < 0x20 or b == 0x7F or chr(b) in string.punctuation else b for b in range(256)
)
_PUNCT = re.compile(r"([^\w\s])")
_SPACES = re.compile(r" {2,}")


def normalize_text(
    text: object, max_chars: int, split_punctuation: bool = False, punctuation_to_space: bool = False
) -> str:
    """Return the single-line, lower-cased form of `text[:max_chars]` ("" when nothing is left).

    Raises TypeError for a text that is not a `str` (None, NaN, bytes, numbers).
    """
    if not isinstance(text, str):
        if text is None or (isinstance(text, float) and math.isnan(text)):
            raise TypeError("text is missing (None/NaN)")
        raise TypeError(f"text must be str, not {type(text).__name__}")
    text = text[:max_chars].lower()
    if split_punctuation:
        text = _SPACES.sub(" ", _PUNCT.sub(r" \1 ", text.translate(_SPACE_TABLE)))
    elif punctuation_to_space:
        # surrogatepass: a lone surrogate (invalid, but a legal str) round-trips instead of raising
        text = text.encode("utf-8", "surrogatepass").translate(_PUNCT_TO_SPACE_BYTES).decode("utf-8", "surrogatepass")
        text = text.replace("\u2028", " ").replace("\u2029", " ")
    else:
        text = text.replace("\n", " ").replace("\r", " ").replace("\u2028", " ").replace("\u2029", " ")
    return text.strip()


def normalize_texts(
    texts, max_chars: int, split_punctuation: bool = False, punctuation_to_space: bool = False
) -> list[str]:
    """`normalize_text` over a sequence; a bad entry's error names its position."""
    out = []
    for i, t in enumerate(texts):
        try:
            out.append(normalize_text(t, max_chars, split_punctuation, punctuation_to_space))
        except TypeError as exc:
            raise TypeError(f"texts[{i}]: {exc}") from None
    return out
