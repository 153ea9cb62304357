"""`edufilter score`: score corpus shards with a classifier on Ray Data.

    python -m jobs.score --model DIR --source refinedweb --input 'data/*.parquet' --output scored/

The same module is the entrypoint on a laptop (an embedded local Ray is
started), under `ray job submit -- python -m jobs.score ...` and in the KubeRay
RayJob (both set RAY_ADDRESS, so the job joins the cluster). The stages are in
`jobs.stages` and know nothing of Ray; this module only wires them:

    from_items(one row per input shard)
      CPU scorer (fastText):
      -> map_batches(ShardPipeline)    actor pool, one task per shard: ReadShard -> ScoreDocuments
                                       -> CountTokens -> the shard's output file, streamed once
      GPU scorer (embeddings, --num-gpus), or --separate-readers:
      -> map_batches(ReadShard)        CPU tasks, one per shard
      -> map_batches(StagePipeline)    GPU actor pool: ScoreDocuments -> CountTokens -> WriteParts
      -> driver: receipts -> assemble each finished shard, stats, completion marker

On a cluster OUT_DIR must be a filesystem every node sees (NFS, a shared PVC).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from edufilter.io import write_json_atomic
from jobs.layout import IncompleteShard, ScoredDir, ShardProgress, format_table, summarize
from jobs.stages import (
    SHARD_KEY,
    CountTokens,
    ReadShard,
    ScoreDocuments,
    ShardPipeline,
    StagePipeline,
    StageResources,
    WriteParts,
    pipeline_resources,
    run_local,
    shard_key,
    task_table,
)

log = logging.getLogger(__name__)

SOURCES = ("refinedweb", "fineweb", "the-stack", "stackoverflow", "html", "warc", "jsonl")
DEFAULT_KEEP_THRESHOLD = 3.0  # FineWeb-Edu's convention, used only when the model states no threshold


@dataclass(frozen=True)
class ScoreConfig:
    model: str
    source: str
    input: str
    output: str
    ray_address: str | None = None
    num_cpus: int | None = None
    num_gpus: float = 0.0
    batch_size: int = 512
    tokenizer: str | None = None
    concurrency: int | None = None
    read_batch_rows: int = 2000
    reader_options: tuple[tuple[str, Any], ...] = ()  # e.g. (("languages", ["Python"]),) for the-stack
    separate_readers: bool = False  # read in CPU tasks apart from the scoring actors (always with GPUs)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown --source {self.source!r}; expected one of {', '.join(SOURCES)}")
        if not Path(self.model).is_dir():
            raise ValueError(f"--model {self.model}: not a model folder")
        if self.tokenizer is not None and not Path(self.tokenizer).exists():
            raise ValueError(f"--tokenizer {self.tokenizer}: does not exist")
        if self.batch_size < 1 or self.read_batch_rows < 1:
            raise ValueError("--batch-size and --read-batch-rows must be >= 1")
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError("--num-cpus must be >= 1")
        if self.num_gpus < 0:
            raise ValueError("--num-gpus must be >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter score",
        description="Score every document of corpus shards with a classifier on Ray Data; one scored parquet "
        "shard per input shard (all documents kept), stats, completion markers and a job summary. "
        "Rerunning skips completed shards.",
    )
    p.add_argument("--model", required=True, help="trained classifier folder (edufilter train --output)")
    p.add_argument("--source", required=True, choices=SOURCES, help="input format / dataset reader")
    p.add_argument("--input", required=True, help="input file, folder or glob (quote globs)")
    p.add_argument("--output", required=True, help="scored-output folder (shared by all nodes on a cluster)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (default: $RAY_ADDRESS if set, else start an embedded local Ray)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the embedded local Ray (default: all of this machine); ignored on a cluster")
    p.add_argument("--num-gpus", type=float, default=0.0,
                   help="GPUs per scoring actor (embedding models); 0 for fastText")
    p.add_argument("--batch-size", type=int, default=512, help="documents per scoring call")
    p.add_argument("--tokenizer", default=None,
                   help="pretraining tokenizer folder for exact token counts (default: estimate, 4 UTF-8 bytes/token)")
    p.add_argument("--concurrency", type=int, default=None,
                   help="scoring actors (default: one per CPU of the cluster, at most one per shard; GPU jobs: "
                   "autoscale up to GPUs / --num-gpus)")
    p.add_argument("--read-batch-rows", type=int, default=2000, help="documents per block produced by a read task")
    p.add_argument("--separate-readers", action="store_true",
                   help="read shards in CPU tasks apart from the scoring actors (the layout GPU jobs always use; "
                   "default for CPU scorers: each actor reads and scores its own shard)")
    p.add_argument("--reader-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the source's reader, VALUE as JSON or a plain string "
                   "(e.g. languages='[\"Python\"]' for the-stack, text_field=content for jsonl); repeatable")
    return p


def parse_reader_options(items: list[str]) -> tuple[tuple[str, Any], ...]:
    options = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--reader-option {item!r}: expected KEY=VALUE")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        options.append((key, tuple(parsed) if isinstance(parsed, list) else parsed))
    return tuple(options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = ScoreConfig(
            model=args.model, source=args.source, input=args.input, output=args.output,
            ray_address=args.ray_address, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
            batch_size=args.batch_size, tokenizer=args.tokenizer, concurrency=args.concurrency,
            read_batch_rows=args.read_batch_rows, reader_options=parse_reader_options(args.reader_option),
            separate_readers=args.separate_readers,
        )
        from classifier.artefact import read_artefact
        from edufilter.readers import make_reader

        # A broken model or an unknown reader option fails here, with its reason, not in every Ray task.
        read_artefact(config.model, verify=True)
        make_reader(config.source, dict(config.reader_options))
    except ValueError as exc:
        print(f"edufilter score: {exc}", file=sys.stderr)
        return 2
    log.info("edufilter score config: %s", json.dumps(asdict(config), sort_keys=True))
    try:
        summary = run(config)
    except ValueError as exc:  # no such input (ShardError from expand_paths), bad reader option
        print(f"edufilter score: {exc}", file=sys.stderr)
        return 2
    print(format_table(summary))
    return 1 if summary["failed_shards"] else 0


def run(config: ScoreConfig, runner: str = "ray") -> dict[str, Any]:
    """Score every not-yet-completed shard of `config.input`; returns the job summary (also written).

    runner="local" runs the same stages in this process without Ray (tests, debugging).
    """
    from edufilter.readers import expand_paths

    started = time.time()
    out = ScoredDir(config.output)
    paths = sorted({os.path.abspath(p) for p in expand_paths(config.input)})
    keys = {p: shard_key(p) for p in paths}
    done = out.completed_keys()
    todo = [(p, keys[p]) for p in paths if keys[p] not in done]
    log.info("%d input shards: %d already complete, %d to score", len(paths), len(paths) - len(todo), len(todo))
    for _, key in todo:
        out.discard_parts(key)  # a killed earlier attempt restarts from the shard's first row

    failures: dict[str, dict[str, Any]] = {}
    completed: list[dict[str, Any]] = []
    nodes = 0
    if todo:
        execute = score_locally if runner == "local" else _score_on_ray
        completed, failures, nodes = execute(config, todo, out)

    seconds = time.time() - started
    documents = sum(s["documents_in"] for s in completed)
    megabytes = sum(s["bytes"] for s in completed) / 1e6
    run_info = {
        "config": asdict(config),
        "command": sys.argv,
        "shards_total": len(paths),
        "shards_done": len(completed),
        "shards_skipped": len(paths) - len(todo),
        "shards_failed": len(failures),
        "ray_nodes": nodes,
        "documents": documents,
        "tokens": sum(s["tokens"] for s in completed),
        "megabytes": round(megabytes, 3),
        "seconds": round(seconds, 3),
        "documents_per_second": round(documents / seconds, 1) if seconds else 0.0,
        "megabytes_per_second": round(megabytes / seconds, 3) if seconds else 0.0,
    }
    summary = summarize(out, failures, run_info)
    write_json_atomic(out.summary_path, summary)
    log.info("summary written to %s", out.summary_path)
    return summary


def _model_keep_threshold(model_dir: str) -> float:
    """The artefact's own threshold, for the "kept" preview in the summary (selection is `select`'s job)."""
    info_path = Path(model_dir) / "model.json"
    try:
        value = json.loads(info_path.read_text(encoding="utf-8")).get("threshold")
        return float(value) if value is not None else DEFAULT_KEEP_THRESHOLD
    except (OSError, ValueError):
        return DEFAULT_KEEP_THRESHOLD


def build_stages(config: ScoreConfig) -> tuple[ReadShard, list[Any]]:
    """The job's reader and batch stages, the same for the Ray and the local runner."""
    score_stage = ScoreDocuments(
        config.model, StageResources(num_cpus=1.0, num_gpus=config.num_gpus, batch_size=config.batch_size))
    read = ReadShard(config.source, batch_rows=config.read_batch_rows, options=dict(config.reader_options))
    return read, [score_stage, CountTokens(config.tokenizer)]


