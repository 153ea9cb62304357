"""The batch stages of the scoring job, as plain Python: no Ray here.

Each stage is a small class with declared resources, a `setup()` that loads
whatever heavy state it needs (a model, a tokenizer) once per worker, and a
`__call__` that maps one `pyarrow.Table` batch to another. `jobs.score` wires
them into a Ray Data pipeline; `run_local` runs the very same objects in one
process, which is what the tests compare the Ray output against.

Data flow (one input shard = one read task = one output shard):

    ReadShard        {path, shard_key}  -> document batches + one end-of-shard row
    ScoreDocuments   + score, int_score, model, model_version     (Scorer, once per actor)
    CountTokens      + tokens                                     (tokenizer or estimate)
    WriteParts       writes each batch's rows as a part file, returns receipts

The end-of-shard row carries the shard's own accounting (documents read, bad
documents by reason, or the error that failed the shard). It travels through
the pipeline like any row, so the driver knows a shard is complete once it
has seen that row *and* part files holding that many documents, whatever
order the batches arrive in and however often Ray retried them.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edufilter.documents import DOCUMENT_SCHEMA, BadDocument, Document
from edufilter.io import write_parquet_atomic

STATS_VERSION = 1

# Scores are continuous in [0, 5]; histograms use 0.01-wide bins so that a token
# budget can be solved from the per-shard stats without reading the shards.
HISTOGRAM_BINS = 500
BIN_WIDTH = 5.0 / HISTOGRAM_BINS
BAD_EXAMPLES_KEPT = 5

SHARD_KEY = "shard_key"
END_OF_SHARD = "end_of_shard"  # JSON accounting on the one end row of a shard; null on documents

READ_SCHEMA = DOCUMENT_SCHEMA.append(pa.field(SHARD_KEY, pa.string())).append(pa.field(END_OF_SHARD, pa.string()))

SCORE_FIELDS = [
    pa.field("score", pa.float32()),
    pa.field("int_score", pa.int8()),
    pa.field("model", pa.string()),
    pa.field("model_version", pa.string()),
]
TOKEN_FIELDS = [pa.field("tokens", pa.int64())]

# What one scored output shard holds: every document, with its score, tokens and provenance.
SCORED_SCHEMA = pa.schema(list(DOCUMENT_SCHEMA) + SCORE_FIELDS + TOKEN_FIELDS)

RECEIPT_SCHEMA = pa.schema(
    [
        (SHARD_KEY, pa.string()),
        ("kind", pa.string()),  # "part" | "end" | "error"
        ("part", pa.string()),  # part file name (kind == "part")
        ("rows", pa.int64()),
        ("info", pa.string()),  # JSON: end-of-shard accounting, or the error
    ]
)


@dataclass(frozen=True, slots=True)
class StageResources:
    """What one worker running a stage needs; the Ray job passes these to Ray unchanged."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int | None = None  # rows per call; None = whatever arrives

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"resources must be non-negative, got {self}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def shard_key(path: str | os.PathLike) -> str:
    """A stable, collision-free output name for an input shard.

    The basename keeps it readable; a hash of the absolute path keeps
    `a/part-0.parquet` and `b/part-0.parquet` apart.
    """
    import hashlib

    absolute = os.path.abspath(os.fspath(path))
    base = os.path.basename(absolute)
    for suffix in (".gz", ".zst", ".bz2", ".xz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)[:80].strip(".") or "shard"
    digest = hashlib.sha1(absolute.encode("utf-8", errors="surrogatepass")).hexdigest()[:10]
    return f"{stem}-{digest}"


def score_bins(scores: np.ndarray) -> np.ndarray:
    """Histogram bin of each score (0..HISTOGRAM_BINS-1); shared by `score` stats and `select`."""
    bins = np.floor(np.asarray(scores, dtype=np.float64) / BIN_WIDTH).astype(np.int64)
    return np.clip(bins, 0, HISTOGRAM_BINS - 1)


def _is_document(table: pa.Table) -> np.ndarray:
    return pc.is_null(table[END_OF_SHARD]).to_numpy(zero_copy_only=False)


def _with_columns(table: pa.Table, fields: list[pa.Field], values: list[Any]) -> pa.Table:
    for f, v in zip(fields, values):
        index = table.schema.get_field_index(f.name)
        column = pa.array(v, type=f.type)
        table = table.set_column(index, f, column) if index >= 0 else table.append_column(f, column)
    return table


class ReadShard:
    """Reads one input shard with the project's readers (HTML/WARC are extracted there).

    Called with a one-row table {path, shard_key}; yields document batches of at most
    `batch_rows` rows, then exactly one end-of-shard row. A shard the readers reject
    (`ShardError`) or that breaks in any other way does not raise: its end row carries
    the error, so only that shard fails and the reason reaches the job summary.
    """

    resources = StageResources(num_cpus=1.0)

    def __init__(self, source: str, batch_rows: int = 1000, options: dict[str, Any] | None = None):
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
        self.source = source
        self.batch_rows = batch_rows
        self.options = dict(options or {})

    def setup(self) -> None:
        pass

    def __call__(self, tasks: pa.Table) -> Iterator[pa.Table]:
        for task in tasks.to_pylist():
            yield from self.read_one(task["path"], task[SHARD_KEY])

    def read_one(self, path: str, key: str) -> Iterator[pa.Table]:
        from edufilter.readers import read_shard

        started = time.time()
        documents = 0
        bad: Counter[str] = Counter()
        bad_examples: list[dict[str, Any]] = []
        error: str | None = None
        pending: list[dict[str, Any]] = []
        try:
            for item in read_shard(self.source, path, **self.options):
                if isinstance(item, BadDocument):
                    bad[item.reason] += 1
                    if len(bad_examples) < BAD_EXAMPLES_KEPT:
                        bad_examples.append({"row": item.row, "reason": item.reason, "detail": item.detail[:300]})
                    continue
                row = item.to_row()
                row[SHARD_KEY] = key
                row[END_OF_SHARD] = None
                pending.append(row)
                documents += 1
                if len(pending) >= self.batch_rows:
                    yield pa.Table.from_pylist(pending, schema=READ_SCHEMA)
                    pending = []
        except Exception as exc:  # noqa: BLE001 - a broken shard must fail alone, with its reason recorded
            error = f"{type(exc).__name__}: {exc}"
            if not _is_expected_shard_error(exc):
                error += "\n" + traceback.format_exc(limit=5)
        if pending and error is None:
            yield pa.Table.from_pylist(pending, schema=READ_SCHEMA)
        end = {
            "path": path,
            "documents": documents,
            "bad": dict(sorted(bad.items())),
            "bad_examples": bad_examples,
            "error": error,
            "read_started": started,
            "read_seconds": round(time.time() - started, 3),
        }
        yield pa.Table.from_pylist(
            [{"id": f"{key}#end", "text": "", "domain": "", "source": self.source, "url": None, "shard": path,
              "row": -1, "metadata": "{}", SHARD_KEY: key, END_OF_SHARD: json.dumps(end)}],
            schema=READ_SCHEMA,
        )


def _is_expected_shard_error(exc: BaseException) -> bool:
    try:
        from edufilter.readers import ShardError
    except ImportError:  # pragma: no cover - readers not importable: every error is unexpected
        return False
    return isinstance(exc, (ShardError, OSError, UnicodeError))


class ScoreDocuments:
    """Adds score (0-5), int_score, model and model_version with the project's one `Scorer`."""

    def __init__(self, model_dir: str | os.PathLike, resources: StageResources = StageResources(num_cpus=1.0)):
        self.model_dir = str(model_dir)
        self.resources = resources
        self.scorer = None

    def setup(self) -> None:
        # Loaded here, in the worker, once: never at import and never in the driver.
        from classifier.scorer import Scorer

        self.scorer = Scorer.load(self.model_dir)

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.scorer is None:
            self.setup()
        is_doc = _is_document(table)
        score = np.full(table.num_rows, np.nan, dtype=np.float32)
        int_score = np.zeros(table.num_rows, dtype=np.int8)
        if is_doc.any():
            texts = table["text"].filter(pa.array(is_doc)).to_pylist()
            result = self.scorer.score(texts)
            score[is_doc] = np.asarray(result.score, dtype=np.float32)
            int_score[is_doc] = np.asarray(result.int_score, dtype=np.int8)
        model = [str(self.scorer.model_id)] * table.num_rows
        version = [str(self.scorer.version)] * table.num_rows
        return _with_columns(table, SCORE_FIELDS, [score, int_score, model, version])


class CountTokens:
    """Adds `tokens`: the pretraining tokenizer's count, or the documented estimate (jobs.tokens)."""

    resources = StageResources(num_cpus=1.0)

    def __init__(self, tokenizer_dir: str | os.PathLike | None = None):
        self.tokenizer_dir = None if tokenizer_dir is None else str(tokenizer_dir)
        self.counter = None

    def setup(self) -> None:
        from jobs.tokens import load_token_counter

        self.counter = load_token_counter(self.tokenizer_dir)

    @property
    def counter_name(self) -> str:
        from jobs.tokens import load_token_counter

        return (self.counter or load_token_counter(self.tokenizer_dir)).name

    def __call__(self, table: pa.Table) -> pa.Table:
        if self.counter is None:
            self.setup()
        is_doc = _is_document(table)
        tokens = np.zeros(table.num_rows, dtype=np.int64)
        if is_doc.any():
            texts = table["text"].filter(pa.array(is_doc))
            count_arrow = getattr(self.counter, "count_arrow", None)
            tokens[is_doc] = count_arrow(texts) if count_arrow else self.counter.count(texts.to_pylist())
        return _with_columns(table, TOKEN_FIELDS, [tokens])


class WriteParts:
    """The sink: writes the documents of a batch, one part file per shard present in it.

    Part names are `<first row>-<last row>.parquet` inside `_parts/<shard_key>/`, so a
    batch that Ray re-executes after a lost worker rewrites the same file with the same
    rows instead of adding a second copy. Returns one receipt per part and one per
    end-of-shard row; the driver assembles shards from the receipts.
    """

    resources = StageResources(num_cpus=1.0)

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = str(out_dir)

    def setup(self) -> None:
        pass

    def __call__(self, table: pa.Table) -> pa.Table:
        receipts: list[dict[str, Any]] = []
        is_doc = _is_document(table)
        ends = table.filter(pa.array(~is_doc))
        for key, info in zip(ends[SHARD_KEY].to_pylist(), ends[END_OF_SHARD].to_pylist()):
            receipts.append({SHARD_KEY: key, "kind": "end", "part": None, "rows": 0, "info": info})
        docs = table.filter(pa.array(is_doc))
        if docs.num_rows:
            keys = docs[SHARD_KEY].to_numpy(zero_copy_only=False)
            for key in sorted(set(keys.tolist())):
                part = docs.filter(pa.array(keys == key)).select(SCORED_SCHEMA.names).cast(SCORED_SCHEMA)
                rows = part["row"].to_numpy()
                name = f"{int(rows.min()):012d}-{int(rows.max()):012d}.parquet"
                # Parts live seconds and are read back once: not compressing them saves the actor's CPU.
                write_parquet_atomic(Path(self.out_dir) / "_parts" / key / name, part, compression="none")
                receipts.append({SHARD_KEY: key, "kind": "part", "part": name, "rows": part.num_rows, "info": None})
        return pa.Table.from_pylist(receipts, schema=RECEIPT_SCHEMA)


class StagePipeline:
    """Runs a list of batch stages in one worker: setup once, then each batch through all of them.

    Keeping score, token count and write in one worker means a batch's text crosses
    the object store once. An exception in a stage does not kill the worker: every
    shard present in the failed batch gets an "error" receipt, so those shards fail
    (and are retried by the next run) while the job goes on.
    """

    def __init__(self, stages: Sequence[Callable[[pa.Table], pa.Table]]):
        self.stages = list(stages)
        for stage in self.stages:
            stage.setup()

    def __call__(self, table: pa.Table) -> pa.Table:
        try:
            for stage in self.stages:
                table = stage(table)
            return table
        except Exception as exc:  # noqa: BLE001 - recorded per shard, see docstring
            error = json.dumps({"error": f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=5)})
            keys = sorted(set(table[SHARD_KEY].to_pylist())) if SHARD_KEY in table.column_names else []
            return pa.Table.from_pylist(
                [{SHARD_KEY: k, "kind": "error", "part": None, "rows": 0, "info": error} for k in keys],
                schema=RECEIPT_SCHEMA,
            )


