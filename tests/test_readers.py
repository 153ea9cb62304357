"""Readers: every format on small files built here, every bad-input case, and the shared real data."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from edufilter.documents import BadDocument, Document, documents_to_table
from edufilter.readers import (
    DEFAULT_MAX_BYTES, READERS, ShardError, detect_source, expand_paths, read_documents, read_shard, render_thread,
)
from edufilter.readers.stackoverflow import Post, post_html_to_text

ARTICLE = (
    "<html><head><title>Photosynthesis</title></head><body>"
    "<nav><a href='/'>Home</a> | <a href='/about'>About</a></nav>"
    "<article><h1>How photosynthesis works</h1>"
    "<p>Photosynthesis is the process by which green plants turn light energy into chemical energy. "
    "Chlorophyll in the chloroplasts absorbs mostly red and blue light and reflects green.</p>"
    "<p>In the light-dependent reactions, water is split and oxygen is released, while ATP and NADPH "
    "carry the captured energy to the Calvin cycle, which fixes carbon dioxide into sugars.</p>"
    "</article><footer>Copyright 2024 Example Corp. All rights reserved.</footer></body></html>"
)


def docs_and_bad(items) -> tuple[list[Document], list[BadDocument]]:
    items = list(items)
    return [d for d in items if isinstance(d, Document)], [b for b in items if isinstance(b, BadDocument)]


def write_parquet(path: Path, rows: list[dict], schema: pa.Schema | None = None, **kwargs) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, **kwargs)
    return path


def refinedweb_rows(n: int) -> list[dict]:
    return [{"content": f"Document number {i} about the water cycle.", "url": f"https://example.org/{i}",
             "timestamp": None, "dump": "CC-MAIN-2023-06", "segment": "1674764499890.39", "image_urls": [[]]}
            for i in range(n)]


def stack_row(path: str, lang: str, content: str) -> dict:
    return {"hexsha": "ab" * 20, "size": len(content), "ext": path.rsplit(".", 1)[-1], "lang": lang,
            "max_stars_repo_path": path, "max_stars_repo_name": "octo/repo", "max_stars_repo_licenses": ["MIT"],
            "max_stars_count": 3, "content": content, "avg_line_length": 10.0, "max_line_length": 20,
            "alphanum_fraction": 0.7}


# --------------------------------------------------------------------------------------------- parquet
def test_refinedweb_parquet_streams_batches_with_provenance(tmp_path):
    path = write_parquet(tmp_path / "refinedweb-00000.parquet", refinedweb_rows(5))
    docs = list(read_documents("refinedweb", path, batch_size=2))
    assert [d.id for d in docs] == [f"refinedweb-00000.parquet:{i}" for i in range(5)]
    assert [d.row for d in docs] == list(range(5))
    first = docs[0]
    assert (first.source, first.domain, first.url, first.shard) == ("refinedweb", "web", "https://example.org/0", str(path))
    assert first.metadata["dump"] == "CC-MAIN-2023-06" and first.metadata["segment"] == "1674764499890.39"
    assert documents_to_table(docs).num_rows == 5  # metadata (timestamps, lists) serialises into the record


def test_fineweb_parquet_keeps_its_ids(tmp_path):
    rows = [{"text": "Cells divide by mitosis.", "id": "<urn:uuid:1>", "dump": "CC-MAIN-2024-10",
             "url": "https://bio.example/cells", "date": "2024-02-20", "language": "en", "language_score": 0.97,
             "token_count": 6}]
    (doc,) = read_documents("fineweb", write_parquet(tmp_path / "000_00000.parquet", rows))
    assert (doc.id, doc.url, doc.source, doc.domain) == ("<urn:uuid:1>", "https://bio.example/cells", "fineweb", "web")
    assert doc.metadata["language_score"] == 0.97


def test_the_stack_language_filter_and_repo_path(tmp_path):
    rows = [stack_row("src/a.py", "Python", "def area(r):\n    return 3.14159 * r * r\n"),
            stack_row("src/b.c", "C", "int main(void) { return 0; }\n"),
            stack_row("src/c.py", "Python", "print('hello')\n")]
    path = write_parquet(tmp_path / "the-stack.parquet", rows)
    everything = list(read_documents("the-stack", path))
    assert [d.metadata["lang"] for d in everything] == ["Python", "C", "Python"]
    python = list(read_documents("the-stack", path, languages=("python",)))
    assert [(d.url, d.row) for d in python] == [("octo/repo/src/a.py", 0), ("octo/repo/src/c.py", 2)]
    assert {d.domain for d in python} == {"code"}
    assert [d.row for d in read_documents("the-stack", path, languages="C")] == [1]  # one string = one language


# --------------------------------------------------------------------------------------------- Stack Exchange
POSTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="3" PostTypeId="2" ParentId="1" Score="2" Body="&lt;p&gt;Low answer, before its question.&lt;/p&gt;" />
  <row Id="1" PostTypeId="1" AcceptedAnswerId="4" Score="5" Title="How do I reverse a list?" Tags="&lt;python&gt;&lt;list&gt;" Body="&lt;p&gt;I have &lt;code&gt;xs&lt;/code&gt; &amp;amp; want it reversed.&lt;/p&gt;&#xA;&#xA;&lt;pre&gt;&lt;code&gt;xs = [1, 2, 3]&#xA;print(xs)&#xA;&lt;/code&gt;&lt;/pre&gt;&#xA;" AnswerCount="3" CreationDate="2015-01-27T20:09:32.720" />
  <row Id="2" PostTypeId="1" Score="0" Title="Unanswered?" Tags="&lt;misc&gt;" Body="&lt;p&gt;Nobody answers this.&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="1" Score="1" Body="&lt;blockquote&gt;&#xA;  &lt;p&gt;quoted&lt;/p&gt;&#xA;&lt;/blockquote&gt;&#xA;&#xA;&lt;p&gt;Use &lt;code&gt;xs[::-1]&lt;/code&gt;.&lt;/p&gt;" />
  <row Id="5" PostTypeId="2" ParentId="1" Score="9" Body="&lt;ul&gt;&#xA;&lt;li&gt;one&lt;/li&gt;&#xA;&lt;li&gt;two&lt;br&gt;&#xA;lines&lt;/li&gt;&#xA;&lt;/ul&gt;" />
  <row Id="6" PostTypeId="5" Body="&lt;p&gt;A tag wiki.&lt;/p&gt;" />
  <row Id="7" PostTypeId="2" ParentId="99" Score="1" Body="&lt;p&gt;Orphan.&lt;/p&gt;" />
</posts>
"""

