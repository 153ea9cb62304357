"""Does filtering help? Train the same small Phi twice on the same token budget: once on the
documents a classifier selects, once on a random sample of the same sources, and compare
held-out loss on high-educational-value documents and on general documents.

Pool: the shared LLM-labelled seed set (web, code, StackOverflow; built with build_seed.py).
Honesty rules this script enforces:
  * eval-edu  = half of the documents the LLM labelled >= 4 (chosen by text hash), per domain;
  * eval-general = ~8% of all remaining documents (by text hash), any label;
  both are removed from the pool before anything is trained, so neither the classifier, nor
  the tokenizer, nor either language model ever sees them;
  * the pool is scored by the project's classifiers (classifier.train.train_model + Scorer) with
    2-fold cross-fitting: each document's score comes from a model that never saw its label,
    as unlabelled web data would be scored in production;
  * per domain, both arms get the same token budget; "selected" takes the highest scores,
    "random" a seeded random sample; both runs share tokenizer, initial weights, data mix,
    optimiser and step count.

    python bench/ablation.py [--steps 400] [--budget-fraction 0.33] [--work DIR]

Writes bench/results/ablation.json and bench/results/ablation.png (both loss curves).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from edufilter.io import atomic_path, write_json_atomic  # noqa: E402
from jobs.pretrain import data as D  # noqa: E402
from jobs.pretrain.presets import parameter_count, resolve_preset  # noqa: E402
from jobs.pretrain.train import TrainConfig, train  # noqa: E402

log = logging.getLogger("ablation")
DOMAINS = ("web", "code", "stackoverflow")
# phi-1.5-web's 80% web / 20% code, with StackOverflow as part of the code share.
MIX = "web=0.8,code=0.15,stackoverflow=0.05"


def bucket(text: str, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{salt}:{text}".encode()).digest()[:8], "big") % 1000


def load_seed(shared: Path, work: Path) -> list[dict]:
    seed_dir = work / "seed"
    if not all((seed_dir / f"{d}.parquet").is_file() for d in DOMAINS):
        script = shared / "corpus" / "labelled" / "edufilter_seed" / "build_seed.py"
        subprocess.run([sys.executable, str(script), str(seed_dir)], check=True, capture_output=True)
    rows = []
    for domain in DOMAINS:
        for row in pq.read_table(seed_dir / f"{domain}.parquet").to_pylist():
            if row["status"] == "ok" and row["text"]:
                rows.append({"id": row["id"], "domain": domain, "source": row["source"], "text": row["text"],
                             "label": int(row["score"])})
    return rows


def split(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(eval_edu, eval_general, pool): decided by text hash alone, so the split is reproducible."""
    eval_edu, eval_general, pool = [], [], []
    for row in rows:
        if row["label"] >= 4 and bucket(row["text"], "edu") < 500:
            eval_edu.append(row)
        elif bucket(row["text"], "general") < 80:
            eval_general.append(row)
        else:
            pool.append(row)
    return eval_edu, eval_general, pool


def cross_fit_scores(pool: list[dict], work: Path, seed: int, kind: str) -> dict[str, dict]:
    """Score every pool document with a classifier trained on the other fold's labels."""
    from classifier.labels import LabelSet
    from classifier.scorer import Scorer
    from classifier.train import TrainConfig as ClassifierConfig
    from classifier.train import train_model

    quality: dict[str, dict] = {}
    for domain in DOMAINS:
        docs = [r for r in pool if r["domain"] == domain]
        folds = [[r for r in docs if bucket(r["text"], "fold") % 2 == k] for k in range(2)]
        for k in range(2):
            fit_on = folds[1 - k]
            labels = LabelSet(texts=[r["text"] for r in fit_on], scores=np.array([r["label"] for r in fit_on]),
                              ids=[r["id"] for r in fit_on], files=("edufilter_seed",), skipped=0)
            model_dir = work / "classifiers" / f"{kind}-{domain}-fold{k}"
            if not (model_dir / "model.json").is_file():
                train_model(labels, str(model_dir), ClassifierConfig(domain=domain, kind=kind, seed=seed,
                                                                     cv_folds=0, progress=False))
            scores = Scorer.load(model_dir).score([r["text"] for r in folds[k]]).score
            for row, score in zip(folds[k], scores):
                row["score"] = float(score)
        labels = np.array([r["label"] for r in docs])
        scores = np.array([r["score"] for r in docs])
        rank = lambda a: np.argsort(np.argsort(a))  # noqa: E731
        quality[domain] = {
            "documents": len(docs),
            "spearman": float(np.corrcoef(rank(labels), rank(scores))[0, 1]),
            "mae": float(np.mean(np.abs(labels - scores))),
        }
    return quality


def take_budget(docs: list[dict], budget: int) -> list[dict]:
    taken, tokens = [], 0
    for row in docs:
        if tokens >= budget:
            break
        taken.append(row)
        tokens += row["tokens"]
    return taken


