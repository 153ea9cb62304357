"""The on-disk layout of a scored-output folder, shard completion and the job summary.

    OUT_DIR/<shard_key>.parquet        every document of one input shard, scored (SCORED_SCHEMA)
    OUT_DIR/_stats/<shard_key>.json    that shard's accounting and score histograms
    OUT_DIR/_done/<shard_key>          completion marker, written last: a shard without it is redone
    OUT_DIR/_parts/<shard_key>/...     part files of a shard in progress (deleted when it completes)
    OUT_DIR/_summary.json              aggregate over every completed shard + the last run's failures

Several `edufilter score` runs (a web model on RefinedWeb, a code model on The
Stack) may share one folder; `select` reads all of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edufilter.io import write_json_atomic, write_parquet_atomic, write_text_atomic
from jobs.stages import SCORED_SCHEMA, shard_stats

class IncompleteShard(RuntimeError):
    pass


@dataclass
class ShardProgress:
    """What the driver has heard about one shard so far."""

    key: str
    path: str
    parts: dict[str, int] = field(default_factory=dict)  # part name -> rows (deduplicated by name)
    end: dict[str, Any] | None = None
    error: str | None = None

    @property
    def rows_seen(self) -> int:
        return sum(self.parts.values())

    def ready(self) -> bool:
        return self.error is None and self.end is not None and self.end.get("error") is None and (
            self.rows_seen >= int(self.end["documents"])
        )


class ScoredDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def shard_path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def stats_path(self, key: str) -> Path:
        return self.root / "_stats" / f"{key}.json"

    def marker_path(self, key: str) -> Path:
        return self.root / "_done" / key

    def parts_dir(self, key: str) -> Path:
        return self.root / "_parts" / key

    @property
    def summary_path(self) -> Path:
        return self.root / "_summary.json"

    def completed_keys(self) -> set[str]:
        done = self.root / "_done"
        return {p.name for p in done.iterdir() if not p.name.startswith(".")} if done.is_dir() else set()

    def completed_stats(self) -> list[dict[str, Any]]:
        """Stats of every completed shard, in shard-key order."""
        out = []
        for key in sorted(self.completed_keys()):
            out.append(json.loads(self.stats_path(key).read_text(encoding="utf-8")))
        return out

    def discard_parts(self, key: str) -> None:
        """Forget an unfinished attempt of a shard: it is redone from its first row."""
        shutil.rmtree(self.parts_dir(key), ignore_errors=True)
        for stale in self.root.glob(f".{key}.parquet.*.tmp"):
            stale.unlink(missing_ok=True)

    def finalize(self, progress: ShardProgress, *, source: str, token_counter: str, keep_threshold: float,
                 started: float) -> dict[str, Any]:
        """Assemble a shard from its parts, exactly once, and mark it complete.

        Parts are deduplicated by row (a batch re-executed by Ray rewrites the same rows),
        sorted by row, and must add up to the document count the reader reported.
        """
        end = progress.end or {}
        part_files = sorted(self.parts_dir(progress.key).glob("*.parquet"))
        tables = [pq.read_table(p, schema=SCORED_SCHEMA) for p in part_files]
        table = pa.concat_tables(tables) if tables else SCORED_SCHEMA.empty_table()
        table = table.sort_by("row")
        rows = table["row"].to_numpy()
        if len(rows) > 1 and (rows[1:] == rows[:-1]).any():
            first = np.concatenate([[True], rows[1:] != rows[:-1]])
            table = table.filter(pa.array(first))
        if table.num_rows != int(end.get("documents", -1)):
            raise IncompleteShard(
                f"shard {progress.path}: {table.num_rows} scored rows on disk, reader reported {end.get('documents')}"
            )
        write_parquet_atomic(self.shard_path(progress.key), table)
        stats = shard_stats(table, end, key=progress.key, source=source, token_counter=token_counter,
                            keep_threshold=keep_threshold, seconds=time.time() - started)
        self.commit(progress.key, progress.path, stats)
        self.discard_parts(progress.key)
        return stats

    def commit(self, key: str, path: str, stats: dict[str, Any]) -> None:
        """Record a shard whose output file is in place: stats, then the marker (the commit point)."""
        write_json_atomic(self.stats_path(key), stats)
        write_text_atomic(self.marker_path(key), f"{path}\n")


def summarize(out: ScoredDir, failures: dict[str, dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """Aggregate every completed shard's stats per source, plus this run's failures and throughput."""
    per_source: dict[str, dict[str, Any]] = defaultdict(lambda: Counter())
    bad_total: dict[str, Counter] = defaultdict(Counter)
    hist: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(6, dtype=np.int64))
    completed = out.completed_stats()
    for s in completed:
        agg = per_source[s["source"]]
        agg["shards"] += 1
        for k in ("documents_in", "documents_out", "bytes", "tokens", "kept_documents", "kept_tokens"):
            agg[k] += s[k]
        bad_total[s["source"]].update(s["bad"])
        hist[s["source"]] += np.asarray(s["score_histogram"], dtype=np.int64)
    sources = {}
    for source, agg in sorted(per_source.items()):
        docs = agg["documents_out"]
        sources[source] = {
            **dict(agg),
            "bad": dict(bad_total[source]),
            "kept_fraction": round(agg["kept_documents"] / docs, 4) if docs else 0.0,
            "score_histogram": hist[source].tolist(),
        }
    return {
        "sources": sources,
        "completed_shards": len(completed),
        "failed_shards": failures,
        "run": run,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The per-source table printed at the end of a run."""
    head = f"{'source':<14}{'shards':>7}{'docs in':>10}{'docs out':>10}{'bad':>6}{'tokens in':>13}" \
           f"{'tokens out':>13}{'kept':>7}"
    lines = [head, "-" * len(head)]
    for source, s in summary["sources"].items():
        lines.append(
            f"{source:<14}{s['shards']:>7}{s['documents_in']:>10}{s['documents_out']:>10}{sum(s['bad'].values()):>6}"
            f"{s['tokens']:>13}{s['kept_tokens']:>13}{s['kept_fraction']:>7.1%}"
        )
    run = summary["run"]
    lines.append(
        f"this run: {run['shards_done']} shards done, {run['shards_skipped']} skipped (already complete), "
        f"{run['shards_failed']} failed; {run['documents']} documents, {run['megabytes']:.1f} MB in "
        f"{run['seconds']:.1f} s = {run['documents_per_second']:.0f} docs/s, {run['megabytes_per_second']:.2f} MB/s"
    )
    for key, failure in summary["failed_shards"].items():
        lines.append(f"FAILED {failure['path']} ({key}): {failure['reason'].splitlines()[0]}")
    return "\n".join(lines)