class ShardPipeline:
    """Reads one shard, scores it and writes its output shard, all in one worker (CPU layout).

    Each worker takes one whole shard per task, so every CPU scores, reading and extraction
    spread over the same workers, no document text crosses the object store, and the output
    is streamed once (row group per batch) to a temporary name and renamed when the shard is
    complete. A task that Ray re-executes (lost worker) starts the shard again in a new
    temporary file, so the output holds every document exactly once. Returns one receipt
    per shard: kind "shard" with its stats, or "error" with the reason.
    Jobs with GPU scorers use ReadShard tasks feeding StagePipeline actors instead.
    """

    def __init__(self, read: ReadShard, stages: Sequence[Any], batch_size: int, out_dir: str | os.PathLike,
                 source: str):
        self.read = read
        self.stages = list(stages)
        self.batch_size = batch_size
        self.out_dir = Path(out_dir)
        self.source = source
        for stage in self.stages:
            stage.setup()

    def __call__(self, tasks: pa.Table) -> Iterator[pa.Table]:
        for task in tasks.to_pylist():
            yield self.score_shard(task["path"], task[SHARD_KEY])

    def _receipt(self, key: str, kind: str, info: dict[str, Any]) -> pa.Table:
        return pa.Table.from_pylist([{SHARD_KEY: key, "kind": kind, "part": None, "rows": info.get("documents_out", 0),
                                      "info": json.dumps(info, default=str)}], schema=RECEIPT_SCHEMA)

    def score_shard(self, path: str, key: str) -> pa.Table:
        import pyarrow.parquet as pq

        final = self.out_dir / f"{key}.parquet"
        tmp = self.out_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        writer = pq.ParquetWriter(tmp, SCORED_SCHEMA)
        light: list[pa.Table] = []  # the small columns the stats need, not the text
        end: dict[str, Any] = {}
        try:
            for batch in self.read.read_one(path, key):
                is_doc = _is_document(batch)
                if not is_doc.all():
                    end = json.loads(batch.filter(pa.array(~is_doc))[END_OF_SHARD][0].as_py())
                    batch = batch.filter(pa.array(is_doc))
                for start in range(0, batch.num_rows, self.batch_size):
                    scored = batch.slice(start, self.batch_size)
                    for stage in self.stages:
                        scored = stage(scored)
                    scored = scored.select(SCORED_SCHEMA.names).cast(SCORED_SCHEMA)
                    writer.write_table(scored)
                    text_bytes = pc.binary_length(scored["text"].cast(pa.large_binary()))
                    light.append(scored.select(["domain", "score", "int_score", "tokens", "model", "model_version"])
                                 .append_column("text_bytes", text_bytes))
            writer.close()
            if end.get("error"):
                return self._receipt(key, "error", {"error": end["error"]})
            table = pa.concat_tables(light) if light else pa.table(
                {"domain": pa.array([], pa.string()), "score": pa.array([], pa.float32()),
                 "int_score": pa.array([], pa.int8()), "tokens": pa.array([], pa.int64()),
                 "model": pa.array([], pa.string()), "model_version": pa.array([], pa.string()),
                 "text_bytes": pa.array([], pa.int64())})
            if table.num_rows != end.get("documents"):
                raise RuntimeError(f"wrote {table.num_rows} documents, the reader reported {end.get('documents')}")
            os.replace(tmp, final)
            score_stage = next((s for s in self.stages if isinstance(s, ScoreDocuments)), None)
            token_stage = next((s for s in self.stages if isinstance(s, CountTokens)), None)
            stats = shard_stats(
                table, end, key=key, source=self.source,
                token_counter=token_stage.counter_name if token_stage else "none",
                keep_threshold=float(score_stage.scorer.threshold) if score_stage else 3.0,
                seconds=time.time() - float(end.get("read_started", time.time())))
            return self._receipt(key, "shard", stats)
        except Exception as exc:  # noqa: BLE001 - this shard fails with its reason; the job goes on
            return self._receipt(key, "error", {"error": f"{type(exc).__name__}: {exc}\n" + traceback.format_exc(limit=5)})
        finally:
            writer.close()  # idempotent
            tmp.unlink(missing_ok=True)  # only left when the shard failed


