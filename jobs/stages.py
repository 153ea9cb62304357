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
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from edufilter.documents import DOCUMENT_SCHEMA, BadDocument, Document
from edufilter.io import write_parquet_atomic

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
    """Reads whole shards and runs the stages on their batches, all in one worker.

    This is the CPU layout: each worker takes one shard at a time (one task per shard),
    so every CPU scores, reading and extraction spread over the same workers, and no
    document text crosses the object store. Jobs with GPU scorers keep reading on CPU
    tasks instead, feeding StagePipeline actors that hold the GPUs.
    """

    def __init__(self, read: ReadShard, stages: Sequence[Callable[[pa.Table], pa.Table]], batch_size: int):
        self.read = read
        self.pipeline = StagePipeline(stages)
        self.batch_size = batch_size

    def __call__(self, tasks: pa.Table) -> Iterator[pa.Table]:
        for batch in self.read(tasks):
            for start in range(0, batch.num_rows, self.batch_size):
                yield self.pipeline(batch.slice(start, self.batch_size))


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


def run_local(read: ReadShard, stages: Sequence[Any], tasks: pa.Table, batch_size: int = 256) -> Iterator[pa.Table]:
    """The same stages without Ray, in this process: yields the receipts the Ray job would yield."""
    worker = ShardPipeline(read, stages, batch_size)
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
