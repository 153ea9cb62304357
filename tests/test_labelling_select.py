"""Active selection (`--select uncertain`) with real fastText classifiers, and
the Ray Data fan-out over two OpenAI-protocol replicas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from edufilter.labelling.cli import main as label_cli
from edufilter.labelling.select import uncertainty_priority

from llm_server import ChatServer

GOOD = [
    "Photosynthesis is the process by which plants convert light energy into chemical energy stored in glucose.",
    "In this lesson we explain how the derivative measures the rate of change of a function, with worked examples.",
    "Newton's second law states that force equals mass times acceleration, shown with a worked example.",
    "A prime number has exactly two divisors; we prove there are infinitely many primes with Euclid's argument.",
    "This tutorial explains recursion step by step: a base case, a recursive case and the call stack.",
    "The water cycle moves water through evaporation, condensation, precipitation and runoff, explained simply.",
    "Chemical bonds form when atoms share or transfer electrons; ionic and covalent bonds are compared.",
    "An introduction to probability: events, sample spaces and conditional probability, with exercises.",
]
BAD = [
    "BUY NOW best cheap watches discount sale click here free shipping limited offer",
    "casino bonus win big jackpot slots free spins sign up today",
    "Login Register Cart Privacy policy Terms of use Cookie settings",
    "cheap pills online pharmacy no prescription fast delivery best price",
    "follow us on social media for more updates giveaway winner announced",
    "best deals of the day sale sale sale everything must go",
    "hot offers in your area click here now amazing deals",
    "Copyright all rights reserved Home About Contact Sitemap",
]


def train_classifier(root: Path, seed: int) -> Path:
    from classifier.train import TrainConfig, train_model

    rows = [{"id": f"g{i}", "text": t, "score": 5 - i % 2} for i, t in enumerate(GOOD)]
    rows += [{"id": f"b{i}", "text": t, "score": i % 2} for i, t in enumerate(BAD)]
    labels = root / f"labels-{seed}.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / f"model-{seed}"
    train_model(str(labels), str(out), TrainConfig(domain="web", kind="fasttext", cv_folds=0, calibration="none",
                                                  progress=False, seed=seed))
    return out


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("select-models")
    return [train_classifier(root, 0), train_classifier(root, 1)]


@pytest.fixture(scope="module")
def servers():
    with ChatServer() as a, ChatServer() as b:
        yield a, b


def candidate_texts() -> list[str]:
    # clear cases from both ends, plus mixtures of the two that a classifier should find hard
    mixed = [f"{g} {b}" for g, b in zip(GOOD, BAD)]
    return [g + " Again." for g in GOOD] + [b + " again" for b in BAD] + mixed


def test_uncertainty_priority_prefers_the_threshold_and_disagreement():
    scores = np.array([[3.0, 0.2, 4.9, 2.0], [3.1, 0.1, 4.8, 4.5]])  # (models, documents)
    priority = uncertainty_priority(scores, [3.0, 3.0])
    assert list(np.argsort(-priority)) == [3, 0, 2, 1]  # strong disagreement, then at the threshold, then sure ones
    single = uncertainty_priority(scores[:1], [3.0])
    assert int(np.argmax(single)) == 0


def test_select_uncertain_labels_what_the_classifiers_are_least_sure_about(tmp_path, classifiers, servers):
    from classifier.scorer import Scorer

    texts = candidate_texts()
    docs = tmp_path / "pool.jsonl"
    docs.write_text("".join(json.dumps({"id": f"c{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "labels.parquet"
    rc = label_cli(["--source", "jsonl", "--input", str(docs), "--domain", "web", "--backend", "openai",
                    "--endpoint", servers[0].url, "--model", "test-llm", "--output", str(out), "--no-progress",
                    "--select", "uncertain", "--model-dir", f"{classifiers[0]},{classifiers[1]}", "--limit", "6"])
    assert rc == 0
    chosen = {r["text"] for r in pq.read_table(out).to_pylist()}
    assert len(chosen) == 6
    scorers = [Scorer.load(d) for d in classifiers]
    scores = np.stack([s.score(texts).score for s in scorers])
    priority = uncertainty_priority(scores, [s.threshold for s in scorers])
    expected = {texts[i] for i in np.argsort(-priority, kind="stable")[:6]}
    assert chosen == expected
    margin = np.abs(scores - 3.0).mean(axis=0)
    picked = [i for i, t in enumerate(texts) if t in chosen]
    assert margin[picked].mean() < margin.mean()  # nearer the decision than the pool on average


@pytest.mark.ray
def test_ray_fanout_over_two_replicas_resumes_from_the_cache(tmp_path, servers, ray_local):
    for server in servers:
        server.requests.clear()
        server.total = 0
    texts = [f"Lesson {i}: fractions, decimals and percentages explained with examples. " * (1 + i % 3) for i in range(40)]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "labels.parquet"
    command = ["--source", "jsonl", "--input", str(docs), "--domain", "web", "--backend", "openai",
               "--endpoint", f"{servers[0].url},{servers[1].url}", "--model", "test-llm", "--output", str(out),
               "--ray", "--ray-actors", "2", "--ray-batch-size", "10", "--concurrency", "4", "--no-progress"]
    assert label_cli(command) == 0
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 40 and all(r["status"] == "ok" for r in rows)
    assert servers[0].total > 0 and servers[1].total > 0  # both replicas did work
    assert servers[0].total + servers[1].total == 40
    assert not set(servers[0].requests) & set(servers[1].requests)  # no document asked twice
    summary = json.loads((tmp_path / "labels.parquet.summary.json").read_text())
    assert summary["answered"] == 40 and summary["tokens"] > 0
    # the same command again: everything from the cache, nothing sent
    assert label_cli(command) == 0
    assert servers[0].total + servers[1].total == 40