def shard_stats(table: pa.Table, end: dict[str, Any], *, key: str, source: str, token_counter: str,
                keep_threshold: float, seconds: float) -> dict[str, Any]:
    scores = table["score"].to_numpy(zero_copy_only=False).astype(np.float64)
    int_scores = table["int_score"].to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = table["tokens"].to_numpy(zero_copy_only=False).astype(np.int64)
    if "text_bytes" in table.column_names:
        text_bytes = pc.sum(table["text_bytes"]).as_py() or 0
    else:
        text_bytes = pc.sum(pc.binary_length(table["text"].cast(pa.large_binary()))).as_py() or 0
    bins = score_bins(scores)
    domains = np.asarray(table["domain"].to_pylist(), dtype=object)
    fine: dict[str, dict[str, list[int]]] = {}
    for domain in sorted(set(domains.tolist())):
        mask = domains == domain
        docs_per_bin = np.bincount(bins[mask], minlength=1)
        tokens_per_bin = np.bincount(bins[mask], weights=tokens[mask], minlength=1)
        fine[domain] = {str(b): [int(docs_per_bin[b]), int(tokens_per_bin[b])] for b in np.nonzero(docs_per_bin)[0]}
    keep = scores >= keep_threshold
    bad = end.get("bad", {})
    return {
        "stats_version": STATS_VERSION,
        "shard_key": key,
        "path": end.get("path"),
        "source": source,
        "domains": dict(Counter(table["domain"].to_pylist())),
        "models": sorted(set(zip(table["model"].to_pylist(), table["model_version"].to_pylist()))),
        "token_counter": token_counter,
        "documents_in": int(end.get("documents", 0)) + int(sum(bad.values())),
        "documents_out": table.num_rows,
        "bad": bad,
        "bad_examples": end.get("bad_examples", []),
        "bytes": int(text_bytes),
        "tokens": int(tokens.sum()),
        "keep_threshold": keep_threshold,
        "kept_documents": int(keep.sum()),
        "kept_tokens": int(tokens[keep].sum()),
        "score_histogram": np.bincount(np.clip(int_scores, 0, 5), minlength=6).tolist(),
        "token_histogram": fine,  # domain -> 0.01-wide score bin -> [documents, tokens]
        "read_seconds": end.get("read_seconds"),
        "seconds": round(seconds, 3),
    }


