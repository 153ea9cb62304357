"""`edufilter label`: draw a sample, label it with an LLM (or replay recorded
labels), write the labels parquet. `edufilter label agree A B`: agreement
between two label files.

Running the same command again after an interruption resumes: the sample is
drawn again identically (seeded, order-independent) and every answer already
in the cache is reused without asking.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from edufilter.documents import DOMAINS, Document, content_hash

log = logging.getLogger(__name__)

EXIT_FAILED_DOCUMENTS = 3  # labels written, but some documents failed; rerun to retry them


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter label",
        description="Label a seeded, stratified sample of documents 0-5 for educational value with an LLM. "
        "Every answer is cached as it arrives; rerunning the same command resumes. "
        "Sub-command: `edufilter label agree A B` compares two label files.",
        epilog="API key: $EDUFILTER_LLM_API_KEY or $OPENAI_API_KEY (or the variable named by --api-key-env).",
    )
    data = p.add_argument_group("documents")
    data.add_argument("--source", required=True,
                      help="input format for edufilter.readers (refinedweb, fineweb, the-stack, stackoverflow, html, "
                      "warc, jsonl, auto), or 'labels' to relabel a label file (parquet/jsonl/json/csv with text)")
    data.add_argument("--input", required=True, nargs="+", help="input file(s), folder(s) or glob(s)")
    data.add_argument("--domain", required=True, choices=DOMAINS, help="which rubric/prompt to label with")
    data.add_argument("--limit", type=int, help="label at most this many documents (default: all)")
    data.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same sample)")
    data.add_argument("--exclude", nargs="*", default=[],
                      help="label files whose documents (by text) are already labelled and must not be drawn again")
    data.add_argument("--select", choices=["random", "uncertain"], default="random",
                      help="random: stratified sample; uncertain: the documents the classifier(s) are least sure about")
    data.add_argument("--model-dir", action="append", default=[],
                      help="classifier folder for --select uncertain (repeat, or comma-separate, for two classifiers)")
    data.add_argument("--pool-factor", type=int, default=10,
                      help="--select uncertain scores a stratified pool of limit x this many candidates")

    backend = p.add_argument_group("annotator")
    backend.add_argument("--backend", required=True, choices=["openai", "transformers", "replay"],
                         help="openai: any OpenAI-compatible /v1/chat/completions endpoint; transformers: a local chat "
                         "model folder; replay: recorded answers from --cache only")
    backend.add_argument("--model",
                         help="model name: sent to the endpoint (openai), the annotator whose answers to replay "
                         "(replay), or the local model folder (transformers)")
    backend.add_argument("--annotator-name", help="transformers: name stamped on labels (default: the folder name)")
    backend.add_argument("--endpoint", action="append", default=[],
                         help="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1 "
                         "(repeat or comma-separate for several replicas: requests are spread round-robin)")
    backend.add_argument("--api-key-env", help="environment variable holding the API key "
                         "(default: EDUFILTER_LLM_API_KEY, then OPENAI_API_KEY)")
    backend.add_argument("--concurrency", type=int, default=16, help="openai: requests in flight (per Ray actor with --ray)")
    backend.add_argument("--timeout", type=float, default=120.0, help="openai: seconds allowed per request")
    backend.add_argument("--max-retries", type=int, default=6,
                         help="openai: retries on 429/5xx/timeouts/malformed answers (exponential backoff, jitter, "
                         "Retry-After honoured)")
    backend.add_argument("--backoff-base", type=float, default=1.0,
                         help="openai: the n-th retry waits a random time up to this many seconds x 2^n (max 60s)")
    backend.add_argument("--max-new-tokens", type=int, default=300, help="generation limit per answer")
    backend.add_argument("--temperature", type=float, default=0.0, help="openai: sampling temperature")
    backend.add_argument("--max-tokens-budget", type=int,
                         help="stop asking once this many tokens (prompt + completion) were used in this run")
    backend.add_argument("--batch-size", type=int, default=8, help="transformers: documents per generate() call")
    backend.add_argument("--device", help="transformers: torch device (default: cuda when available, else cpu)")

    ray = p.add_argument_group("scale-out")
    ray.add_argument("--ray", action="store_true", help="openai: fan out over Ray Data actors (see labelling/README.md)")
    ray.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local instance)")
    ray.add_argument("--ray-actors", type=int, default=2, help="number of labelling actors")
    ray.add_argument("--ray-batch-size", type=int, default=64, help="documents per actor batch")

    out = p.add_argument_group("output")
    out.add_argument("--output", required=True, help="labels parquet to write (atomically)")
    out.add_argument("--cache", help="answer cache folder (default: OUTPUT.cache beside the output)")
    out.add_argument("--summary", help="also write the run summary as JSON here (default: OUTPUT.summary.json)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass(frozen=True)
class LabelCommand:
    """The resolved configuration of one `edufilter label` run (logged at start)."""

    source: str
    inputs: tuple[str, ...]
    domain: str
    backend: str
    model: str | None
    endpoints: tuple[str, ...]
    output: str
    cache: str
    summary: str
    limit: int | None
    seed: int
    select: str
    model_dirs: tuple[str, ...]
    pool_factor: int
    max_tokens_budget: int | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "LabelCommand":
        endpoints = tuple(e.strip() for arg in args.endpoint for e in arg.split(",") if e.strip())
        model_dirs = tuple(d.strip() for arg in args.model_dir for d in arg.split(",") if d.strip())
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {args.limit}")
        if args.max_tokens_budget is not None and args.max_tokens_budget < 1:
            raise ValueError(f"--max-tokens-budget must be >= 1, got {args.max_tokens_budget}")
        if args.select == "uncertain" and not model_dirs:
            raise ValueError("--select uncertain needs --model-dir CLASSIFIER_DIR")
        if args.select == "uncertain" and args.limit is None:
            raise ValueError("--select uncertain needs --limit (how many documents to pick)")
        if args.pool_factor < 1:
            raise ValueError(f"--pool-factor must be >= 1, got {args.pool_factor}")
        if args.backend == "openai" and not endpoints:
            raise ValueError("--backend openai needs --endpoint URL")
        if args.backend in ("openai", "replay", "transformers") and not args.model:
            raise ValueError(f"--backend {args.backend} needs --model")
        output = str(args.output)
        return cls(
            source=args.source,
            inputs=tuple(args.input),
            domain=args.domain,
            backend=args.backend,
            model=args.model,
            endpoints=endpoints,
            output=output,
            cache=args.cache or output + ".cache",
            summary=args.summary or output + ".summary.json",
            limit=args.limit,
            seed=args.seed,
            select=args.select,
            model_dirs=model_dirs,
            pool_factor=args.pool_factor,
            max_tokens_budget=args.max_tokens_budget,
        )


def read_input_documents(source: str, inputs: tuple[str, ...], domain: str):
    """Documents from a reader of edufilter.readers, or from a label file (`--source labels`)."""
    if source == "labels":
        from edufilter.labelling.labelfiles import label_file_documents

        for path in inputs:
            yield from label_file_documents(path, domain)
        return
    from edufilter.readers import read_documents

    yield from read_documents(source, list(inputs))


def excluded_hashes(paths: list[str]) -> set[str]:
    from edufilter.labelling.labelfiles import read_label_rows, text_of

    hashes = set()
    for path in paths:
        for row in read_label_rows(path):
            text = text_of(row)
            if text:
                hashes.add(content_hash(text))
    return hashes


def make_backend(args: argparse.Namespace, cmd: LabelCommand):
    from edufilter.labelling import backends as b

    if cmd.backend == "replay":
        return b.ReplayBackend(cmd.model)
    if cmd.backend == "transformers":
        return b.TransformersBackend(
            b.TransformersConfig(
                model_dir=cmd.model,
                model_name=args.annotator_name,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                device=args.device,
            )
        )
    config = b.OpenAIConfig(
        endpoints=cmd.endpoints,
        model=cmd.model,
        api_key=b.api_key_from_env(args.api_key_env),
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_base_s=args.backoff_base,
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
    )
    if args.ray:
        import ray

        from edufilter.labelling.ray_fanout import RayOpenAIBackend

        if not ray.is_initialized():
            ray.init(address=args.ray_address, configure_logging=False)
        return RayOpenAIBackend(config, actors=args.ray_actors, batch_size=args.ray_batch_size)
    return b.OpenAIBackend(config)


def draw_documents(cmd: LabelCommand, exclude: set[str]) -> list[Document]:
    from edufilter.labelling.sampling import sample_documents

    pool_limit = cmd.limit * cmd.pool_factor if (cmd.select == "uncertain" and cmd.limit) else cmd.limit
    records = read_input_documents(cmd.source, cmd.inputs, cmd.domain)
    documents, stats = sample_documents(records, limit=pool_limit, seed=cmd.seed, exclude_hashes=exclude)
    log.info(
        "sample: %d documents drawn from %d read (%d duplicates, %d excluded, bad: %s) over %d strata",
        len(documents), stats.read, stats.duplicates, stats.excluded, dict(stats.bad) or "none", len(stats.strata),
    )
    for stratum, available in stats.strata.items():
        log.debug("  stratum %-40s %6d available %6d drawn", stratum, available, stats.drawn.get(stratum, 0))
    if cmd.select == "uncertain":
        from edufilter.labelling.select import select_uncertain

        documents = select_uncertain(documents, cmd.model_dirs, cmd.limit).documents
    return documents


def label_main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        cmd = LabelCommand.from_args(args)
        backend = make_backend(args, cmd)
    except ValueError as exc:
        print(f"edufilter label: {exc}", file=sys.stderr)
        return 2
    log.info("label: %s", json.dumps(_public_config(cmd, args)))

    from edufilter.io import write_json_atomic, write_parquet_atomic
    from edufilter.labelling.backends import EndpointError, ReplayMissError
    from edufilter.labelling.cache import AnswerCache
    from edufilter.labelling.labeller import label_documents

    try:
        documents = draw_documents(cmd, excluded_hashes(args.exclude))
    except (ValueError, OSError) as exc:  # bad input: ShardError, LabelFileError, missing files
        print(f"edufilter label: {exc}", file=sys.stderr)
        return 1
    if not documents:
        print(f"edufilter label: no documents to label in {' '.join(cmd.inputs)}", file=sys.stderr)
        return 1
    with AnswerCache(cmd.cache) as cache:
        try:
            table, summary = label_documents(
                documents,
                domain=cmd.domain,
                backend=backend,
                cache=cache,
                max_tokens_budget=cmd.max_tokens_budget,
                progress=not args.no_progress,
            )
        except (ReplayMissError, EndpointError) as exc:
            print(f"edufilter label: {exc}", file=sys.stderr)
            return 1
    write_parquet_atomic(cmd.output, table)
    write_json_atomic(cmd.summary, {"config": _public_config(cmd, args), **summary.as_dict()})
    summary.log()
    log.info("wrote %s (%d rows) and %s", cmd.output, table.num_rows, cmd.summary)
    failed = summary.status.get("failed", 0)
    if failed:
        print(f"edufilter label: {failed} document(s) failed ({', '.join(f'{k} {v}' for k, v in summary.reasons.items() if k.startswith('failed'))}); "
              "rerun the same command to retry them", file=sys.stderr)
        return EXIT_FAILED_DOCUMENTS
    return 0


def _public_config(cmd: LabelCommand, args: argparse.Namespace) -> dict:
    from edufilter.labelling.prompts import prompt_version

    config = {k: v for k, v in vars(cmd).items()}
    config.update(prompt_version=prompt_version(cmd.domain), concurrency=args.concurrency, timeout=args.timeout,
                  ray=args.ray, ray_actors=args.ray_actors if args.ray else None)
    return config


def main(argv: list[str]) -> int:
    if argv and argv[0] == "agree":
        from edufilter.labelling.agree import main as agree_main

        return agree_main(argv[1:])
    return label_main(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main(sys.argv[1:]))
