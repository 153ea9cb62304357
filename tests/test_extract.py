"""extract_html: the one HTML -> text path (readers, service, jobs)."""

from __future__ import annotations

import codecs
import gzip
import json
import os

import pytest

from edufilter.extract import EXTRACTION, MAX_HTML_BYTES, decode_html, declared_charset, extract_html

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="{charset}"><title>Fractions</title></head>
<body>
<header><nav><a href="/">Home</a> <a href="/shop">Shop</a> <a href="/login">Log in</a></nav></header>
<main><article>
<h1>Adding fractions with unlike denominators</h1>
<p>To add 1/3 and 1/4, first find a common denominator. The least common multiple of 3 and 4 is 12,
so we rewrite 1/3 as 4/12 and 1/4 as 3/12.</p>
<p>Now the denominators match, and we add the numerators: 4/12 + 3/12 = 7/12. The résumé of the
method: common denominator, convert, add the numerators, simplify if you can.</p>
<table><tr><th>Fraction</th><th>Twelfths</th></tr><tr><td>1/3</td><td>4/12</td></tr></table>
</article></main>
<footer>© 2024 Math Corp · Privacy policy · Terms of service</footer>
</body></html>
"""


def page(charset: str = "utf-8") -> str:
    return PAGE.format(charset=charset)


def test_main_text_is_kept_and_boilerplate_dropped():
    text = extract_html(page(), url="https://math.example/fractions")
    assert "least common multiple of 3 and 4 is 12" in text and "4/12 + 3/12 = 7/12" in text
    assert "4/12" in text.split("Twelfths", 1)[1]  # tables are part of the text (include_tables)
    assert "Privacy policy" not in text and "Log in" not in text
    assert text == text.strip()


def test_bytes_and_str_give_the_same_text():
    assert extract_html(page().encode("utf-8")) == extract_html(page())


@pytest.mark.parametrize("charset", ["iso-8859-1", "windows-1252"])
def test_declared_legacy_charset_is_honoured(charset):
    data = page(charset).replace("©", "(c)").replace("·", "-").encode(charset)
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    assert declared_charset(data) == codecs.lookup(charset).name
    assert "résumé" in extract_html(data)


def test_decoding_order_bom_http_header_meta_guess():
    text = "Grüße aus Köln, schöne Straße"
    assert decode_html(codecs.BOM_UTF8 + text.encode()) == text
    assert decode_html(text.encode("utf-16")) == text
    latin = f"<html><head><meta charset='utf-8'></head><body>{text}</body></html>".encode("latin-1")
    assert text in decode_html(latin, http_charset="iso-8859-1")  # the HTTP header beats a wrong <meta>
    assert text in decode_html(latin)  # mislabelled as utf-8: the guesser or cp1252 still reads it
    assert decode_html(b"\x81\x8d\x8f\x90\x9d" * 3)  # bytes undefined even in cp1252 never raise


@pytest.mark.parametrize("nothing", ["", "   \n\t", b"", os.urandom(4096), b"\x00\x01\xff" * 500,
                                     "just a line of text with no markup at all " * 3,
                                     "<html><head><script>var x = 1;</script></head><body></body></html>"])
def test_nothing_extractable_gives_empty_string(nothing):
    assert extract_html(nothing) == ""


def test_bad_arguments():
    with pytest.raises(TypeError, match="str or bytes"):
        extract_html(12345)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="extraction limit"):
        extract_html(b" " * (MAX_HTML_BYTES + 1))


def test_no_state_carries_over_between_calls():
    # trafilatura's own deduplicate=True would drop paragraphs it saw in an earlier page
    assert not EXTRACTION.deduplicate
    first, second = extract_html(page()), extract_html(page())
    assert first == second and "7/12" in second


@pytest.mark.shared
def test_seed_web_texts_are_reproduced_exactly(shared):
    """The classifier is trained on seed texts extracted with these options: scoring must see the same text."""
    corpus = shared / "corpus"
    rows = [json.loads(line) for line in open(corpus / "labelled" / "edufilter_seed" / "web.jsonl")]
    pages = [r for r in rows if ".html" in r["ref"]][:10]
    assert len(pages) == 10
    for row in pages:
        data = (corpus / row["ref"]).read_bytes()
        if row["ref"].endswith(".gz"):
            data = gzip.decompress(data)
        assert extract_html(data) == row["text"], row["ref"]