def write_corpus(rows: list[dict], folder: Path, note: dict) -> None:
    """The layout `edufilter select` writes: parquet shards of text + provenance, and a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "text": [r["text"] for r in rows],
        "domain": [r["domain"] for r in rows],
        "source": [r["source"] for r in rows],
        "id": [r["id"] for r in rows],
        "score": [float(r.get("score", -1.0)) for r in rows],
    })
    with atomic_path(folder / "part-00000.parquet") as tmp:
        pq.write_table(table, tmp)
    write_json_atomic(folder / "manifest.json", {"documents": len(rows), **note})


def arm_stats(rows: list[dict]) -> dict:
    out = {}
    for domain in DOMAINS:
        docs = [r for r in rows if r["domain"] == domain]
        out[domain] = {"documents": len(docs), "tokens": int(sum(r["tokens"] for r in docs)),
                       "mean_llm_label": float(np.mean([r["label"] for r in docs])) if docs else None}
    return out


def curves(output: Path) -> list[dict]:
    records = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "tokens": r["tokens"], **r["eval_loss"]} for r in records if r["kind"] == "eval"]


def training_seconds(output: Path) -> float:
    """Wall time between the run's first and last metric lines (kept across resumed invocations)."""
    times = [json.loads(line)["time"] for line in (output / "metrics.jsonl").read_text().splitlines()]
    return max(times) - min(times)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, (name, title) in zip(axes, [("edu", "held-out educational docs (LLM label >= 4)"),
                                        ("general", "held-out general docs (any label)")]):
        for arm, color in (("selected", "tab:blue"), ("random", "tab:orange")):
            label = f"{arm} ({'classifier top' if arm == 'selected' else 'random sample'})"
            for i, points in enumerate(results["curves"][arm].values()):  # one line per seed
                ax.plot([p["tokens"] / 1e3 for p in points], [p[name] for p in points],
                        "-o" if arm == "selected" else "--s", color=color, ms=3, alpha=0.85,
                        label=label if i == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training tokens (thousands)")
        ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend()
    s = results["settings"]
    fig.suptitle(f"edufilter ablation: Phi '{s['preset']}' ({s['parameters'] / 1e6:.1f}M params), same"
                 f" {s['train_tokens'] / 1e3:.0f}k-token budget, selected vs random, seeds {s['seeds']}", fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ablation.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared"), help="shared data folder (has corpus/labelled)")
    parser.add_argument("--work", help="work folder for corpora, classifiers and runs (default: a temp folder;"
                        " reuse one to resume)")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"), help="where ablation.json/.png go")
    parser.add_argument("--preset", default="small", help="model preset for both arms (default small)")
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps per arm (default 400)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="learning rate (default 1e-3: phi-1.5's 2e-4 is tuned for 1.4B params and 4M-token batches)")
    parser.add_argument("--warmup-steps", type=int, default=15, help="linear warm-up steps (default 15)")
    parser.add_argument("--budget-fraction", type=float, default=0.33,
                        help="share of each domain's pool tokens each arm trains on (default 0.33)")
    parser.add_argument("--evals", type=int, default=10, help="evaluations along each run (default 10)")
    parser.add_argument("--eval-batches", type=int, default=8, help="micro-batches per evaluation set (default 8)")
    parser.add_argument("--cpu-threads", type=int, default=1, help="torch threads (default 1: best on a shared 2-core box)")
    parser.add_argument("--classifier-kind", default="tfidf", choices=["tfidf", "fasttext", "embedding"],
                        help="classifier that scores the pool (default tfidf: on ~270 labels per fold it ranks"
                        " web documents best here)")
    parser.add_argument("--seeds", default="0,1",
                        help="comma-separated seeds; each runs both arms (random sample, weights, data order) (default 0,1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.time()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="edufilter-ablation-"))
    work.mkdir(parents=True, exist_ok=True)
    preset = resolve_preset(args.preset)

    rows = load_seed(Path(args.shared), work)
    eval_edu, eval_general, pool = split(rows)
    log.info("pool %d documents; eval-edu %d; eval-general %d", len(pool), len(eval_edu), len(eval_general))
    quality = cross_fit_scores(pool, work, 0, args.classifier_kind)
    log.info("cross-fitted classifier quality: %s", quality)

    # One tokenizer for both arms, trained on the pool only (never on evaluation documents).
    tok_dir = work / "tokenizer"
    if (tok_dir / D.TOKENIZER_FILE).is_file():
        tokenizer = D.load_tokenizer(tok_dir)
    else:
        tokenizer = D.train_tokenizer((r["text"] for r in pool), preset.vocab_size, tok_dir)
    for row, enc in zip(pool, tokenizer.encode_batch([r["text"] for r in pool])):
        row["tokens"] = len(enc.ids) + 1

    selected_by_domain: dict[str, list[dict]] = {}
    budgets: dict[str, int] = {}
    for domain in DOMAINS:
        docs = [r for r in pool if r["domain"] == domain]
        budgets[domain] = int(args.budget_fraction * sum(r["tokens"] for r in docs))
        selected_by_domain[domain] = take_budget(sorted(docs, key=lambda r: (-r["score"], r["id"])), budgets[domain])
    selected = [r for domain in DOMAINS for r in selected_by_domain[domain]]
    write_corpus(selected, work / "selected", {"arm": "selected", "rule": "top cross-fitted score per domain"})
    write_corpus(eval_edu, work / "eval_edu", {"set": "LLM label >= 4, never trained on"})
    write_corpus(eval_general, work / "eval_general", {"set": "random documents, never trained on"})

    # Each seed changes the random arm's sample, the initial weights and the data order, so the
    # spread across seeds is the noise a difference between the arms must beat.
    seeds = [int(x) for x in args.seeds.split(",")]
    eval_every = max(1, args.steps // args.evals)
    runs: dict[str, dict[int, dict]] = {"selected": {}, "random": {}}
    random_stats = {}
    for seed in seeds:
        rng = random.Random(seed)
        sampled = []
        for domain in DOMAINS:
            shuffled = [r for r in pool if r["domain"] == domain]
            rng.shuffle(shuffled)
            sampled += take_budget(shuffled, budgets[domain])
        write_corpus(sampled, work / f"random_seed{seed}", {"arm": "random", "rule": f"random sample per domain, seed {seed}"})
        random_stats[seed] = arm_stats(sampled)
        for arm, corpus in (("selected", work / "selected"), ("random", work / f"random_seed{seed}")):
            output = work / f"run_{arm}_seed{seed}"
            config = TrainConfig(
                corpus=str(corpus), output=str(output), preset=args.preset, steps=args.steps,
                seed=seed, tokenizer=str(tok_dir), mix=MIX, seq_len=args.seq_len, micro_batch=args.micro_batch,
                lr=args.lr, warmup_steps=args.warmup_steps, eval_every=eval_every, eval_batches=args.eval_batches,
                heldout_fraction=0.0, eval_corpora={"edu": str(work / "eval_edu"), "general": str(work / "eval_general")},
                log_every=10, checkpoint_every=max(eval_every, 25), cpu_threads=args.cpu_threads,
                # Memory-mapped tokens: every micro-batch draws windows from random places in the whole
                # arm. Streaming packs consecutive windows from the same document, and in a run this
                # short the arm with longer documents would see far fewer distinct documents.
                pretokenize=True,
            )
            train(config)  # a finished run (rerun of this script on the same --work) returns at once
            runs[arm][seed] = {"seconds": training_seconds(output), "curve": curves(output)}

    final = {arm: {seed: {k: runs[arm][seed]["curve"][-1][k] for k in ("edu", "general")} for seed in seeds}
             for arm in runs}
    deltas = {k: [final["selected"][s][k] - final["random"][s][k] for s in seeds] for k in ("edu", "general")}
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    results = {
        "benchmark": "ablation",
        "question": "same token budget: classifier-selected vs random documents of the same sources",
        "settings": {
            "preset": args.preset, "parameters": parameter_count(preset)["total"], "steps": args.steps,
            "classifier_kind": args.classifier_kind, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
            "lr": args.lr, "warmup_steps": args.warmup_steps, "mix": MIX, "seeds": seeds,
            "data_path": "pretokenized memmap, shuffled windows", "budget_fraction": args.budget_fraction,
            "train_tokens": args.steps * args.micro_batch * args.seq_len,
            "eval_sequences_per_set": args.eval_batches * args.micro_batch,
        },
        "data": {
            "pool_documents": len(pool), "eval_edu_documents": len(eval_edu),
            "eval_general_documents": len(eval_general), "token_budget_per_domain": budgets,
            "classifier_cross_fit": quality,
            "selected": arm_stats(selected), "random_by_seed": random_stats,
        },
        "final_eval_loss_by_seed": final,
        "final_eval_loss_mean": {arm: {k: mean([final[arm][s][k] for s in seeds]) for k in ("edu", "general")}
                                 for arm in final},
        "delta_selected_minus_random_by_seed": deltas,
        "delta_selected_minus_random_mean": {k: mean(v) for k, v in deltas.items()},
        "ratio_selected_over_random_mean": {
            k: mean([final["selected"][s][k] for s in seeds]) / mean([final["random"][s][k] for s in seeds])
            for k in ("edu", "general")
        },
        "curves": {arm: {str(seed): runs[arm][seed]["curve"] for seed in seeds} for arm in runs},
        # Training wall time per run, from its metric timestamps (first log line to last evaluation).
        "training_seconds": {f"{arm}_seed{seed}": runs[arm][seed]["seconds"] for arm in runs for seed in seeds},
        "seconds_this_invocation": time.time() - started,
        "machine": f"{os.cpu_count()} CPUs shared with other jobs, torch threads {args.cpu_threads}",
    }
    results_dir = Path(args.results)
    write_json_atomic(results_dir / "ablation.json", results)
    plot(results, results_dir / "ablation.png")
    print(json.dumps({"final_eval_loss_mean": results["final_eval_loss_mean"],
                      "delta_selected_minus_random_by_seed": deltas,
                      "ratio_selected_over_random_mean": results["ratio_selected_over_random_mean"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
