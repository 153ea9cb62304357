"""`edufilter demo --fast` end to end (the real command, in a child process), its summary.json and
report.html, the report in a real headless Chromium, and the fail-well behaviour."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEP_NAMES = ["prepare", "label", "train", "evaluate", "score", "select", "pretrain", "serve", "report"]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `edufilter demo --fast` run shared by the tests of this module."""
    workdir = tmp_path_factory.mktemp("demo") / "work"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DISABLE_USAGE_STATS": "1"}
    done = subprocess.run([sys.executable, "-m", "edufilter", "demo", "--workdir", str(workdir), "--fast",
                           "--num-cpus", "2"], capture_output=True, text=True, timeout=480, env=env, cwd=REPO)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return done, workdir, summary


@pytest.mark.ray
@pytest.mark.slow
def test_demo_runs_every_step_and_prints_where_the_report_is(demo_run):
    done, workdir, summary = demo_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for i, name in enumerate(STEP_NAMES, 1):
        assert re.search(rf"\[{i}/9\] {name}\b", done.stdout)
    assert done.stdout.count("✓") == len(STEP_NAMES)
    assert f"Report: {workdir / 'report.html'}" in done.stdout
    assert "step timings:" in done.stdout
    assert [s["name"] for s in summary["steps"]] == STEP_NAMES
    assert all(s["status"] == "ok" and s["seconds"] >= 0 for s in summary["steps"])
    assert summary["status"] == "ok" and summary["total_seconds"] < 600
    for step in summary["steps"]:
        assert Path(step["log"]).is_file()


@pytest.mark.ray
@pytest.mark.slow
def test_summary_holds_every_stage_result(demo_run):
    _, workdir, summary = demo_run
    assert {d: summary["labels"][d]["n"] for d in summary["labels"]} == {"web": 129, "code": 77, "stackoverflow": 48}
    assert all(sum(v["histogram"].values()) == v["n"] for v in summary["labels"].values())

    for domain, m in summary["evaluation"].items():
        assert {"n", "f1_at_3", "precision_at_3", "recall_at_3", "macro_f1", "accuracy", "spearman", "mse"} <= set(m)
        matrix = m["confusion_matrix"]
        assert len(matrix) == 6 and all(len(row) == 6 for row in matrix)
        assert sum(map(sum, matrix)) == m["n"]
    # the sample is learnable: web and StackOverflow rank the held-out labels clearly above chance
    assert summary["evaluation"]["web"]["spearman"] > 0.4
    assert summary["evaluation"]["stackoverflow"]["spearman"] > 0.4

    sources = summary["scoring"]["sources"]
    assert set(sources) == {"web/refinedweb", "web/html", "code/the-stack", "stackoverflow/stackoverflow"}
    assert sources["web/refinedweb"]["documents_in"] == 129 and sources["web/html"]["documents_in"] == 8
    assert all(sum(s["histogram"]) == s["documents_out"] and s["tokens"] > 0 for s in sources.values())

    selection = summary["selection"]
    assert set(selection["keys"]) == {"web", "code+stackoverflow"}
    for key in selection["keys"].values():
        assert key["tokens_kept"] <= key["budget"]
    web_budget, code_budget = selection["keys"]["web"]["budget"], selection["keys"]["code+stackoverflow"]["budget"]
    assert abs(web_budget / code_budget - 88 / 7) < 0.1  # phi-1.5-web's ratio, scaled
    assert 0 < selection["tokens"] < sum(s["tokens_in"] for s in selection["per_source"].values())
    curve = selection["curves"]["web"]
    assert curve["tokens"] == sorted(curve["tokens"], reverse=True) and 0 <= curve["chosen"] <= 5
    assert (workdir / "corpus" / "manifest.json").is_file()

    pre = summary["pretraining"]
    assert pre["steps"] == 20 and len(pre["loss"]) >= 2 and pre["loss"][-1][1] > 0
    assert (workdir / "pretrain" / "model" / "config.json").is_file()

    service = summary["service"]
    assert service["status_code"] == 200 and service["url"].startswith("http://127.0.0.1:")
    result = service["response"]["results"][0]
    assert 0 <= result["score"] <= 5 and result["id"] == "demo-1"

    assert summary["examples"]["kept"] and summary["examples"]["dropped"]
    assert all(e["score"] >= 0 and isinstance(e["top_words"], list) for e in summary["examples"]["kept"])