class ShardAssembler:
    """Driver side: turns the stream of receipts into completed shards (or recorded failures)."""

    def __init__(self, config: ScoreConfig, todo: list[tuple[str, str]], out: ScoredDir, token_counter: str):
        self.config = config
        self.out = out
        self.token_counter = token_counter
        self.keep_threshold = _model_keep_threshold(config.model)
        self.progress = {k: ShardProgress(key=k, path=p) for p, k in todo}
        self.completed: dict[str, dict[str, Any]] = {}
        self.failures: dict[str, dict[str, Any]] = {}
        self.started = time.time()

    def add(self, receipts: pa.Table) -> None:
        for r in receipts.to_pylist():
            shard = self.progress[r[SHARD_KEY]]
            if r["kind"] == "shard":  # a whole shard written by one worker (CPU layout)
                if shard.key not in self.completed and shard.key not in self.failures:
                    stats = json.loads(r["info"])
                    self.out.commit(shard.key, shard.path, stats)
                    self.completed[shard.key] = stats
                    log.info("shard done: %s (%d documents, %d tokens)", shard.path, stats["documents_out"],
                             stats["tokens"])
                continue
            if r["kind"] == "part":
                shard.parts[r["part"]] = r["rows"]
            elif r["kind"] == "end":
                shard.end = json.loads(r["info"])
                shard.error = shard.error or shard.end.get("error")
            else:
                shard.error = shard.error or json.loads(r["info"])["error"]
            if shard.error:
                self.fail(shard.key, shard.error)
            self.try_finalize(shard)

    def fail(self, key: str, reason: str) -> None:
        if key not in self.failures and key not in self.completed:
            self.failures[key] = {"path": self.progress[key].path, "reason": reason}
            log.error("shard failed: %s: %s", self.progress[key].path, reason.splitlines()[0])

    def try_finalize(self, shard: ShardProgress) -> None:
        if not shard.ready() or shard.key in self.failures or shard.key in self.completed:
            return
        try:
            stats = self.out.finalize(shard, source=self.config.source, token_counter=self.token_counter,
                                      keep_threshold=self.keep_threshold,
                                      started=shard.end.get("read_started", self.started))
        except IncompleteShard:
            return  # parts of a re-executed batch may still arrive; judged again in close()
        self.completed[shard.key] = stats
        log.info("shard done: %s (%d documents, %d tokens)", shard.path, stats["documents_out"], stats["tokens"])

    def abort(self, exc: BaseException) -> None:
        """The job itself broke: every unfinished shard is reported failed."""
        for key in self.progress:
            self.fail(key, f"job failed: {type(exc).__name__}: {exc}")

    def close(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        for key, shard in self.progress.items():
            if key in self.completed:
                continue
            self.try_finalize(shard)
            if key in self.completed:
                continue
            if key not in self.failures:
                seen = "no end-of-shard record" if shard.end is None else (
                    f"{shard.rows_seen} of {shard.end['documents']} documents written")
                self.fail(key, f"incomplete: {seen}")
            self.out.discard_parts(key)  # a failed shard leaves nothing behind; the next run redoes it
        return [self.completed[k] for k in sorted(self.completed)], self.failures


def score_locally(config: ScoreConfig, todo: list[tuple[str, str]], out: ScoredDir):
    """The same worker and assembly without Ray, in this process (tests compare it with the Ray output)."""
    read, stages = build_stages(config)
    assembler = ShardAssembler(config, todo, out, stages[1].counter_name)
    worker = ShardPipeline(read, stages, config.batch_size, config.output, config.source)
    for receipts in run_local(worker, task_table(todo)):
        assembler.add(receipts)
    completed, failures = assembler.close()
    return completed, failures, 0


def _connect(config: ScoreConfig):
    import ray

    if ray.is_initialized():
        return ray, False  # already connected (tests, notebooks): reuse, and leave it running
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address)
    else:
        num_cpus = config.num_cpus or os.cpu_count() or 1
        log.info("starting an embedded local Ray with %d CPUs", num_cpus)
        ray.init(address="local", num_cpus=num_cpus, num_gpus=None if config.num_gpus else 0,
                 include_dashboard=False)
    return ray, True