THREAD_1 = (
    "Title: How do I reverse a list?\nTags: <python><list>\nScore: 5\n\n"
    "I have xs & want it reversed.\n\n```\nxs = [1, 2, 3]\nprint(xs)\n\n```"
    "\n\n--- Answer (score 1, accepted) ---\nquoted\n\nUse xs[::-1]."
    "\n\n--- Answer (score 9) ---\none\n\ntwo\n\nlines"
    "\n\n--- Answer (score 2) ---\nLow answer, before its question."
)


def posts_file(tmp_path: Path, text: str = POSTS_XML, site: str = "cooking.stackexchange.com") -> Path:
    folder = tmp_path / site
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Posts.xml").write_text(text, encoding="utf-8")
    return folder / "Posts.xml"


def test_posts_xml_joins_threads_in_the_seed_layout(tmp_path):
    docs, bad = docs_and_bad(read_documents("stackoverflow", posts_file(tmp_path)))
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {"cooking.stackexchange.com:1", "cooking.stackexchange.com:2"}
    thread = by_id["cooking.stackexchange.com:1"]
    assert thread.text == THREAD_1
    assert (thread.domain, thread.source, thread.row) == ("stackoverflow", "stackoverflow", 1)
    assert thread.url == "https://cooking.stackexchange.com/questions/1"
    assert thread.metadata["tags"] == ["python", "list"] and thread.metadata["answers"] == 3
    # a question without answers is still a document
    assert by_id["cooking.stackexchange.com:2"].text == "Title: Unanswered?\nTags: <misc>\nScore: 0\n\nNobody answers this."
    assert sorted((b.reason, b.row) for b in bad) == [("not-qa-post", 5), ("orphan-answer", 6)]