def pipeline_resources(stages: Iterable[Any]) -> StageResources:
    """Resources of one worker running several stages: the most any one of them declares."""
    stages = list(stages)
    batch_sizes = [s.resources.batch_size for s in stages if s.resources.batch_size]
    return StageResources(
        num_cpus=max(s.resources.num_cpus for s in stages),
        num_gpus=max(s.resources.num_gpus for s in stages),
        batch_size=min(batch_sizes) if batch_sizes else None,
    )


def task_table(paths_and_keys: Iterable[tuple[str, str]]) -> pa.Table:
    pairs = list(paths_and_keys)
    return pa.table({"path": [p for p, _ in pairs], SHARD_KEY: [k for _, k in pairs]})


def run_local(worker: "ShardPipeline", tasks: pa.Table) -> Iterator[pa.Table]:
    """The same worker without Ray, in this process: yields the receipts the Ray job would yield."""
    for i in range(tasks.num_rows):
        yield from worker(tasks.slice(i, 1))


def documents_table(documents: Iterable[Document]) -> pa.Table:
    """Documents as a table with the read schema (used by tests and the benchmark)."""
    rows = []
    for d in documents:
        row = d.to_row()
        row[SHARD_KEY] = d.shard
        row[END_OF_SHARD] = None
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=READ_SCHEMA)
