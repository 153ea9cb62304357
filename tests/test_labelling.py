"""edufilter label: prompts, parser, cache, sampling, the openai backend's
failure paths against a real OpenAI-protocol server on loopback, replay,
resume after a kill, and agreement."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from edufilter.documents import BadDocument, Document, content_hash
from edufilter.labelling import agree
from edufilter.labelling.backends import (
    EndpointError,
    LabelRequest,
    OpenAIBackend,
    OpenAIConfig,
    chat_completions_url,
    parse_retry_after,
)
from edufilter.labelling.cache import AnswerCache, prompt_version, render_response
from edufilter.labelling.cli import main as label_cli
from edufilter.labelling.prompts import (
    MAX_DOCUMENT_CHARS,
    TRUNCATION_MARKER,
    build_messages,
    parse_response,
    truncate_document,
)
from edufilter.labelling.sampling import allocate, length_bucket, sample_documents

from llm_server import ChatServer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    with ChatServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def _reset(server):
    server.requests.clear()
    server.total = 0
    server.delay = 0.0
    server.api_key = None


def write_jsonl(path: Path, texts: list[str], source: str = "unit") -> Path:
    with open(path, "w") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": text, "source": source}) + "\n")
    return path


def topic_texts(n: int, extra: dict[int, str] | None = None) -> list[str]:
    extra = extra or {}
    return [f"Lesson {i}: how plants turn light into sugar, step {i}. " * (1 + i % 5) + extra.get(i, "") for i in range(n)]


def run_label(tmp_path: Path, server: ChatServer, texts: list[str], *extra: str, name: str = "labels") -> tuple[int, list[dict]]:
    docs = write_jsonl(tmp_path / f"{name}.jsonl", texts)
    out = tmp_path / f"{name}.parquet"
    rc = label_cli(["--source", "jsonl", "--input", str(docs), "--domain", "web", "--backend", "openai",
                    "--endpoint", server.url, "--model", "test-llm", "--output", str(out), "--no-progress",
                    "--backoff-base", "0.05", *extra])
    rows = pq.read_table(out).to_pylist() if out.exists() else []
    return rc, rows


def ask_one(server: ChatServer, text: str, **config) -> tuple:
    backend = OpenAIBackend(OpenAIConfig(endpoints=(server.url,), model="test-llm", backoff_base_s=0.05, **config))
    answers = []
    request = LabelRequest(content_hash(text), "doc", build_messages("web", text))
    started = time.perf_counter()
    backend.run([request], answers.append, lambda: False)
    return answers[0], backend, time.perf_counter() - started


# ---------------------------------------------------------------- prompts and parser


def test_prompt_versions_are_distinct_stable_and_carry_the_rubric():
    versions = {d: prompt_version(d) for d in ("web", "code", "stackoverflow")}
    assert len(set(versions.values())) == 3
    assert all(len(v) == 12 for v in versions.values())
    assert versions["web"] == prompt_version("web")
    system = build_messages("code", "x = 1")[0]["content"]
    assert "additive" in system and "Educational score: <an integer from 0 to 5>" in system
    with pytest.raises(ValueError, match="unknown domain"):
        prompt_version("poetry")


def test_truncation_is_the_documented_first_4000_characters():
    text = "a" * MAX_DOCUMENT_CHARS + "TAIL"
    assert truncate_document(text) == "a" * MAX_DOCUMENT_CHARS + TRUNCATION_MARKER
    assert truncate_document("short") == "short"
    user = build_messages("web", text)[1]["content"]
    assert "TAIL" not in user and TRUNCATION_MARKER.strip() in user


@pytest.mark.parametrize(
    "raw, score, status, reason",
    [
        ("Clear tutorial with examples.\nEducational score: 4", 4, "ok", ""),
        ("**Rationale:** textbook-like\n**Educational score:** 5/5", 5, "ok", ""),
        ("educational score : 2\n", 2, "ok", ""),
        ("First Educational score: 1, on reflection\nEducational score: 3", 3, "ok", ""),
        ("I cannot rate this.", None, "unparseable", "no-score-line"),
        ("   ", None, "unparseable", "empty-response"),
        ("Too good.\nEducational score: 9", None, "unparseable", "score-out-of-range"),
        ("Half.\nEducational score: 2.5", None, "unparseable", "score-out-of-range"),
    ],
)
def test_parse_response(raw, score, status, reason):
    parsed = parse_response(raw)
    assert (parsed.score, parsed.status, parsed.reason) == (score, status, reason)


def test_render_response_round_trips_through_the_parser():
    raw = render_response("Explains   photosynthesis\nwith a worked example.", 4)
    parsed = parse_response(raw)
    assert parsed.ok and parsed.score == 4 and parsed.rationale == "Explains photosynthesis with a worked example."
    with pytest.raises(ValueError):
        render_response("x", 6)


# ---------------------------------------------------------------- cache


def test_cache_put_get_reload_and_torn_last_line(tmp_path):
    cache = AnswerCache(tmp_path / "c")
    pv = prompt_version("web")
    cache.put(pv, "m", "h1", render_response("a", 1), prompt_tokens=10, completion_tokens=3)
    cache.put(pv, "m", "h2", render_response("b", 2))
    cache.put(pv, "m", "h1", render_response("a again", 5))  # a later answer for the same key wins
    cache.close()
    path = tmp_path / "c" / "answers.jsonl"
    with open(path, "a") as f:
        f.write('{"prompt_version": "x", "model": "m", "text_ha')  # a run killed mid-write
    reopened = AnswerCache(tmp_path / "c")
    assert reopened.torn_lines == 1 and len(reopened) == 2
    assert parse_response(reopened.get(pv, "m", "h1").raw_response).score == 5
    assert reopened.get(pv, "other-model", "h1") is None
    reopened.put(pv, "m", "h3", render_response("c", 3))  # appends on a fresh line after the torn one
    reopened.close()
    assert len(AnswerCache(path)) == 3


# ---------------------------------------------------------------- sampling


def make_docs(n: int, source: str, length: int) -> list[Document]:
    return [Document(f"{source}-{i}", f"{source} {i} " + "x" * length, "web", source) for i in range(n)]


def test_sampling_is_seeded_order_independent_stratified_and_deduplicated():
    docs = make_docs(300, "big", 100) + make_docs(60, "big", 3000) + make_docs(40, "small", 100)
    records = docs + [docs[0], docs[5], BadDocument("s", 1, "not-utf8")]
    sample, stats = sample_documents(records, limit=40, seed=1)
    again, _ = sample_documents(list(reversed(records)), limit=40, seed=1)
    other_seed, _ = sample_documents(records, limit=40, seed=2)
    assert [d.id for d in sample] == [d.id for d in again]  # order of reading does not matter
    assert [d.id for d in sample] != [d.id for d in other_seed]
    assert len(sample) == 40 and len({d.text for d in sample}) == 40
    assert stats.duplicates == 2 and stats.bad == {"not-utf8": 1}
    assert stats.drawn == {"big|2k-4k": 6, "big|<500": 30, "small|<500": 4}  # proportional to 60/300/40
    larger, _ = sample_documents(records, limit=80, seed=1)
    assert {d.id for d in sample} <= {d.id for d in larger}  # a larger limit keeps the smaller sample


def test_allocate_keeps_every_stratum_and_never_exceeds_its_size():
    quotas = allocate({"a": 1000, "b": 1, "c": 3}, 10)
    assert sum(quotas.values()) == 10 and quotas["b"] == 1 and quotas["c"] >= 1
    assert allocate({"a": 2, "b": 3}, 100) == {"a": 2, "b": 3}
    assert length_bucket(10) == "<500" and length_bucket(20000) == ">=16k"


# ---------------------------------------------------------------- openai backend failure paths


def test_chat_url_and_retry_after_parsing():
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert parse_retry_after("2.5") == 2.5
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9
    assert parse_retry_after("soon") is None


def test_429_retries_honour_retry_after(server):
    answer, backend, elapsed = ask_one(server, "Rate limited. [[status=429]] [[times=2]] [[retry_after=0.3]] [[score=4]]")
    assert answer.ok and parse_response(answer.raw_response).score == 4
    assert backend.retries == 2 and elapsed >= 0.6  # waited what the server asked, twice
    assert server.total == 3


def test_500_then_success_and_500_forever_fails_with_reason(server):
    answer, backend, _ = ask_one(server, "Flaky. [[status=500]] [[times=2]]")
    assert answer.ok and backend.retries == 2
    answer, backend, _ = ask_one(server, "Broken. [[status=503]]", max_retries=2)
    assert not answer.ok and answer.failure == "http-503" and backend.retries == 2
    assert server.total == 3 + 3


def test_400_fails_the_document_without_retrying(server):
    answer, backend, _ = ask_one(server, "Too long for the model. [[status=400]]")
    assert answer.failure == "http-400" and "scripted failure" in answer.detail
    assert backend.retries == 0 and server.total == 1


def test_timeout_is_retried_then_reported(server):
    answer, backend, elapsed = ask_one(server, "Slow. [[delay=2]]", timeout_s=0.2, max_retries=1)
    assert answer.failure == "timeout" and backend.retries == 1 and elapsed < 1.5


def test_malformed_json_is_retried_and_reported(server):
    answer, _, _ = ask_one(server, "Garbled once. [[body=malformed]] [[times=1]] [[score=2]]")
    assert answer.ok and parse_response(answer.raw_response).score == 2
    answer, _, _ = ask_one(server, "Garbled always. [[body=malformed]]", max_retries=1)
    assert answer.failure == "malformed-response"


def test_bad_key_stops_the_run_instead_of_failing_every_document(server):
    server.api_key = "secret"
    with pytest.raises(EndpointError, match="401"):
        ask_one(server, "Any document.")
    answer, _, _ = ask_one(server, "Any document.", api_key="secret")
    assert answer.ok


def test_concurrency_is_bounded(server):
    server.delay = 0.2
    backend = OpenAIBackend(OpenAIConfig(endpoints=(server.url,), model="m", concurrency=4))
    texts = topic_texts(12)
    requests = [LabelRequest(content_hash(t), str(i), build_messages("web", t)) for i, t in enumerate(texts)]
    answers = []
    started = time.perf_counter()
    backend.run(requests, answers.append, lambda: False)
    elapsed = time.perf_counter() - started
    assert len(answers) == 12 and all(a.ok for a in answers)
    assert 0.55 <= elapsed < 2.3  # 12 requests of 0.2s, 4 at a time: 3 waves (one at a time would be 2.4s)


# ---------------------------------------------------------------- the command


def test_label_command_writes_every_document_with_status_and_reason(tmp_path, server):
    texts = topic_texts(20, {3: "[[body=unparseable]]", 4: "[[status=500]]", 5: "[[score=5]]", 6: "[[status=429]] [[times=1]] [[retry_after=0.1]]"})
    rc, rows = run_label(tmp_path, server, texts, "--max-retries", "2")
    assert rc == 3  # labels written, one document failed; a rerun retries it
    by_text = {r["text"]: r for r in rows}
    assert len(rows) == 20
    assert list(rows[0]) == ["id", "domain", "source", "ref", "text", "score", "rationale", "annotator",
                             "prompt_version", "raw_response", "status", "reason", "text_hash", "prompt_tokens",
                             "completion_tokens"]
    assert by_text[texts[3]]["status"] == "unparseable" and by_text[texts[3]]["reason"] == "no-score-line"
    assert by_text[texts[3]]["raw_response"] and by_text[texts[3]]["score"] is None
    assert by_text[texts[4]]["status"] == "failed" and by_text[texts[4]]["reason"] == "http-500"
    assert by_text[texts[5]]["score"] == 5 and by_text[texts[5]]["status"] == "ok"
    assert by_text[texts[6]]["status"] == "ok"
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 18 and all(0 <= r["score"] <= 5 and r["prompt_version"] == prompt_version("web") for r in ok)
    assert all(r["annotator"] == "test-llm" and r["prompt_tokens"] > 0 for r in ok)
    summary = json.loads((tmp_path / "labels.parquet.summary.json").read_text())
    assert summary["status"] == {"ok": 18, "unparseable": 1, "failed": 1}
    assert summary["tokens"] > 0 and summary["reasons"]["failed:http-500"] == 1

    # The same command again asks only for the failed document (cached answers are never asked again).
    server.requests.clear()
    rc, rows = run_label(tmp_path, server, texts, "--max-retries", "0")
    assert rc == 3 and dict(server.requests) == {content_hash(texts[4]): 1}


def test_token_budget_stops_cleanly_and_a_rerun_goes_on(tmp_path, server):
    texts = topic_texts(30)
    rc, rows = run_label(tmp_path, server, texts, "--concurrency", "1", "--max-tokens-budget", "1500")
    assert rc == 0
    status = [r["status"] for r in rows]
    done = status.count("ok")
    assert 0 < done < 30 and status.count("not-labelled") == 30 - done
    assert {r["reason"] for r in rows if r["status"] == "not-labelled"} == {"token-budget-exhausted"}
    summary = json.loads((tmp_path / "labels.parquet.summary.json").read_text())
    assert summary["budget_exhausted"] and summary["tokens"] >= 1500
    rc, rows = run_label(tmp_path, server, texts)
    assert rc == 0 and all(r["status"] == "ok" for r in rows)
    assert max(server.requests.values()) == 1 and server.total == 30


def test_replay_answers_from_the_cache_and_fails_clearly_on_a_miss(tmp_path, server, capsys):
    texts = topic_texts(10)
    rc, recorded = run_label(tmp_path, server, texts, "--limit", "6")
    assert rc == 0
    docs = tmp_path / "labels.jsonl"
    common = ["--source", "jsonl", "--input", str(docs), "--domain", "web", "--backend", "replay", "--model", "test-llm",
              "--cache", str(tmp_path / "labels.parquet.cache"), "--no-progress"]
    server.total = 0
    assert label_cli([*common, "--limit", "6", "--output", str(tmp_path / "replayed.parquet")]) == 0
    replayed = pq.read_table(tmp_path / "replayed.parquet").to_pylist()
    assert [(r["id"], r["score"], r["raw_response"]) for r in replayed] == [
        (r["id"], r["score"], r["raw_response"]) for r in recorded]
    assert server.total == 0
    assert label_cli([*common, "--limit", "10", "--output", str(tmp_path / "missing.parquet")]) == 1
    err = capsys.readouterr().err
    assert "replay: no recorded answer from model 'test-llm' for 4 document(s)" in err and "doc-" in err
    assert not (tmp_path / "missing.parquet").exists()


def test_bad_arguments_and_inputs_are_clear_errors(tmp_path, server, capsys):
    out = str(tmp_path / "o.parquet")
    assert label_cli(["--source", "jsonl", "--input", "x", "--domain", "web", "--backend", "openai", "--model", "m",
                      "--output", out]) == 2
    assert "--endpoint" in capsys.readouterr().err
    assert label_cli(["--source", "jsonl", "--input", str(tmp_path / "nope.jsonl"), "--domain", "web",
                      "--backend", "replay", "--model", "m", "--output", out]) == 1
    assert "nope.jsonl" in capsys.readouterr().err


def test_resume_after_kill_asks_nothing_twice(tmp_path, server):
    """Kill a real `edufilter label` process mid-run, rerun the same command: nothing answered is asked again."""
    server.delay = 0.05
    n = 60
    docs = write_jsonl(tmp_path / "docs.jsonl", topic_texts(n))
    out = tmp_path / "labels.parquet"
    cache_file = tmp_path / "labels.parquet.cache" / "answers.jsonl"
    command = [sys.executable, "-m", "edufilter", "label", "--source", "jsonl", "--input", str(docs),
               "--domain", "web", "--backend", "openai", "--endpoint", server.url, "--model", "test-llm",
               "--output", str(out), "--concurrency", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cache_file.exists() and cache_file.read_text().count("\n") >= 15:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # killed before the end: no half-written output
    cached = {json.loads(line)["text_hash"] for line in cache_file.read_text().splitlines() if line.strip().endswith("}")}
    assert 15 <= len(cached) < n
    first_run = dict(server.requests)
    assert len(first_run) - len(cached) <= 2  # at most the requests in flight were lost

    server.requests.clear()
    server.delay = 0.0
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    second_run = set(server.requests)
    assert not second_run & cached  # nothing answered before was asked again
    assert len(second_run) == n - len(cached) and max(server.requests.values()) == 1
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == n and all(r["status"] == "ok" for r in rows)


# ---------------------------------------------------------------- agreement


def test_agreement_metrics_on_known_values():
    a = np.array([0, 1, 2, 3, 4, 5, 3, 2])
    perfect = agree.agreement(a, a)
    assert perfect["exact"] == 1.0 and perfect["quadratic_weighted_kappa"] == pytest.approx(1.0)
    assert perfect["spearman"] == pytest.approx(1.0) and np.trace(np.array(perfect["confusion_matrix"])) == 8
    off_by_one = agree.agreement(a, np.clip(a + 1, 0, 5))
    assert off_by_one["exact"] == pytest.approx(1 / 8) and off_by_one["within_one"] == 1.0
    assert 0.5 < off_by_one["quadratic_weighted_kappa"] < 1.0
    reversed_scores = agree.agreement(a, 5 - a)
    assert reversed_scores["quadratic_weighted_kappa"] < 0 and reversed_scores["spearman"] == pytest.approx(-1.0)
    from sklearn.metrics import cohen_kappa_score

    b = np.array([0, 2, 2, 3, 5, 4, 1, 2])
    assert agree.agreement(a, b)["quadratic_weighted_kappa"] == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"))


def test_agree_command_between_two_label_runs(tmp_path, server, capsys):
    texts = topic_texts(12)
    rc, first = run_label(tmp_path, server, texts, name="a")
    assert rc == 0
    # "another annotator": the same documents relabelled from the first label file, with a different model name
    rc = label_cli(["--source", "labels", "--input", str(tmp_path / "a.parquet"), "--domain", "web", "--backend", "openai",
                    "--endpoint", server.url, "--model", "other-llm", "--output", str(tmp_path / "b.parquet"), "--no-progress"])
    assert rc == 0
    capsys.readouterr()
    assert label_cli(["agree", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 12 and report["key"] == "id" and report["exact"] == 1.0  # the test server is deterministic


@pytest.mark.shared
def test_agree_on_the_shared_label_files(shared, seed_dir, capsys):
    seed_web = shared / "corpus" / "labelled" / "edufilter_seed" / "web.jsonl"
    assert label_cli(["agree", str(seed_web), str(seed_web), "--b-column", "fwedu_score", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 100 and report["key"] == "id"  # the FineWeb rows carry the FineWeb-Edu classifier score
    assert 0.2 < report["quadratic_weighted_kappa"] < 0.9 and report["within_one"] > 0.8
    assert sum(map(sum, report["confusion_matrix"])) == 100
    # the LLM seed labels against the FineWeb-Edu classifier sample file, matched on text
    fwedu = shared / "corpus" / "labelled" / "fineweb_edu_classifier_en" / "english_classified_samples.csv"
    assert label_cli(["agree", str(seed_dir / "web.parquet"), str(fwedu), "--b-column", "score"]) == 0
    table = capsys.readouterr().out
    assert "matched on text: 100 rows" in table and "quadratic-weighted kappa" in table
