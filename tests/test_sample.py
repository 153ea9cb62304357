"""The bundled sample: real formats, readable by edufilter.readers, labels recorded for replay."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from edufilter.documents import BadDocument, Document
from edufilter.readers import read_documents
from edufilter.sample import (
    ANNOTATOR,
    annotation_ref,
    build_sample,
    data_path,
    load_annotations,
    record_annotations,
)

REFINEDWEB_COLUMNS = ["content", "url", "timestamp", "dump", "segment", "image_urls"]
THE_STACK_COLUMNS = {"content", "lang", "max_stars_repo_path", "max_stars_repo_name", "max_stars_repo_licenses",
                     "size", "avg_line_length", "max_line_length", "alphanum_fraction", "hexsha", "ext"}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample(tmp_path_factory.mktemp("sample"))


def documents(source: str, paths) -> list[Document]:
    items = list(read_documents(source, [str(p) for p in paths]))
    bad = [i for i in items if isinstance(i, BadDocument)]
    assert not bad, bad[:3]
    return items


def test_package_data_is_small():
    total = sum(data_path(n).stat().st_size for n in
                ("web.jsonl", "html_pages.jsonl", "code_files.jsonl", "annotations.jsonl", "Posts.xml"))
    assert total < 1_500_000


def test_refinedweb_shards_have_the_real_schema(sample):
    assert len(sample.web) == 2
    rows = 0
    for path in sample.web:
        table = pq.read_table(path)
        assert table.schema.names == REFINEDWEB_COLUMNS
        assert str(table.schema.field("timestamp").type).startswith("timestamp")
        assert all(re.fullmatch(r"CC-MAIN-\d{4}-\d{2}", d) for d in table["dump"].to_pylist())
        rows += table.num_rows
    docs = documents("refinedweb", sample.web)
    assert len(docs) == rows >= 120
    assert all(d.url.startswith("https://") and d.domain == "web" for d in docs)
    assert len({d.url for d in docs}) == len(docs)


def test_the_stack_shards_are_built_from_this_python(sample):
    labelled = pq.read_table(sample.code_labelled)
    assert THE_STACK_COLUMNS <= set(labelled.schema.names)
    assert set(labelled["lang"].to_pylist()) == {"Python"}
    assert set(labelled["max_stars_repo_name"].to_pylist()) == {"python/cpython"}
    docs = documents("the-stack", [sample.code_labelled, sample.code_unlabelled])
    assert len(docs) == sample.stats["code_files_labelled"] + sample.stats["code_files_unlabelled"]
    bisect = next(d for d in docs if d.metadata["max_stars_repo_path"] == "Lib/bisect.py")
    import bisect as bisect_module

    assert bisect.text == Path(bisect_module.__file__).read_text(encoding="utf-8")


def test_posts_xml_is_a_stack_exchange_dump(sample):
    import xml.etree.ElementTree as ET

    rows = [r.attrib for r in ET.parse(sample.stackoverflow).getroot()]
    questions = [r for r in rows if r["PostTypeId"] == "1"]
    answers = [r for r in rows if r["PostTypeId"] == "2"]
    assert len(questions) >= 40 and answers
    ids = {r["Id"] for r in answers}
    assert all(q["AcceptedAnswerId"] in ids for q in questions if "AcceptedAnswerId" in q)
    assert any("<pre><code>" in r["Body"] for r in rows)
    docs = documents("stackoverflow", [sample.stackoverflow])
    assert len(docs) == len(questions)
    decorators = next(d for d in docs if d.metadata["question_id"] == 1029)
    # the reader's seed-set layout: accepted answer first, code blocks fenced
    assert decorators.text.startswith("Title: What are Python decorators?\nTags: <python><decorator>\nScore: 24")
    assert "--- Answer (score 280, accepted) ---" in decorators.text
    assert "```\nimport functools" in decorators.text


def test_html_pages_carry_boilerplate_that_extraction_removes(sample):
    raw = [p.read_text(encoding="utf-8") for p in sample.html]
    assert len(raw) == 8
    assert all("cookie" in page.lower() and "<nav" in page and "<footer" in page for page in raw)
    docs = documents("html", sample.html)
    assert len(docs) == 8 and all(d.text.strip() for d in docs)
    clean = [d for d in docs if "Popular this week" not in d.text and "cookies" not in d.text.lower()]
    assert len(clean) >= 6
    volcano = next(d for d in docs if "volcanoes" in d.url)
    assert "decompression melting" in volcano.text


def test_every_labelled_document_has_one_annotation_and_all_scores_occur(sample):
    notes = load_annotations()
    by_ref = Counter((a.domain, a.ref) for a in notes)
    assert max(by_ref.values()) == 1
    for domain, paths in sample.labelled_inputs().items():
        source = {"web": "refinedweb", "code": "the-stack", "stackoverflow": "stackoverflow"}[domain]
        refs = {annotation_ref(domain, d) for d in documents(source, paths)}
        assert refs <= {ref for (dom, ref) in by_ref if dom == domain}
    for domain, expected in (("web", range(6)), ("stackoverflow", range(6)), ("code", range(5))):
        scores = Counter(a.score for a in notes if a.domain == domain)
        assert all(scores[s] >= 5 for s in expected), (domain, scores)
    assert all(a.rationale.strip() and a.rationale.count(". ") <= 1 and a.annotator == ANNOTATOR for a in notes)


def test_replay_reproduces_the_recorded_labels(sample, tmp_path):
    from edufilter.cli import main

    stats = record_annotations(tmp_path / "cache", sample.labelled_inputs())
    assert stats.unmatched_documents == {}
    assert stats.recorded == {"web": 129, "stackoverflow": 48, "code": sample.stats["code_files_labelled"]}
    out = tmp_path / "so.parquet"
    status = main(["label", "--source", "stackoverflow", "--input", str(sample.stackoverflow), "--domain",
                   "stackoverflow", "--backend", "replay", "--model", ANNOTATOR, "--cache", str(tmp_path / "cache"),
                   "--output", str(out), "--no-progress"])
    assert status == 0
    labels = pq.read_table(out).to_pylist()
    expected = {a.ref: a for a in load_annotations() if a.domain == "stackoverflow"}
    assert len(labels) == len(expected)
    for row in labels:
        qid = row["id"].split(":")[-1]
        assert row["score"] == expected[qid].score and row["status"] == "ok"
        assert row["rationale"] == expected[qid].rationale


def test_replay_fails_clearly_for_an_unannotated_document(sample, tmp_path):
    from edufilter.cli import main

    record_annotations(tmp_path / "cache", {"web": sample.web})
    status = main(["label", "--source", "html", "--input", str(sample.html[0]), "--domain", "web", "--backend",
                   "replay", "--model", ANNOTATOR, "--cache", str(tmp_path / "cache"), "--output",
                   str(tmp_path / "html.parquet"), "--no-progress"])
    assert status == 1
    assert not (tmp_path / "html.parquet").exists()


def test_build_is_deterministic(sample, tmp_path):
    again = build_sample(tmp_path / "again")
    for a, b in zip([*sample.web, sample.code_labelled], [*again.web, again.code_labelled]):
        assert pq.read_table(a).equals(pq.read_table(b))
    assert sample.stackoverflow.read_bytes() == again.stackoverflow.read_bytes()
    assert [p.read_bytes() for p in sample.html] == [p.read_bytes() for p in again.html]
    assert json.loads(again.manifest.read_text())["web_documents"] == 129


@pytest.mark.shared
def test_sample_texts_are_not_copied_from_shared(shared):
    """The sample's web pages and threads were written for the project, not taken from ../shared."""
    texts = []
    for path in [*(shared / "corpus" / "labelled" / "edufilter_seed").glob("*.jsonl"),
                 *(shared / "corpus" / "web_text").rglob("*.jsonl")]:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            texts.append(str(row.get("text") or row.get("raw_content") or ""))
    corpus = " ".join(" ".join(texts).split())
    assert len(corpus) > 1_000_000  # the check really looked at the shared texts
    pages = [json.loads(line)["text"] for line in data_path("web.jsonl").read_text(encoding="utf-8").splitlines()]
    for text in pages:
        probe = " ".join(text.split())[:120]
        assert probe not in corpus