@pytest.mark.ray
@pytest.mark.slow
def test_report_is_one_self_contained_file(demo_run):
    _, workdir, _ = demo_run
    page = (workdir / "report.html").read_text(encoding="utf-8")
    for anchor in ("glance", "steps", "labels", "evaluation", "scoring", "selection", "pretraining", "service",
                   "examples"):
        assert f'id="{anchor}"' in page
    assert "<script" not in page and "<link" not in page
    sources = re.findall(r'\bsrc="([^"]*)"', page)
    assert len(sources) >= 7 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"url\(\s*['\"]?http", page)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(demo_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    _, workdir, _ = demo_run
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto((workdir / "report.html").as_uri())
            assert page.title() == "edufilter demo report"
            assert page.locator("header.top .badge").inner_text() == "ok"
            for heading in ("Classifier evaluation", "Scoring the shards", "Selection by token budget",
                            "Pretraining a tiny Phi", "REST service", "Examples"):
                assert page.get_by_role("heading", name=re.compile(heading)).is_visible()
            images = page.locator("img.plot")
            assert images.count() >= 7
            widths = page.eval_on_selector_all("img.plot", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            assert all(w > 100 for w in widths)
            assert page.locator("#evaluation table tr").count() == 4  # header + three domains
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 20_000
            if os.environ.get("EDUFILTER_WRITE_SCREENSHOT"):  # refresh the README's screenshot
                shutil.copy(shot, REPO / "docs" / "report.png")
        finally:
            browser.close()
    assert not errors


def test_a_failing_step_stops_the_demo_keeps_earlier_outputs_and_still_reports(tmp_path, monkeypatch):
    from edufilter.demo import pipeline

    def broken_train(demo):
        raise pipeline.StepFailed("the classifier could not be trained: simulated failure")

    steps = list(pipeline.STEPS)
    steps[2] = pipeline.Step("train", "a train step that fails", broken_train)
    monkeypatch.setattr(pipeline, "STEPS", steps)
    cfg = pipeline.DemoConfig(workdir=tmp_path / "work", data=None, fast=True, pretrain_steps=2, num_cpus=1,
                              verbose=False)
    assert pipeline.run_demo(cfg) == 1
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_step"] == "train"
    statuses = [s["status"] for s in summary["steps"]]
    assert statuses == ["ok", "ok", "failed"] + ["not-run"] * 6
    assert "simulated failure" in summary["steps"][2]["reason"]
    assert (tmp_path / "work" / "labels" / "web.parquet").is_file()  # the label step's output is kept
    page = (tmp_path / "work" / "report.html").read_text()
    assert "The demo stopped at step" in page and "simulated failure" in page


def test_demo_refuses_a_folder_it_did_not_make(tmp_path):
    from edufilter.demo import main

    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["--workdir", str(tmp_path)]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_demo_with_data_that_is_not_a_corpus_fails_at_prepare(tmp_path):
    from edufilter.demo import main

    (tmp_path / "data").mkdir()
    assert main(["--workdir", str(tmp_path / "work"), "--data", str(tmp_path / "data")]) == 1
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["failed_step"] == "prepare"
    assert "build_seed.py not found" in summary["steps"][0]["reason"]


def test_report_renders_from_a_partial_summary():
    from edufilter.demo.report import render_report

    page = render_report({"status": "failed", "steps": [
        {"name": "prepare", "title": "t", "status": "ok", "seconds": 1.0, "detail": "d"},
        {"name": "label", "title": "t", "status": "failed", "seconds": 0.5, "reason": "no cache", "log": "x.log"},
        {"name": "train", "title": "t", "status": "not-run"}]})
    assert "The demo stopped at step “label”" in page and "no cache" in page
    assert 'id="evaluation"' not in page  # sections without data are left out, not rendered empty


@pytest.mark.shared
def test_shared_data_labels_are_the_seed_set_replayed(shared, tmp_path, monkeypatch):
    """`--data ../shared/corpus`: the seed set's labels come back through `label --backend replay`
    (the later steps are the same code as on the sample; the full run is timed in the README)."""
    import pyarrow.parquet as pq

    from edufilter.demo import pipeline

    monkeypatch.setattr(pipeline, "STEPS", pipeline.STEPS[:2])
    cfg = pipeline.DemoConfig(workdir=tmp_path / "work", data=shared / "corpus", fast=True, pretrain_steps=2,
                              num_cpus=1, verbose=False)
    assert pipeline.run_demo(cfg) == 0
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["labels"]["web"]["n"] == 599 and summary["labels"]["stackoverflow"]["n"] == 150
    assert summary["labels"]["code"]["n"] > 450
    seed = pq.read_table(tmp_path / "work" / "data" / "seed" / "stackoverflow.parquet").to_pylist()
    labels = pq.read_table(tmp_path / "work" / "labels" / "stackoverflow.parquet").to_pylist()
    expected = {row["text"]: row["score"] for row in seed}
    assert all(expected[row["text"]] == row["score"] for row in labels)