def _score_on_ray(config: ScoreConfig, todo: list[tuple[str, str]], out: ScoredDir):
    ray, owned = _connect(config)
    try:
        return _execute(ray, config, todo, out)
    finally:
        if owned:
            ray.shutdown()


def _execute(ray, config: ScoreConfig, todo: list[tuple[str, str]], out: ScoredDir):
    import ray.data

    cluster = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    log.info("Ray cluster: %d alive node(s), %s", len(nodes),
             {k: v for k, v in cluster.items() if k in ("CPU", "GPU", "memory")})
    cpus = max(1, int(cluster.get("CPU", 1)))
    read, stages = build_stages(config)
    resources = pipeline_resources(stages)
    # One block per input shard, so that one task handles exactly one shard.
    ds = ray.data.from_items(task_table(todo).to_pylist(), override_num_blocks=len(todo))
    if not config.num_gpus and not config.separate_readers:
        # CPU scorer (fastText): each actor reads a shard and scores it itself, so every CPU
        # scores and no text crosses the object store. The Scorer loads once per actor.
        # A fixed pool: all actors start (and load the model) at once instead of one by one.
        pool = ray.data.ActorPoolStrategy(size=config.concurrency or min(cpus, len(todo)))
        log.info("scoring %d shards: up to %s actors reading and scoring, %s each", len(todo), pool.max_size,
                 resources)
        ds = ds.map_batches(ShardPipeline, fn_constructor_args=(read, stages, resources.batch_size, config.output,
                                                                config.source),
                            batch_size=1, batch_format="pyarrow", compute=pool, num_cpus=resources.num_cpus)
    else:
        # GPU scorer (embeddings) or --separate-readers: read tasks on CPUs feed the scoring actors
        # (which hold the GPUs); batches of several shards are scored together, written as part
        # files, and the driver assembles each shard once all its parts are in.
        gpus = cluster.get("GPU", 0)
        if gpus < config.num_gpus:
            raise ValueError(f"--num-gpus {config.num_gpus} per actor, but the Ray cluster has {gpus} GPUs")
        most = int(gpus // config.num_gpus) if config.num_gpus else max(1, cpus - 1)
        pool = ray.data.ActorPoolStrategy(size=config.concurrency) if config.concurrency else \
            ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, most))
        # Read tasks are capped at one per CPU (at most that many shards open at once bounds memory);
        # the cap differs from the pool size on purpose: Ray Data fuses a task map into the next
        # actor map when they match, which would move reading onto the GPU actors.
        read_tasks = cpus + (1 if cpus == pool.max_size else 0)
        warnings.filterwarnings("ignore", message=".*concurrent tasks for 'MapBatches\\(ReadShard\\)'.*")
        log.info("scoring %d shards: up to %s scoring actors with %s each; up to %d read tasks", len(todo), pool.max_size,
                 resources, read_tasks)
        ds = ds.map_batches(read, batch_size=1, batch_format="pyarrow", num_cpus=read.resources.num_cpus,
                            compute=ray.data.TaskPoolStrategy(size=read_tasks))
        ds = ds.map_batches(StagePipeline, fn_constructor_args=(stages + [WriteParts(config.output)],),
                            batch_size=resources.batch_size,
                            batch_format="pyarrow", compute=pool, num_cpus=resources.num_cpus,
                            num_gpus=resources.num_gpus or None)

    assembler = ShardAssembler(config, todo, out, stages[1].counter_name)
    try:
        for receipts in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            assembler.add(receipts)
    except Exception as exc:  # noqa: BLE001 - recorded against every unfinished shard, exit status 1
        log.exception("the Ray job failed")
        assembler.abort(exc)
    completed, failures = assembler.close()
    return completed, failures, len(nodes)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    sys.exit(main())
