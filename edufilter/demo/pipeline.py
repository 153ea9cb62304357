"""The demo's steps, their runner, and the summary the report is rendered from.

    edufilter demo [--workdir DIR] [--data DIR] [--fast] [--steps N]

Every step calls the public entry point of one stage (`edufilter.cli.main`
with the same arguments a user would type; the REST server as a subprocess),
logs its whole output to WORKDIR/logs/NN-step.log, and prints one line with
its result and time. A failing step stops the demo with the step's name and
reason; everything earlier steps wrote stays in WORKDIR, and the report is
written anyway (showing what ran and where it stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

MARKER = ".edufilter-demo"  # a workdir the demo made (and may therefore clean on the next run)
WORK_SUBDIRS = ("data", "labels", "models", "eval", "scored", "corpus", "pretrain", "logs")
PHI_WEB_TOKENS, PHI_CODE_TOKENS = 88e9, 7e9  # phi-1.5-web: 88B filtered web + 7B code and Q&A
WEB_BUDGET_FRACTION = 0.5  # the scaled web budget keeps this share of the sample's web tokens
SMALL_DATA_FASTTEXT = {"lr": 0.5, "epoch": 50, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0}
SHARED_ANNOTATOR = "llm-annotator-v1"  # the seed set's annotator (shared/corpus/labelled/edufilter_seed)


class StepFailed(RuntimeError):
    """A step could not finish; the message is the reason shown to the user."""


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path
    data: Path | None  # None: the bundled sample; else a shared-corpus folder
    fast: bool
    pretrain_steps: int
    num_cpus: int
    verbose: bool
    seed: int = 0

    def path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)


@dataclass
class StepRecord:
    name: str
    title: str
    status: str = "not-run"  # ok | failed | skipped | not-run
    seconds: float | None = None
    detail: str = ""
    reason: str = ""
    log: str = ""


@dataclass
class Demo:
    """State shared by the steps: configuration, what earlier steps produced, the summary."""

    config: DemoConfig
    summary: dict[str, Any] = field(default_factory=dict)
    label_inputs: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # domain -> (source, paths)
    score_inputs: list[tuple[str, str, str]] = field(default_factory=list)  # (domain, source, input path/glob)
    annotator: str = ""
    labels: dict[str, Path] = field(default_factory=dict)
    splits: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)
    scored: dict[str, Path] = field(default_factory=dict)  # "domain/source" -> scored folder
    started_ray: bool = False


# --------------------------------------------------------------------------- calling the stages

def call_cli(args: list[str]) -> int:
    """Run `edufilter ARGS` in this process through the one CLI; StepFailed when it exits non-zero."""
    from edufilter.cli import main as cli_main

    print(f"$ edufilter {' '.join(args)}", flush=True)
    try:
        status = cli_main(list(args))
    except SystemExit as exc:  # argparse errors
        status = exc.code if isinstance(exc.code, int) else 2
    if status != 0:
        raise StepFailed(f"`edufilter {args[0]}` exited with status {status}")
    return status


def call_cli_subprocess(args: list[str], env: dict[str, str] | None = None) -> int:
    """Run `edufilter ARGS` as a child process (output into this step's log); StepFailed on non-zero exit.

    Used where process-wide state matters: fastText training (a third model fitted in one process
    could diverge with "Encountered NaN") and pretraining (its own torch thread setting).
    """
    print(f"$ edufilter {' '.join(args)}", flush=True)
    sys.stdout.flush()
    done = subprocess.run([sys.executable, "-m", "edufilter", *args], stdout=sys.stdout, stderr=subprocess.STDOUT,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if done.returncode != 0:
        raise StepFailed(f"`edufilter {args[0]}` exited with status {done.returncode}")
    return done.returncode


def call_cli_json(args: list[str]) -> dict[str, Any]:
    """`call_cli` for a command that prints one JSON object on stdout (e.g. `evaluate --json`)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        try:
            call_cli(args)
        finally:
            output = buffer.getvalue()
    print(output, end="")
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise StepFailed(f"`edufilter {args[0]}` printed no JSON result")


# --------------------------------------------------------------------------- step 1: the data

def step_prepare(demo: Demo) -> str:
    cfg = demo.config
    if cfg.data is None:
        return _prepare_sample(demo)
    return _prepare_shared(demo)


def _prepare_sample(demo: Demo) -> str:
    from edufilter.sample import ANNOTATOR, build_sample, record_annotations

    cfg = demo.config
    log.info("edufilter demo config: %s", json.dumps({k: str(v) for k, v in asdict(cfg).items()}))
    shards = build_sample(cfg.path("data"))
    recorded = record_annotations(cfg.path("labels", "cache"), shards.labelled_inputs(), model=ANNOTATOR)
    if recorded.unmatched_documents:
        raise StepFailed(f"documents without a recorded annotation: {recorded.unmatched_documents}")
    demo.annotator = ANNOTATOR
    demo.label_inputs = {
        "web": ("refinedweb", [str(p) for p in shards.web]),
        "code": ("the-stack", [str(shards.code_labelled)]),
        "stackoverflow": ("stackoverflow", [str(shards.stackoverflow)]),
    }
    demo.score_inputs = [
        ("web", "refinedweb", str(shards.web[0].parent)),
        ("web", "html", str(shards.html_dir)),
        ("code", "the-stack", str(shards.code_labelled.parent)),
        ("stackoverflow", "stackoverflow", str(shards.stackoverflow.parent)),
    ]
    stats = shards.stats
    demo.summary["data"] = {
        "kind": "bundled sample", "path": str(shards.root),
        "description": "Web pages and StackOverflow threads written for edufilter (spam to textbook quality), "
                       "code from this Python's standard library; LLM labels recorded with the package.",
        "stats": {k: v for k, v in stats.items() if isinstance(v, int)},
        "code_missing": stats["code_missing"], "code_changed": stats["code_changed"],
    }
    if stats["code_changed"] or stats["code_missing"]:
        demo.summary["notes"].append(
            f"{len(stats['code_changed'])} code file(s) differ from the CPython 3.11.7 files that were annotated and "
            f"{len(stats['code_missing'])} are missing in {stats['stdlib']}; their recorded labels are applied by path.")
    return (f"{stats['web_documents']} web pages in {stats['web_shards']} RefinedWeb shards, {stats['html_pages']} HTML "
            f"pages, {stats['stackoverflow_threads']} StackOverflow threads, "
            f"{stats['code_files_labelled'] + stats['code_files_unlabelled']} code files; "
            f"{sum(recorded.recorded.values())} recorded annotations in the answer cache")


def _prepare_shared(demo: Demo) -> str:
    """`--data ../shared/corpus`: the seed set's labels (via its build_seed.py) and real-format shards."""
    cfg = demo.config
    data = cfg.data
    seed_script = data / "labelled" / "edufilter_seed" / "build_seed.py"
    code_builder = data / "code" / "build.py"
    for required in (seed_script, code_builder):
        if not required.exists():
            raise StepFailed(f"--data {data}: {required.relative_to(data)} not found (expected the shared corpus layout)")
    seed_dir = cfg.path("data", "seed")
    for script, args in ((seed_script, [str(seed_dir)]), (code_builder, [str(cfg.path("data", "code", "the-stack-00000.parquet"))])):
        cfg.path("data", "code").mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
        print(done.stdout + done.stderr, end="")
        if done.returncode != 0:
            raise StepFailed(f"{script.name} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    empty = _drop_empty_texts(seed_dir)
    if empty:
        demo.summary["notes"].append(f"seed set: {empty} label row(s) with an empty text (empty files) left out")
    recorded = _record_seed_answers(cfg.path("labels", "cache"), seed_dir)
    demo.annotator = SHARED_ANNOTATOR
    demo.label_inputs = {d: ("labels", [str(seed_dir / f"{d}.parquet")]) for d in ("web", "code", "stackoverflow")}
    inputs = [
        ("web", "warc", data / "warc" / "dolma_warc"),
        ("web", "html", data / "web_html" / "python_docs"),
        ("code", "the-stack", cfg.path("data", "code")),
        ("stackoverflow", "stackoverflow", data / "stackoverflow" / "*" / "Posts.xml"),
    ]
    demo.score_inputs = [(d, s, str(p)) for d, s, p in inputs]
    demo.summary["data"] = {"kind": "shared corpus", "path": str(data),
                            "description": "The shared real data: seed labels from labelled/edufilter_seed, Dolma WARC "
                                           "pages, Python docs HTML, StackOverflow dumps, CPython stdlib as The Stack.",
                            "stats": {f"seed_labels_{d}": n for d, n in recorded.items()}}
    return f"seed set built ({', '.join(f'{d} {n}' for d, n in recorded.items())} labels recorded); 4 real-format inputs"


def _drop_empty_texts(seed_dir: Path) -> int:
    """The seed set labels a few empty stdlib files; a label file to relabel needs text in every row."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from edufilter.io import write_parquet_atomic

    dropped = 0
    for path in sorted(seed_dir.glob("*.parquet")):
        table = pq.read_table(path)
        keep = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(table["text"], ""))), 0)
        if not pc.all(keep).as_py():
            dropped += table.num_rows - int(pc.sum(keep).as_py() or 0)
            write_parquet_atomic(path, table.filter(keep))
    return dropped


def _record_seed_answers(cache_dir: Path, seed_dir: Path) -> dict[str, int]:
    """The seed set's labels as recorded answers, so `label --backend replay` reproduces them."""
    import pyarrow.parquet as pq

    from edufilter.documents import content_hash
    from edufilter.labelling.cache import AnswerCache, prompt_version, render_response

    counts = {}
    with AnswerCache(cache_dir) as cache:
        for domain in ("web", "code", "stackoverflow"):
            rows = pq.read_table(seed_dir / f"{domain}.parquet", columns=["text", "score", "rationale"]).to_pylist()
            version = prompt_version(domain)
            for row in rows:
                key = content_hash(row["text"])
                if cache.get(version, SHARED_ANNOTATOR, key) is None:
                    cache.put(version, SHARED_ANNOTATOR, key, render_response(row["rationale"] or "-", int(row["score"])),
                              extra={"recorded": "edufilter_seed"})
            counts[domain] = len(rows)
    return counts


# --------------------------------------------------------------------------- steps 2-4: label, train, evaluate

def step_label(demo: Demo) -> str:
    import pyarrow.parquet as pq

    from edufilter.labelling.prompts import prompt_version

    cfg = demo.config
    demo.summary["labels"] = {}
    parts = []
    for domain, (source, paths) in demo.label_inputs.items():
        out = cfg.path("labels", f"{domain}.parquet")
        call_cli(["label", "--source", source, "--input", *paths, "--domain", domain, "--backend", "replay",
                  "--model", demo.annotator, "--cache", str(cfg.path("labels", "cache")), "--output", str(out),
                  "--seed", str(cfg.seed), "--no-progress"])
        table = pq.read_table(out, columns=["score", "status"]).to_pylist()
        ok = [r["score"] for r in table if r["status"] == "ok"]
        hist = {str(k): ok.count(k) for k in range(6)}
        demo.labels[domain] = out
        demo.summary["labels"][domain] = {"n": len(ok), "histogram": hist, "annotator": demo.annotator,
                                          "prompt_version": prompt_version(domain), "file": str(out)}
        parts.append(f"{domain} {len(ok)}")
    return "replayed " + ", ".join(parts) + " labels from the answer cache"


def split_labels(labels: Path, train_path: Path, test_path: Path, *, test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[int, int]:
    """Stratified, deterministic train/test split of a label file (by score; order by text hash)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    from edufilter.io import write_parquet_atomic

    table = pq.read_table(labels)
    rows = [r for r in table.to_pylist() if r.get("status", "ok") == "ok"]
    train, test = [], []
    for score in range(6):
        group = sorted((r for r in rows if r["score"] == score),
                       key=lambda r: hashlib.sha256(f"{seed}:{r['text']}".encode()).hexdigest())
        n_test = int(round(len(group) * test_fraction)) if len(group) >= 3 else 0
        test.extend(group[:n_test])
        train.extend(group[n_test:])
    columns = ["id", "domain", "text", "score"]
    write_parquet_atomic(train_path, pa.Table.from_pylist([{c: r[c] for c in columns} for r in train]))
    write_parquet_atomic(test_path, pa.Table.from_pylist([{c: r[c] for c in columns} for r in test]))
    return len(train), len(test)


def step_train(demo: Demo) -> str:
    cfg = demo.config
    parts = []
    for domain, labels in demo.labels.items():
        train_path, test_path = cfg.path("labels", f"{domain}.train.parquet"), cfg.path("labels", f"{domain}.test.parquet")
        n_train, n_test = split_labels(labels, train_path, test_path, seed=cfg.seed)
        demo.splits[domain] = (train_path, test_path)
        model_dir = cfg.path("models", domain)
        args = ["train", "--labels", str(train_path), "--domain", domain, "--kind", "fasttext", "--output",
                str(model_dir), "--seed", str(cfg.seed), "--no-progress"]
        # The full demo trains exactly as `edufilter train` does by default: cross-validated choice of
        # hyperparameters and an isotonic calibration fitted on the cross-validated predictions.
        # --fast trains once, with hyperparameters that suit a label set this small, uncalibrated.
        if cfg.fast:
            args += ["--params", json.dumps(SMALL_DATA_FASTTEXT), "--cv-folds", "0", "--calibration", "none"]
        call_cli_subprocess(args)
        demo.models[domain] = model_dir
        parts.append(f"{domain} ({n_train} train / {n_test} held out)")
    return "fastText models: " + ", ".join(parts)


def step_evaluate(demo: Demo) -> str:
    cfg = demo.config
    demo.summary["evaluation"] = {}
    parts = []
    for domain, model_dir in demo.models.items():
        test_path = demo.splits[domain][1]
        metrics = call_cli_json(["evaluate", "--model", str(model_dir), "--labels", str(test_path), "--json",
                                 "--plots", str(cfg.path("eval", domain))])
        keep = ("n", "f1_at_3", "precision_at_3", "recall_at_3", "macro_f1", "accuracy", "spearman", "mse",
                "confusion_matrix", "model_id", "version", "threshold")
        demo.summary["evaluation"][domain] = {k: metrics.get(k) for k in keep}
        parts.append(f"{domain} F1@3={metrics['f1_at_3']:.2f} Spearman={metrics['spearman']:.2f}")
    return ", ".join(parts) + " (held-out)"


# --------------------------------------------------------------------------- step 5: score on Ray

def step_score(demo: Demo) -> str:
    import ray

    cfg = demo.config
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=0, include_dashboard=False,
                 log_to_driver=cfg.verbose, configure_logging=False)
        demo.started_ray = True
    resources = ray.cluster_resources()
    sources: dict[str, Any] = {}
    try:
        for domain, source, input_path in demo.score_inputs:
            name = f"{domain}/{source}"
            out = cfg.path("scored", f"{domain}-{source}")
            try:
                call_cli(["score", "--model", str(demo.models[domain]), "--source", source, "--input", input_path,
                          "--output", str(out), "--num-cpus", str(cfg.num_cpus)])
            except StepFailed as exc:
                summary = _read_json(out / "_summary.json") or {}
                failed = summary.get("failed_shards") or {}
                reasons = "; ".join(f"{f['path']}: {f['reason'].splitlines()[0]}" for f in failed.values())
                raise StepFailed(f"scoring {name} failed: {reasons or exc}") from exc
            demo.scored[name] = out
            sources[name] = _scored_source_stats(out, domain, source)
    finally:
        if demo.started_ray:
            ray.shutdown()
            demo.started_ray = False
    demo.summary["scoring"] = {"sources": sources,
                               "ray": f"local, {int(resources.get('CPU', 0))} CPUs"}
    docs = sum(s["documents_in"] for s in sources.values())
    tokens = sum(s["tokens"] for s in sources.values())
    return f"{docs} documents ({tokens:,} tokens) in {sum(s['shards'] for s in sources.values())} shards scored on Ray"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scored_source_stats(out: Path, domain: str, source: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    summary = _read_json(out / "_summary.json") or {}
    agg = (summary.get("sources") or {}).get(source, {})
    table = pq.read_table(out, columns=["score", "int_score", "tokens"]) if any(out.glob("*.parquet")) else None
    scores = table["score"].to_pylist() if table is not None else []
    ints = table["int_score"].to_pylist() if table is not None else []
    return {
        "domain": domain, "source": source, "shards": agg.get("shards", 0),
        "documents_in": agg.get("documents_in", len(scores)), "documents_out": agg.get("documents_out", len(scores)),
        "bad_documents": sum((agg.get("bad") or {}).values()), "bad": agg.get("bad") or {},
        "tokens": agg.get("tokens", 0), "histogram": [ints.count(k) for k in range(6)],
        "mean_score": (sum(scores) / len(scores)) if scores else None,
        "preview_kept": sum(1 for s in scores if s >= 3.0),
    }


# --------------------------------------------------------------------------- step 6: select by token budget

def step_select(demo: Demo) -> str:
    cfg = demo.config
    web_tokens = sum(s["tokens"] for n, s in demo.summary["scoring"]["sources"].items() if n.startswith("web/"))
    if web_tokens <= 0:
        raise StepFailed("no web tokens were scored; nothing to select")
    # phi-1.5-web's 88B:7B recipe, scaled so that the web budget keeps half of the sample's web tokens
    scale = float(f"{WEB_BUDGET_FRACTION * web_tokens / PHI_WEB_TOKENS:.3g}")
    corpus = cfg.path("corpus")
    args = ["select"]
    for out in demo.scored.values():
        args += ["--scored", str(out)]
    args += ["--output", str(corpus), "--token-budget", "web=88B", "--token-budget", "code+stackoverflow=7B",
             "--scale", f"{scale:g}"]
    call_cli(args)
    manifest = _read_json(corpus / "manifest.json")
    if not manifest:
        raise StepFailed(f"select wrote no manifest in {corpus}")
    keys = {name: {"budget": s.get("budget_tokens"), "tokens_kept": s.get("tokens_kept"),
                   "documents_kept": s.get("documents_kept"), "threshold": s.get("threshold"),
                   "tokens_available": s.get("tokens_available")}
            for name, s in manifest["selection"].items()}
    demo.summary["selection"] = {
        "command": "edufilter " + " ".join(a if not a.startswith(str(cfg.workdir)) else os.path.relpath(a, cfg.workdir)
                                           for a in args),
        "scale": scale, "keys": keys, "documents": manifest.get("documents"), "tokens": manifest.get("tokens"),
        "per_source": _selection_per_source(demo, manifest),
        "curves": _threshold_curves(demo, keys),
    }
    return (f"{manifest['documents']} documents, {manifest['tokens']:,} tokens selected "
            + ", ".join(f"{k} ≥ {v['threshold']:.2f}" for k, v in keys.items() if v["threshold"] is not None))


def _selection_per_source(demo: Demo, manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    per_source = {}
    for name, out in demo.scored.items():
        stats = demo.summary["scoring"]["sources"][name]
        files = [f for f in manifest.get("files", []) if Path(f["scored_shard"]).parent == out]
        per_source[name] = {"documents_in": stats["documents_out"], "tokens_in": stats["tokens"],
                            "documents_out": sum(f["documents"] for f in files),
                            "tokens_out": sum(f["tokens"] for f in files)}
    return per_source


def _threshold_curves(demo: Demo, keys: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per budget key: tokens kept at each score threshold (what the budget solver walks)."""
    import numpy as np
    import pyarrow.parquet as pq

    curves = {}
    thresholds = np.round(np.arange(0.0, 5.0001, 0.05), 2)
    for key, info in keys.items():
        members = set(key.split("+"))
        scores, tokens = [], []
        for name, out in demo.scored.items():
            domain, source = name.split("/")
            if not ({domain, source} & members) or not any(out.glob("*.parquet")):
                continue
            t = pq.read_table(out, columns=["score", "tokens"])
            scores.append(t["score"].to_numpy(zero_copy_only=False))
            tokens.append(t["tokens"].to_numpy(zero_copy_only=False))
        if not scores:
            continue
        s, w = np.concatenate(scores), np.concatenate(tokens)
        curves[key] = {"thresholds": thresholds.tolist(),
                       "tokens": [int(w[s >= th].sum()) for th in thresholds],
                       "chosen": info["threshold"], "chosen_tokens": info["tokens_kept"]}
    return curves


# --------------------------------------------------------------------------- step 7: pretrain

def step_pretrain(demo: Demo) -> str:
    cfg = demo.config
    out = cfg.path("pretrain")
    steps = cfg.pretrain_steps
    log_every = max(1, steps // 40)
    eval_every = max(1, steps // 6)
    # One intra-op thread: the tiny model's matrices are so small that thread synchronisation costs
    # more than it saves (measured 4x faster on 2 busy cores), and a child process keeps the thread
    # setting out of the demo's own process.
    call_cli_subprocess(["pretrain", "--corpus", str(cfg.path("corpus")), "--preset", "tiny", "--output", str(out),
              "--steps", str(steps), "--seed", str(cfg.seed), "--micro-batch", "8", "--log-every", str(log_every),
              # phi-1.5's 2e-4 is tuned for 1.4B parameters; the 0.17M-parameter tiny preset learns
              # visibly in a few hundred steps only with a larger rate (short warm-up for stability)
              "--lr", "2e-3", "--warmup-steps", str(max(1, steps // 10)),
              "--eval-every", str(eval_every), "--checkpoint-every", str(steps), "--heldout-fraction", "0.1",
              "--eval-batches", "4"], env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    train, evals, last = [], [], {}
    for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("kind") == "train":
            train.append([record["step"], record["loss"]])
            last = record
        elif record.get("kind") == "eval" and record.get("eval_loss"):
            value = record["eval_loss"].get("heldout", next(iter(record["eval_loss"].values())))
            evals.append([record["step"], value])
    demo.summary["pretraining"] = {
        "preset": "tiny", "steps": last.get("step"), "final_loss": last.get("loss"),
        "eval_loss": evals[-1][1] if evals else None, "tokens": last.get("tokens"),
        "tokens_per_s": round(last["tokens_per_s"]) if last.get("tokens_per_s") else None,
        "parameters": _count_parameters(out / "model"), "loss": train, "eval": evals, "output": str(out),
    }
    first = train[0][1] if train else float("nan")
    return f"{last.get('step')} steps, loss {first:.2f} → {last.get('loss', float('nan')):.2f}"


def _count_parameters(model_dir: Path) -> int | None:
    try:
        from safetensors.numpy import load_file

        return sum(int(v.size) for f in model_dir.glob("*.safetensors") for v in load_file(str(f)).values()) or None
    except Exception:  # the count is decoration; never fail the step over it
        return None


# --------------------------------------------------------------------------- step 8: the REST service

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_serve(demo: Demo, log_file) -> str:
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "edufilter", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for domain, model_dir in demo.models.items():
        command += ["--model", f"{domain}={model_dir}"]
    print("$ " + " ".join(command[2:]), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDUFILTER_API_KEYS": ""}
    log_file.flush()
    server = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    started = time.perf_counter()
    try:
        ready = None
        while time.perf_counter() - started < 90:
            if server.poll() is not None:
                raise StepFailed(f"`edufilter serve` exited with status {server.returncode} before it was ready")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        if ready is None:
            raise StepFailed(f"`edufilter serve` was not ready on {url} within 90 s")
        document = _service_example()
        request = {"documents": [{"id": "demo-1", "text": document}], "domain": "web"}
        t0 = time.perf_counter()
        response = httpx.post(f"{url}/v1/score", json=request, timeout=30)
        latency_ms = 1000 * (time.perf_counter() - t0)
        if response.status_code != 200:
            raise StepFailed(f"POST /v1/score answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        shown = {**request, "documents": [{"id": "demo-1", "text": document[:160] + "…"}]}
        demo.summary["service"] = {"url": url, "ready_seconds": ready, "latency_ms": latency_ms,
                                   "status_code": response.status_code, "request": shown, "response": body}
        result = (body.get("results") or body.get("documents") or [{}])[0]
    finally:
        server.terminate()  # SIGTERM: uvicorn's graceful shutdown
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    return (f"server on {url} ready in {ready:.1f} s; one document scored over HTTP in {latency_ms:.0f} ms "
            f"(score {result.get('score', float('nan')):.2f}); server stopped")


def _service_example() -> str:
    return ("Photosynthesis is the process by which plants use the energy of light to turn carbon dioxide and water "
            "into glucose, releasing oxygen. It takes place in the chloroplasts, which contain the green pigment "
            "chlorophyll. The light-dependent reactions split water and make ATP; the Calvin cycle then fixes carbon "
            "dioxide into sugar. Example: a leaf kept in the dark for two days contains no starch.")


# --------------------------------------------------------------------------- step 9: report

def collect_examples(demo: Demo, per_side: int = 4) -> dict[str, list[dict[str, Any]]]:
    """The highest and lowest scoring documents (spread over the sources) with their top words."""
    import pyarrow.parquet as pq

    from classifier.scorer import Scorer

    scorers = {d: Scorer.load(p) for d, p in demo.models.items()}
    candidates = []
    for name, out in demo.scored.items():
        if not any(out.glob("*.parquet")):
            continue
        rows = pq.read_table(out, columns=["id", "text", "url", "domain", "source", "score"]).to_pylist()
        rows.sort(key=lambda r: -r["score"])
        candidates.append((name, rows))
    kept, dropped = [], []
    if not candidates:
        return {"kept": [], "dropped": []}
    for i in range(per_side):
        name, rows = candidates[i % len(candidates)]
        if rows:
            kept.append(rows[(i // len(candidates)) % len(rows)])
        name, rows = candidates[(i + 1) % len(candidates)]
        if rows:
            dropped.append(rows[-1 - (i // len(candidates)) % len(rows)])

    def card(row: dict[str, Any]) -> dict[str, Any]:
        scorer = scorers[row["domain"]]
        return {"id": row["id"], "url": row["url"], "source": row["source"], "domain": row["domain"],
                "score": float(row["score"]), "snippet": " ".join(row["text"][:600].split())[:420],
                "top_words": _top_words(scorer, row["text"])}

    return {"kept": [card(r) for r in kept], "dropped": [card(r) for r in dropped]}


def _top_words(scorer, text: str, k: int = 6) -> list[list[Any]]:
    """The words (not punctuation) that moved the score, largest effect first."""
    terms = scorer.explain(text, top_k=4 * k)
    words = [[t, round(float(c), 3)] for t, c in terms if any(ch.isalnum() for ch in t) and abs(c) >= 0.005]
    return words[:k]


def step_report(demo: Demo) -> str:
    if demo.scored and demo.models:
        demo.summary["examples"] = collect_examples(demo)
    return "examples explained; report written at the end"


# --------------------------------------------------------------------------- the runner

@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[..., str]
    wants_log: bool = False


STEPS = [
    Step("prepare", "build the data shards and record the LLM annotations in the answer cache", step_prepare),
    Step("label", "edufilter label --backend replay (reproduce the LLM labels offline)", step_label),
    Step("train", "edufilter train: one fastText classifier per domain on 80% of the labels", step_train),
    Step("evaluate", "edufilter evaluate on the held-out 20%", step_evaluate),
    Step("score", "edufilter score: every shard through Ray Data on an embedded local Ray", step_score),
    Step("select", "edufilter select: phi-1.5-web's 88:7 web:code token budget, scaled", step_select),
    Step("pretrain", "edufilter pretrain: the tiny Phi preset on the selected corpus", step_pretrain),
    Step("serve", "edufilter serve on a free loopback port; score one document over HTTP; stop", step_serve, True),
    Step("report", "explain kept and dropped examples; write report.html and summary.json", step_report),
]


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def fileno(self) -> int:  # subprocesses and faulthandler want a real descriptor: the log file's
        return self.streams[0].fileno()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def captured(log_path: Path, verbose: bool):
    """Send this step's stdout, stderr and log records to `log_path` (and to the console when verbose)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(log_path, "a", encoding="utf-8", buffering=1) as log_file:
        handler = logging.StreamHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        console = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                   and getattr(h, "stream", None) in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)]
        old_level = root.level
        if not verbose:
            for h in console:
                root.removeHandler(h)
        root.addHandler(handler)
        root.setLevel(min(old_level or logging.INFO, logging.INFO))
        out = _Tee(log_file, sys.__stdout__) if verbose else _Tee(log_file)
        saved_fds = []
        if not verbose:
            # Ray's core worker and native libraries write straight to file descriptors 1 and 2.
            sys.__stdout__.flush()
            sys.__stderr__.flush()
            saved_fds = [os.dup(1), os.dup(2)]
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                yield log_file
        finally:
            for fd, saved in zip((1, 2), saved_fds):
                os.dup2(saved, fd)
                os.close(saved)
            root.removeHandler(handler)
            root.setLevel(old_level)
            if not verbose:
                for h in console:
                    root.addHandler(h)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _say(text: str = "") -> None:
    print(text, file=sys.__stdout__, flush=True)


def run_demo(cfg: DemoConfig) -> int:
    """Run every step; returns 0 when all succeeded, 1 when one failed (the report is written either way)."""
    from edufilter import __version__
    from edufilter.demo.report import write_report

    prepare_workdir(cfg.workdir)
    demo = Demo(cfg)
    records = [StepRecord(s.name, s.title) for s in STEPS]
    started = time.perf_counter()
    demo.summary.update({
        "edufilter_version": __version__, "started": _now(), "workdir": str(cfg.workdir), "status": "running",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "machine": _machine(), "notes": [],
    })
    demo.summary["notes"].extend(_optional_components())
    demo.summary["steps"] = [asdict(r) for r in records]
    _say(f"edufilter demo: {len(STEPS)} steps, work folder {cfg.workdir}")
    for note in demo.summary["notes"]:
        _say(f"  note: {note}")
    failed = None
    for i, (step, record) in enumerate(zip(STEPS, records), 1):
        log_path = cfg.path("logs", f"{i:02d}-{step.name}.log")
        record.log = str(log_path)
        _say(f"[{i}/{len(STEPS)}] {step.name:<9} {step.title}")
        t0 = time.perf_counter()
        try:
            with captured(log_path, cfg.verbose) as log_file:
                try:
                    record.detail = step.run(demo, log_file) if step.wants_log else step.run(demo)
                except StepFailed:
                    raise
                except Exception as exc:  # an unexpected error: keep the traceback in the step's log
                    traceback.print_exc()
                    raise StepFailed(f"{type(exc).__name__}: {exc}") from exc
            record.status = "ok"
        except StepFailed as exc:
            record.status = "failed"
            tail = _tail(log_path)
            record.reason = str(exc) + (f"\n--- last lines of {log_path.name} ---\n{tail}" if tail else "")
            failed = record
        record.seconds = round(time.perf_counter() - t0, 2)
        demo.summary["steps"] = [asdict(r) for r in records]
        if record.status == "ok":
            _say(f"      ✓ {record.seconds:6.1f}s  {record.detail}")
        else:
            _say(f"      ✗ {record.seconds:6.1f}s  step '{step.name}' failed: {record.reason.splitlines()[0]}")
            _say(f"        log: {log_path}")
            for line in _tail(log_path, 8).splitlines():
                _say(f"        | {line}")
            break
    total = round(time.perf_counter() - started, 2)
    demo.summary.update({"status": "failed" if failed else "ok", "finished": _now(), "total_seconds": total,
                         "steps": [asdict(r) for r in records]})
    if failed:
        demo.summary["failed_step"] = failed.name
    report = write_report(demo.summary, cfg.workdir)
    _say("")
    _say("step timings: " + ", ".join(f"{r.name} {r.seconds:.1f}s" for r in records if r.seconds is not None)
         + f"; total {total:.1f}s")
    if failed:
        _say(f"edufilter demo stopped at step '{failed.name}'. Earlier outputs are kept in {cfg.workdir}.")
    else:
        _say("edufilter demo finished.")
    _say(f"Report: {report}")
    _say(f"Summary: {cfg.path('summary.json')}")
    return 1 if failed else 0


def prepare_workdir(workdir: Path) -> None:
    """Make `workdir`; clear a previous demo's outputs there, but never touch a folder the demo did not make."""
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise SystemExit(f"edufilter demo: {workdir} exists and was not made by the demo; give another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    for name in WORK_SUBDIRS:
        shutil.rmtree(workdir / name, ignore_errors=True)
    for name in ("report.html", "summary.json"):
        (workdir / name).unlink(missing_ok=True)
    (workdir / MARKER).write_text("made by `edufilter demo`; its contents are replaced on every run\n", encoding="utf-8")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def _optional_components() -> list[str]:
    """Notes about optional components that are absent; the demo runs without them."""
    notes = []
    try:
        import torch

        if not torch.cuda.is_available():
            notes.append("No GPU found: fastText scoring and the tiny Phi run on CPU (a GPU is optional).")
        else:
            notes.append(f"GPU found ({torch.cuda.get_device_name(0)}); the demo's tiny model does not need it.")
    except Exception as exc:  # torch is a dependency; say so rather than crash
        notes.append(f"torch unavailable ({exc}); the pretrain step will fail.")
    return notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter demo",
        description="Run the whole product end to end on the bundled sample (or --data): label (replay) -> train -> "
        "evaluate -> score on Ray -> select by token budget -> pretrain a tiny Phi -> serve -> report.",
    )
    p.add_argument("--workdir", default="edufilter-demo",
                   help="folder for every output (default ./edufilter-demo; a previous demo's outputs there are replaced)")
    p.add_argument("--data", default=None,
                   help="run on the shared real data instead of the bundled sample, e.g. ../shared/corpus")
    p.add_argument("--fast", action="store_true",
                   help="quick variant for CI: no cross-validated calibration, 20 pretraining steps")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default 300; 20 with --fast)")
    p.add_argument("--num-cpus", type=int, default=None,
                   help="CPUs of the embedded local Ray (default: min(4, this machine's cores))")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, training and pretraining (default 0)")
    p.add_argument("--verbose", action="store_true", help="show every stage's own output instead of only the step lines")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    steps = args.steps if args.steps is not None else (20 if args.fast else 300)
    if steps < 1:
        print("edufilter demo: --steps must be >= 1", file=sys.stderr)
        return 2
    data = Path(args.data).resolve() if args.data else None
    if data is not None and not data.is_dir():
        print(f"edufilter demo: --data {args.data}: not a folder", file=sys.stderr)
        return 2
    cfg = DemoConfig(workdir=Path(args.workdir).resolve(), data=data, fast=args.fast, pretrain_steps=steps,
                     num_cpus=args.num_cpus or min(4, os.cpu_count() or 1), verbose=args.verbose, seed=args.seed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return run_demo(cfg)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
