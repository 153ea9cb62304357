"""A small corpus in the layout `edufilter select` writes, built from literal text and the
local Python standard library, for the pretraining tests."""

from __future__ import annotations

import json
import random
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SENTENCES = [
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "A force applied to a mass produces an acceleration proportional to that force.",
    "The river carried silt downstream and built a delta where it met the sea.",
    "Multiply both sides of the equation by two to remove the fraction.",
    "Cells divide by mitosis, copying their chromosomes before they split.",
    "Click here to subscribe to our newsletter and win a free holiday.",
    "The recipe needs two eggs, a cup of flour and a pinch of salt.",
    "Prices fell sharply on Monday after the quarterly report was published.",
]


def web_documents(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(SENTENCES) for _ in range(rng.randint(3, 12))) for _ in range(count)]


def code_documents(count: int) -> list[str]:
    stdlib = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [p.read_text(encoding="utf-8", errors="replace")[:2500] for p in stdlib[:count]]


def write_selected_corpus(out: Path, web: int = 160, code: int = 40, shards: int = 2) -> Path:
    """Parquet shards of text + domain/source provenance beside a manifest.json, like `edufilter select`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [("web", "refinedweb", t) for t in web_documents(web)] + [("code", "the-stack", t) for t in code_documents(code)]
    for shard in range(shards):
        part = rows[shard::shards]
        table = pa.table({
            "text": [t for _, _, t in part],
            "domain": [d for d, _, _ in part],
            "source": [s for _, s, _ in part],
            "score": [3.5] * len(part),
        })
        pq.write_table(table, out / f"part-{shard:05d}.parquet")
    (out / "manifest.json").write_text(json.dumps({"documents": len(rows), "sources": ["refinedweb", "the-stack"]}))
    return out
