"""Score and select on the shared real data, every input format, through the embedded Ray:
models trained on the LLM-labelled seed set, the phi-1.5-web recipe scaled to the sample."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.shared]


def train(seed_dir: Path, domain: str, out: Path) -> Path:
    from classifier.cli import train_main

    labels = seed_dir / f"{'code' if domain == 'code' else domain}.parquet"
    assert train_main(["--labels", str(labels), "--domain", domain, "--output", str(out), "--cv-folds", "0",
                       "--params", '{"lr": 0.5, "epoch": 25, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0}',
                       "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def shared_inputs(shared: Path, tmp_path_factory) -> dict[str, str]:
    """Tiny inputs in every format: the shared files as they come where they already are in a
    corpus format, small parquet shards built in tmp for RefinedWeb and The Stack."""
    corpus = shared / "corpus"
    tmp = tmp_path_factory.mktemp("shared-inputs")
    with gzip.open(corpus / "web_text/dolma_provided/000.json.gz", "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh][:60]
    pq.write_table(pa.table({"content": [r["text"] for r in rows], "url": [r["id"] for r in rows],
                             "timestamp": [r.get("added", "") for r in rows], "dump": ["dolma"] * len(rows),
                             "segment": ["0"] * len(rows), "image_urls": [[] for _ in rows]}),
                   tmp / "refinedweb-00000.parquet")
    subprocess.run([sys.executable, str(corpus / "code/build.py"), str(tmp / "the-stack-00000.parquet")], check=True,
                   capture_output=True)
    return {
        "refinedweb": str(tmp / "refinedweb-*.parquet"),
        "jsonl": str(corpus / "web_text/ccnet/*.jsonl"),
        "html": str(corpus / "web_html/python_docs/library__c*.html.gz"),
        "warc": str(corpus / "warc/commoncrawl_whirlwind/whirlwind.warc.gz"),
        "stackoverflow": str(corpus / "stackoverflow/coffee_se/Posts.xml"),
        "the-stack": str(tmp / "the-stack-*.parquet"),
    }


def test_score_and_select_shared_data_in_every_format(ray_local, seed_dir, shared_inputs, tmp_path):
    from edufilter.readers import expand_paths, read_shard
    from jobs.layout import ScoredDir
    from jobs.score import main as score
    from jobs.select import main as select
    from jobs.stages import shard_key

    models = {"web": train(seed_dir, "web", tmp_path / "web-model"),
              "code": train(seed_dir, "code", tmp_path / "code-model"),
              "stackoverflow": train(seed_dir, "stackoverflow", tmp_path / "so-model")}
    domain_of = {"the-stack": "code", "stackoverflow": "stackoverflow"}
    out = ScoredDir(tmp_path / "scored")
    for source, glob in shared_inputs.items():
        model = models[domain_of.get(source, "web")]
        assert score(["--model", str(model), "--source", source, "--input", glob, "--output", str(out.root)]) == 0
        for path in expand_paths(glob):
            documents = sum(1 for x in read_shard(source, path) if hasattr(x, "text"))
            stats = json.loads(out.stats_path(shard_key(path)).read_text())
            assert stats["documents_out"] == documents > 0, path
            assert pq.read_table(out.shard_path(shard_key(path))).num_rows == documents
    summary = json.loads(out.summary_path.read_text())
    assert set(summary["sources"]) == set(shared_inputs) and summary["failed_shards"] == {}

    # phi-1.5-web: 88B web + 7B code and Q&A, scaled by 5e-7 to the sample
    corpus = tmp_path / "corpus"
    assert select(["--scored", str(out.root), "--output", str(corpus), "--token-budget", "web=88B",
                   "--token-budget", "code+stackoverflow=7B", "--scale", "5e-7"]) == 0
    manifest = json.loads((corpus / "manifest.json").read_text())
    web, code = manifest["selection"]["web"], manifest["selection"]["code+stackoverflow"]
    assert web["budget_tokens"] == 44_000 and code["budget_tokens"] == 3_500
    assert 0 < code["tokens_kept"] <= 3_500 < code["tokens_available"]
    assert 0 < web["tokens_kept"] <= 44_000 < web["tokens_available"]
    assert len(web["models"]) == 1 and code["models"]  # model id@version of what was kept
    kept = pa.concat_tables([pq.read_table(corpus / f["file"]) for f in manifest["files"]])
    assert kept["tokens"].to_numpy().sum() == web["tokens_kept"] + code["tokens_kept"]
    assert set(kept["source"].to_pylist()) <= set(shared_inputs)