def test_posts_as_json_rows_give_the_same_threads(tmp_path):
    import xml.etree.ElementTree as ET

    rows = [dict(e.attrib) for e in ET.fromstring(POSTS_XML.split("\n", 1)[1])]
    folder = tmp_path / "cooking.stackexchange.com"
    folder.mkdir()
    (folder / "posts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "posts.json").write_text(json.dumps(rows))
    for name in ("posts.jsonl", "posts.json"):
        assert detect_source(folder / name) == "stackoverflow"
        docs, _ = docs_and_bad(read_documents("auto", folder / name))
        assert {d.id: d.text for d in docs}["cooking.stackexchange.com:1"] == THREAD_1


def test_bigquery_style_rows_with_snake_case_keys(tmp_path):
    rows = [{"id": 10, "title": "Pandas merge?", "body": "<p>How?</p>", "tags": "python|pandas", "score": 3,
             "accepted_answer_id": 11, "post_type_id": 1},
            {"id": 11, "parent_id": 10, "body": "<p>Use <code>pd.merge</code>.</p>", "score": 4, "post_type_id": 2}]
    path = tmp_path / "so" / "posts.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (doc,) = read_documents("stackoverflow", path, site="stackoverflow.com")
    assert doc.text == ("Title: Pandas merge?\nTags: <python><pandas>\nScore: 3\n\nHow?\n\n"
                        "--- Answer (score 4, accepted) ---\nUse pd.merge.")
    assert doc.id == "stackoverflow.com:10"


def test_render_thread_orders_accepted_then_score_then_file_order():
    question = Post(id=1, post_type=1, row=0, score=1, accepted_answer_id=30, title="T", tags="<t>", text="Q")
    answers = [Post(id=i, post_type=2, row=i, score=s, parent_id=1, text=f"a{i}")
               for i, s in ((10, 5), (20, 7), (30, 0), (40, 5))]
    order = [line for line in render_thread(question, answers).splitlines() if line.startswith("--- ")]
    assert order == ["--- Answer (score 0, accepted) ---", "--- Answer (score 7) ---",
                     "--- Answer (score 5) ---", "--- Answer (score 5) ---"]
    assert render_thread(question, answers).index("a10") < render_thread(question, answers).index("a40")


def test_post_html_keeps_code_blocks_verbatim():
    html = "<p>Run:</p>\n\n<pre><code>for i in range(3):\n    print(i &lt; 2)\n</code></pre>\n"
    assert post_html_to_text(html) == "Run:\n\n```\nfor i in range(3):\n    print(i < 2)\n\n```"


# --------------------------------------------------------------------------------------------- HTML, WARC
def test_html_files_plain_and_gzipped_keep_canonical_url(tmp_path):
    page = ARTICLE.replace("<head>", "<head><link rel='canonical' href='https://plants.example/photo'>")
    (tmp_path / "a.html").write_text(page)
    (tmp_path / "b.htm.gz").write_bytes(gzip.compress(ARTICLE.encode()))
    docs = list(read_documents("auto", tmp_path))
    assert [(d.id, d.url, d.source) for d in docs] == [("a.html:0", "https://plants.example/photo", "html"),
                                                      ("b.htm.gz:0", None, "html")]
    assert all("Calvin cycle" in d.text and "All rights reserved" not in d.text for d in docs)


def test_html_in_a_declared_legacy_charset_is_decoded(tmp_path):
    page = ARTICLE.replace("<head>", '<head><meta charset="iso-8859-1">').replace(
        "green plants", "grüne Pflanzen (green plants)")
    (tmp_path / "latin1.html").write_bytes(page.encode("latin-1"))
    (doc,) = read_documents("html", tmp_path / "latin1.html")
    assert "grüne Pflanzen" in doc.text and "\ufffd" not in doc.text


def make_warc(path: Path, records: list[tuple[str, str, bytes, str]], gzip_records: bool = True) -> Path:
    """records: (uri, content type, payload, HTTP status line)."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as sink:
        writer = WARCWriter(sink, gzip=gzip_records)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "edufilter-tests"}))
        for uri, content_type, payload, status in records:
            writer.write_record(writer.create_warc_record(uri, "request", payload=io.BytesIO(b"GET / HTTP/1.1\r\n\r\n")))
            headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(uri, "response", payload=io.BytesIO(payload),
                                                          http_headers=headers))
    return path


WARC_RECORDS = [
    ("https://plants.example/photo", "text/html; charset=utf-8", ARTICLE.encode(), "200 OK"),
    ("https://plants.example/logo.png", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64), "200 OK"),
    ("https://plants.example/gone", "text/html", b"<html><body>Not found</body></html>", "404 Not Found"),
    ("https://plants.example/empty", "text/html", b"   ", "200 OK"),
]


@pytest.mark.parametrize("gzip_records", [True, False])
def test_warc_html_responses_become_documents_and_other_records_are_counted(tmp_path, gzip_records):
    name = "crawl.warc.gz" if gzip_records else "crawl.warc"
    path = make_warc(tmp_path / name, WARC_RECORDS, gzip_records)
    assert detect_source(path) == "warc"
    docs, bad = docs_and_bad(read_documents("warc", path))
    (doc,) = docs
    assert doc.url == "https://plants.example/photo" and doc.id.startswith("<urn:uuid:")
    assert "light-dependent reactions" in doc.text and doc.metadata["warc_type"] == "response"
    assert sorted(b.reason for b in bad) == ["empty-text", "http-status", "not-html"]
    assert all(b.shard == str(path) and b.row > 0 for b in bad)


# --------------------------------------------------------------------------------------------- JSONL
def test_jsonl_plain_and_gzipped_with_optional_fields(tmp_path):
    lines = [{"text": "Fractions compare parts of a whole.", "id": "m-1", "url": "https://math.example/f"},
             {"text": "def f(): pass", "domain": "code"},
             {"text": "No id here.", "metadata": {"url": "https://meta.example/u", "lang": "en"}, "source": "cc"}]
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"  # a trailing blank line is not a document
    (tmp_path / "a.jsonl").write_text(body)
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(body.encode()))
    docs = list(read_documents("jsonl", sorted(tmp_path.iterdir())))
    assert [d.id for d in docs] == ["m-1", "a.jsonl:1", "a.jsonl:2", "m-1", "b.json.gz:1", "b.json.gz:2"]
    assert [d.domain for d in docs[:3]] == ["web", "code", "web"]
    assert docs[2].url == "https://meta.example/u" and docs[2].metadata == {"url": "https://meta.example/u",
                                                                              "lang": "en", "source": "cc"}


# --------------------------------------------------------------------------------------------- paths, sharding, auto
def test_files_are_dealt_round_robin_over_ranks(tmp_path):
    for i in range(5):
        write_parquet(tmp_path / f"part-{i}.parquet", refinedweb_rows(2))
    shares = [[d.shard for d in read_documents("refinedweb", tmp_path, rank=r, world_size=2)] for r in range(2)]
    names = [sorted({Path(s).name for s in share}) for share in shares]
    assert names == [["part-0.parquet", "part-2.parquet", "part-4.parquet"], ["part-1.parquet", "part-3.parquet"]]
    assert len(shares[0]) + len(shares[1]) == 10
    assert list(read_documents("refinedweb", tmp_path, rank=4, world_size=5))[0].shard.endswith("part-4.parquet")


def test_expand_paths_sorts_dirs_globs_and_lists(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.jsonl", "a.parquet", "sub/c.html.gz", ".hidden.jsonl", "notes.txt", "_SUCCESS"):
        (tmp_path / name).write_text("x")
    expected = [str(tmp_path / n) for n in ("a.parquet", "b.jsonl", "sub/c.html.gz")]
    assert expand_paths(tmp_path) == expected
    assert expand_paths(str(tmp_path / "**" / "*.*z")) == [str(tmp_path / "sub/c.html.gz")]
    assert expand_paths([tmp_path / "b.jsonl", str(tmp_path), tmp_path / "notes.txt"]) == sorted(
        expected + [str(tmp_path / "notes.txt")])


def test_auto_detects_each_format_from_the_files(tmp_path):
    write_parquet(tmp_path / "rw.parquet", refinedweb_rows(1))
    write_parquet(tmp_path / "fw.parquet", [{"text": "t", "id": "x", "url": "u", "dump": "d"}])
    write_parquet(tmp_path / "stack.parquet", [stack_row("a.py", "Python", "x = 1\n")])
    (tmp_path / "Posts.xml").write_text(POSTS_XML)
    (tmp_path / "page.html").write_text(ARTICLE)
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "hello"}) + "\n")
    make_warc(tmp_path / "c.warc.gz", WARC_RECORDS[:1])
    detected = {p.name: detect_source(p) for p in tmp_path.iterdir()}
    assert detected == {"rw.parquet": "refinedweb", "fw.parquet": "fineweb", "stack.parquet": "the-stack",
                        "Posts.xml": "stackoverflow", "page.html": "html", "docs.jsonl": "jsonl",
                        "c.warc.gz": "warc"}
    sources = Counter(d.source for d in read_documents("auto", tmp_path, languages=("Python",))
                      if isinstance(d, Document))
    assert sources == {"refinedweb": 1, "fineweb": 1, "the-stack": 1, "stackoverflow": 2, "html": 1, "jsonl": 1,
                       "warc": 1}
    assert set(READERS) == {"refinedweb", "fineweb", "the-stack", "stackoverflow", "html", "warc", "jsonl"}


def test_bad_arguments_fail_at_the_call(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", refinedweb_rows(1))
    with pytest.raises(ValueError, match="unknown source 'refineweb'"):
        read_documents("refineweb", path)
    with pytest.raises(ValueError, match="does not take option.*languages"):
        read_documents("refinedweb", path, languages=("Python",))
    with pytest.raises(ValueError, match="no reader takes option.*langauges"):
        read_documents("auto", path, langauges=("Python",))
    with pytest.raises(ValueError, match="no reader takes option.*langauges"):
        read_shard("auto", path, langauges=("Python",))
    with pytest.raises(ValueError, match="rank"):
        read_documents("refinedweb", path, rank=2, world_size=2)
    with pytest.raises(ValueError, match="max_bytes"):
        read_documents("jsonl", path, max_bytes=0)


# --------------------------------------------------------------------------------------------- bad input
def test_missing_file_names_it_at_the_call(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(ShardError, match=r"nope\.parquet: no such file") as err:
        read_documents("refinedweb", missing)
    assert err.value.path == str(missing) and isinstance(err.value, ValueError)
    with pytest.raises(ShardError, match="matches no files"):
        read_documents("auto", str(tmp_path / "*.parquet"))
    with pytest.raises(ShardError, match="no such file"):
        list(read_shard("jsonl", missing))


def test_truncated_and_unreadable_parquet_name_the_file(tmp_path):
    good = write_parquet(tmp_path / "good.parquet", refinedweb_rows(50))
    data = good.read_bytes()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.parquet").write_bytes(b"this is not parquet at all" * 10)
    for name in ("truncated.parquet", "garbage.parquet"):
        with pytest.raises(ShardError, match=rf"{name}: not a readable parquet file"):
            list(read_documents("refinedweb", tmp_path / name))


def test_corrupt_row_group_names_file_and_row(tmp_path):
    path = write_parquet(tmp_path / "corrupt.parquet", refinedweb_rows(400), row_group_size=100, compression="none")
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    column = meta.row_group(2).column(0)  # the content column chunk of rows 200-299
    start = column.data_page_offset
    data[start: start + column.total_compressed_size] = b"\xff" * column.total_compressed_size
    path.write_bytes(bytes(data))
    items = []
    with pytest.raises(ShardError, match=r"corrupt\.parquet \(row 200\): unreadable parquet data"):
        for item in read_documents("refinedweb", path, batch_size=100):
            items.append(item)
    assert len(items) == 200  # everything before the damaged row group came through


def test_parquet_without_the_expected_column(tmp_path):
    path = write_parquet(tmp_path / "wrong.parquet", [{"body": "x", "url": "u"}])
    with pytest.raises(ShardError, match=r"wrong\.parquet: missing column\(s\) content .*the file has: body, url"):
        list(read_documents("refinedweb", path))
    stack = write_parquet(tmp_path / "nolang.parquet", [{"content": "x = 1"}])
    with pytest.raises(ShardError, match="missing column.*lang"):
        list(read_documents("the-stack", stack))
    (tmp_path / "wrong.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ShardError, match=r"wrong\.jsonl \(row 0\): no 'text' field; the object has: body"):
        list(read_documents("jsonl", tmp_path / "wrong.jsonl"))
    (tmp_path / "array.json").write_text('[{"text": "x"}]')
    with pytest.raises(ShardError, match=r"array\.json: a JSON array, not JSON Lines"):
        list(read_documents("jsonl", tmp_path / "array.json"))


def test_malformed_xml_fails_before_any_thread_is_yielded(tmp_path):
    broken = POSTS_XML.replace('<row Id="5"', '<row Id="5" Score="1 />\n<oops')
    path = posts_file(tmp_path, broken)
    items = []
    with pytest.raises(ShardError, match=r"Posts\.xml \(row \d\): malformed XML at line \d+, column \d+"):
        for item in read_documents("stackoverflow", path):
            items.append(item)
    assert items == []  # the first pass reads the whole file, so nothing half-joined came out


def test_non_utf8_bytes(tmp_path):
    # JSONL: one undecodable line is one bad document; the other lines go on
    lines = [json.dumps({"text": "first"}).encode(), b'{"text": "caf\xe9 au lait"}', json.dumps({"text": "third"}).encode()]
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, bad = docs_and_bad(read_documents("jsonl", tmp_path / "mixed.jsonl"))
    assert [d.text for d in docs] == ["first", "third"]
    assert [(b.reason, b.row) for b in bad] == [("not-utf8", 1)] and "byte 13" in bad[0].detail
    # parquet with a binary text column: decoded strictly, per row
    table = pa.table({"content": pa.array([b"ok text", b"\xff\xfe broken"], pa.binary()), "url": ["u0", "u1"]})
    pq.write_table(table, tmp_path / "binary.parquet")
    docs, bad = docs_and_bad(read_documents("refinedweb", tmp_path / "binary.parquet"))
    assert [d.text for d in docs] == ["ok text"] and [(b.reason, b.row) for b in bad] == [("not-utf8", 1)]
    # Posts.xml declares UTF-8: stray bytes make the whole file malformed, named with its line
    path = posts_file(tmp_path, "")
    path.write_bytes(POSTS_XML.encode().replace(b"Unanswered?", b"Unanswered\xff?"))
    with pytest.raises(ShardError, match=r"malformed XML at line 5"):
        list(read_documents("stackoverflow", path))
    # HTML carries its own charset: undeclared cp1252 bytes are guessed, not rejected
    page = ARTICLE.replace("green plants", "plants \u2013 \u201cgreen\u201d").encode("cp1252")
    (tmp_path / "cp1252.html").write_bytes(page)
    (doc,) = read_documents("html", tmp_path / "cp1252.html")
    assert "plants \u2013 \u201cgreen\u201d" in doc.text


def test_empty_and_whitespace_documents_are_counted(tmp_path):
    rows = refinedweb_rows(4)
    rows[1]["content"], rows[2]["content"] = "", " \n\t "
    docs, bad = docs_and_bad(read_documents("refinedweb", write_parquet(tmp_path / "rw.parquet", rows)))
    assert [d.row for d in docs] == [0, 3]
    assert [(b.reason, b.row, b.shard) for b in bad] == [("empty-text", 1, str(tmp_path / "rw.parquet")),
                                                       ("empty-text", 2, str(tmp_path / "rw.parquet"))]
    (tmp_path / "e.jsonl").write_text('{"text": "a"}\n{"text": "   "}\n{"text": null}\nnot json\n{"id": 5}\n[1]\n')
    docs, bad = docs_and_bad(read_documents("jsonl", tmp_path / "e.jsonl"))
    assert [d.text for d in docs] == ["a"]
    assert [(b.reason, b.row) for b in bad] == [("empty-text", 1), ("missing-text", 2), ("invalid-json", 3),
                                               ("missing-text", 4), ("invalid-json", 5)]
    (tmp_path / "blank.html").write_text("  \n ")
    assert [b.reason for b in read_documents("html", tmp_path / "blank.html")] == ["empty-text"]
    (tmp_path / "chrome.html").write_text("<html><head><script>var x = 1;</script></head><body></body></html>")
    assert [b.reason for b in read_documents("html", tmp_path / "chrome.html")] == ["no-text-extracted"]


FIFTY_MB = 50 * 1024 * 1024


def test_a_50_mb_document_is_recorded_and_the_shard_goes_on(tmp_path):
    assert DEFAULT_MAX_BYTES < FIFTY_MB
    big = "Lorem ipsum dolor sit amet. " * (FIFTY_MB // 28 + 1)
    rows = refinedweb_rows(3)
    rows[1]["content"] = big
    docs, bad = docs_and_bad(read_documents("refinedweb", write_parquet(tmp_path / "big.parquet", rows)))
    assert [d.row for d in docs] == [0, 2]
    assert [(b.reason, b.row) for b in bad] == [("too-large", 1)] and "max_bytes=10,000,000" in bad[0].detail
    # JSONL: the long line is skipped without being decoded or parsed
    with open(tmp_path / "big.jsonl", "w") as sink:
        sink.write(json.dumps({"text": "before"}) + "\n" + json.dumps({"text": big}) + "\n")
        sink.write(json.dumps({"text": "after"}) + "\n")
    items = list(read_documents("jsonl", tmp_path / "big.jsonl"))
    assert [getattr(i, "text", None) or i.reason for i in items] == ["before", "too-large", "after"]
    # a 50 MB page is not handed to the HTML parser
    (tmp_path / "big.html").write_text(f"<html><body><p>{big}</p></body></html>")
    assert [b.reason for b in read_documents("html", tmp_path / "big.html")] == ["too-large"]
    # the limit is an option
    small = [i.reason for i in read_documents("jsonl", tmp_path / "big.jsonl", max_bytes=5) if isinstance(i, BadDocument)]
    assert small == ["too-large"] * 3


def test_truncated_gzip_and_warc_name_the_file(tmp_path):
    body = "".join(json.dumps({"text": f"line {i} " * 50}) + "\n" for i in range(2000))
    data = gzip.compress(body.encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match=r"cut\.jsonl\.gz \(row \d+\): unreadable data"):
        list(read_documents("jsonl", tmp_path / "cut.jsonl.gz"))
    for gzip_records in (True, False):
        warc = make_warc(tmp_path / "whole.warc", WARC_RECORDS[:1] * 3, gzip_records).read_bytes()
        (tmp_path / "cut.warc").write_bytes(warc[:-60])
        with pytest.raises(ShardError, match=r"cut\.warc.*truncated"):
            list(read_documents("warc", tmp_path / "cut.warc"))
    (tmp_path / "junk.warc").write_bytes(b"not a warc file\r\n" * 4)
    with pytest.raises(ShardError, match=r"junk\.warc.*unreadable WARC data"):
        list(read_documents("warc", tmp_path / "junk.warc"))


def test_a_bad_shard_can_be_recorded_while_the_others_go_on(tmp_path):
    write_parquet(tmp_path / "a.parquet", refinedweb_rows(2))
    (tmp_path / "b.parquet").write_bytes(b"PAR1 broken")
    write_parquet(tmp_path / "c.parquet", refinedweb_rows(2))
    with pytest.raises(ShardError, match=r"b\.parquet"):
        list(read_documents("refinedweb", tmp_path))
    docs, bad = docs_and_bad(read_documents("refinedweb", tmp_path, on_shard_error="record"))
    assert len(docs) == 4
    assert [(Path(b.shard).name, b.reason) for b in bad] == [("b.parquet", "bad-shard")]


def test_shard_error_survives_pickling():
    err = pickle.loads(pickle.dumps(ShardError("/data/x.parquet", "missing column(s) content", row=7)))
    assert (err.path, err.reason, err.row, str(err)) == (
        "/data/x.parquet", "missing column(s) content", 7, "/data/x.parquet (row 7): missing column(s) content")


# --------------------------------------------------------------------------------------------- shared real data
@pytest.mark.shared
def test_stackexchange_dumps_reproduce_the_seed_texts_exactly(shared):
    corpus = shared / "corpus"
    texts = {}
    for site in ("coffee_se", "quantumcomputing_se"):
        for item in read_documents("stackoverflow", corpus / "stackoverflow" / site / "Posts.xml"):
            if isinstance(item, Document):
                texts[item.id] = item.text
    assert sum(1 for i in texts if i.startswith("coffee_se:")) == 180
    assert sum(1 for i in texts if i.startswith("quantumcomputing_se:")) == 490
    seed = [json.loads(line) for line in open(corpus / "labelled" / "edufilter_seed" / "stackoverflow.jsonl")]
    mismatched = [row["id"] for row in seed
                  if texts.get("{}:{}".format(row["ref"].split("/")[1], row["ref"].rsplit(":", 1)[1])) != row["text"]]
    assert mismatched == [] and len(seed) == 150


@pytest.mark.shared
def test_shared_warc_wet_jsonl_and_html(shared):
    corpus = shared / "corpus"
    whirlwind = corpus / "warc" / "commoncrawl_whirlwind"
    (page,) = read_documents("auto", whirlwind / "whirlwind.warc.gz")
    (wet,) = read_documents("auto", whirlwind / "whirlwind.warc.wet.gz")
    assert page.url == wet.url == "https://an.wikipedia.org/wiki/Escopete"
    assert "Escopete" in page.text and "Escopete" in wet.text and wet.metadata["warc_type"] == "conversion"
    docs, bad = docs_and_bad(read_documents("auto", corpus / "web_text"))
    assert len(docs) >= 500 and {b.reason for b in bad} <= {"empty-text"}
    assert len({d.id for d in docs}) == len(docs)
    pages = sorted((corpus / "web_html" / "dclm_enricher_tests").glob("wikipedia_*"))[:3]
    docs, _ = docs_and_bad(read_documents("html", pages))
    assert len(docs) == 3 and all(len(d.text) > 200 for d in docs)


@pytest.mark.shared
def test_the_stack_shard_built_by_the_shared_script(shared, tmp_path):
    code = shared / "corpus" / "code"
    manifest = tmp_path / "manifest.jsonl"  # the first 80 labelled files keep the build quick
    manifest.write_text("".join((code / "manifest.jsonl").read_text().splitlines(keepends=True)[:80]))
    out = tmp_path / "the-stack.parquet"
    subprocess.run([sys.executable, str(code / "build.py"), str(out), "--manifest", str(manifest)], check=True,
                   capture_output=True)
    assert detect_source(out) == "the-stack"
    everything = [d for d in read_documents("auto", out) if isinstance(d, Document)]
    docs, bad = docs_and_bad(read_documents("auto", out, languages=("Python",)))
    assert 0 < len(docs) < len(everything) and {d.metadata["lang"] for d in docs} == {"Python"}
    assert all(d.url.startswith("python/cpython/") for d in docs) and len({d.id for d in docs}) == len(docs)
    assert {b.reason for b in bad} <= {"empty-text"}  # empty __init__.py files


def test_posts_xml_memory_stays_far_below_the_file_size(tmp_path):
    """Streaming: finished rows are freed and a thread is let go as soon as its last answer is read."""
    import tracemalloc

    folder = tmp_path / "big.stackexchange.com"
    folder.mkdir()
    words = "Words of a fairly ordinary post body, repeated. " * 30
    with open(folder / "Posts.xml", "w") as sink:
        sink.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        for q in range(600):
            qid = 3 * q + 1
            sink.write(f'  <row Id="{qid}" PostTypeId="1" Score="1" Title="Q{q}" Tags="&lt;t&gt;" '
                       f'Body="&lt;p&gt;{words}&lt;/p&gt;" />\n')
            for a in (1, 2):
                sink.write(f'  <row Id="{qid + a}" PostTypeId="2" ParentId="{qid}" Score="{a}" '
                           f'Body="&lt;p&gt;{words}&lt;/p&gt;" />\n')
        sink.write("</posts>\n")
    size = (folder / "Posts.xml").stat().st_size
    tracemalloc.start()
    try:
        threads = sum(1 for item in read_documents("stackoverflow", folder / "Posts.xml") if isinstance(item, Document))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert threads == 600
    assert peak < size / 10, f"peak {peak:,} bytes for a {size:,}-byte file"


@pytest.mark.shared
def test_make_shards_layout_reads_back_in_every_format(shared, tmp_path):
    """bench/make_shards.py on a small corpus laid out like ../shared/corpus (real files, linked)."""
    corpus, mini = shared / "corpus", tmp_path / "shared" / "corpus"
    aeb = mini / "web_html" / "scrapinghub_aeb"
    (aeb / "html").mkdir(parents=True)
    truth = json.loads((corpus / "web_html" / "scrapinghub_aeb" / "ground-truth.json").read_text())
    kept = sorted(p for p in truth if (corpus / "web_html" / "scrapinghub_aeb" / "html" / f"{p}.html.gz").exists())[:3]
    (aeb / "ground-truth.json").write_text(json.dumps({k: truth[k] for k in kept}))
    for page_id in kept:
        (aeb / "html" / f"{page_id}.html.gz").symlink_to(corpus / "web_html" / "scrapinghub_aeb" / "html" / f"{page_id}.html.gz")
    for relative in ("stackoverflow/coffee_se", "warc/commoncrawl_whirlwind", "web_text/ccnet", "code",
                     "labelled/fineweb_edu_classifier_en"):
        (mini / relative).parent.mkdir(parents=True, exist_ok=True)
        (mini / relative).symlink_to(corpus / relative)
    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "make_shards.py"),
                           "--shared", str(mini.parent), "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["refinedweb"]["documents"] == 3
    expected = {"refinedweb": ("refinedweb", 3), "fineweb": ("fineweb", 751), "the-stack": ("the-stack", 519),
                "stackoverflow": ("stackoverflow", 180), "stackoverflow-jsonl": ("stackoverflow", 180),
                "warc": ("warc", 2), "jsonl": ("jsonl", 20)}
    for folder, (source, count) in expected.items():
        docs = [d for d in read_documents("auto", out / folder) if isinstance(d, Document)]
        assert (folder, {d.source for d in docs}, len(docs)) == (folder, {source}, count)
    urls = {d.url for d in read_documents("refinedweb", out / "refinedweb")}
    assert urls == {truth[k]["url"] for k in kept}
    # a rerun keeps what exists
    again = subprocess.run([sys.executable, str(Path(__file__).parents[1] / "bench" / "make_shards.py"),
                            "--shared", str(mini.parent), "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 0 and json.loads((out / "manifest.json").read_text())["refinedweb"]["skipped"] == "exists"


def test_jsonl_rows_are_line_numbers(tmp_path):
    (tmp_path / "gaps.jsonl").write_text('{"text": "a"}\n\n   \n{"text": ""}\n{"text": "b"}\n')
    items = list(read_documents("jsonl", tmp_path / "gaps.jsonl"))
    assert [(type(i).__name__, i.row) for i in items] == [("Document", 0), ("BadDocument", 3), ("Document", 4)]
    assert [i.id for i in items if isinstance(i, Document)] == ["gaps.jsonl:0", "gaps.jsonl:4"]
