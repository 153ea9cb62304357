"""Classifier benchmark: quality per domain x kind on a stratified 20% holdout of the seed set,
a learning curve for web, and scoring speed (the fastText Scorer against bare fastText predict on
the same texts in the same run; the embedding Scorer's docs/s on CPU).

    python bench/bench_classifier.py [--seed-dir DIR] [--domains web,code,stackoverflow]
        [--kinds fasttext,tfidf,embedding-ridge,embedding-logistic,embedding-random-forest]

Builds the seed parquet files with ../shared/corpus/labelled/edufilter_seed/build_seed.py when
--seed-dir is not given. Writes bench/results/classifier.json and bench/results/classifier.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from classifier.labels import read_labels  # noqa: E402
from classifier.scorer import Scorer  # noqa: E402
from classifier.train import TrainConfig, stratified_split, train_model  # noqa: E402
from edufilter.io import write_json_atomic, write_text_atomic  # noqa: E402

log = logging.getLogger("bench_classifier")
SHARED = Path(os.environ.get("EDUFILTER_SHARED", REPO.parent / "shared"))
KINDS = ["fasttext", "tfidf", "embedding-ridge", "embedding-logistic", "embedding-random-forest"]
TARGETS = {"web": 0.82, "code": 0.80, "stackoverflow": 0.80}


def kind_config(kind: str, domain: str, seed: int, holdout: float | None) -> TrainConfig:
    if kind.startswith("embedding-"):
        return TrainConfig(domain=domain, kind="embedding", head=kind.split("-", 1)[1], seed=seed, holdout=holdout, progress=False)
    return TrainConfig(domain=domain, kind=kind, seed=seed, holdout=holdout, progress=False)


def quality(seed_dir: Path, domains: list[str], kinds: list[str], work: Path, seed: int) -> list[dict]:
    rows = []
    for domain in domains:
        labels = read_labels(str(seed_dir / f"{domain}.parquet"), domain)
        for kind in kinds:
            started = time.time()
            info = train_model(labels, str(work / f"{domain}-{kind}"), kind_config(kind, domain, seed, 0.2))
            h = info["evaluation"]["holdout"]
            cv = info["evaluation"].get("cross_validation", {})
            row = {
                "domain": domain, "kind": kind, "n_train": info["training_data"]["n"], "n_holdout": h["n"],
                "f1_at_3": h["f1_at_3"], "precision_at_3": h["precision_at_3"], "recall_at_3": h["recall_at_3"],
                "macro_f1": h["macro_f1"], "accuracy": h["accuracy"], "spearman": h["spearman"], "mse": h["mse"],
                "cv_f1_at_3": cv.get("f1_at_3"), "cv_spearman": cv.get("spearman"),
                "hyperparameters": info["hyperparameters"], "seconds": round(time.time() - started, 1),
                "target_f1_at_3": TARGETS[domain],
            }
            rows.append(row)
            log.info("%s %s: f1@3=%.3f macro-F1=%.3f spearman=%.3f (cv f1@3=%s) %.0fs", domain, kind, row["f1_at_3"],
                     row["macro_f1"], row["spearman"], f"{row['cv_f1_at_3']:.3f}" if row["cv_f1_at_3"] is not None else "-",
                     row["seconds"])
    return rows


def learning_curve(seed_dir: Path, kinds: list[str], work: Path, seed: int) -> list[dict]:
    """Web: the same 20% holdout, models trained on 25/50/100% of the remaining labels (stratified)."""
    from classifier.evaluate import evaluate_scorer

    labels = read_labels(str(seed_dir / "web.parquet"), "web")
    train_idx, held_idx = stratified_split(labels.scores, 0.2, seed)
    train, held = labels.subset(train_idx), labels.subset(held_idx)
    rows = []
    for fraction in (0.25, 0.5, 1.0):
        if fraction < 1.0:
            _, part = stratified_split(train.scores, fraction, seed + 1)
            subset = train.subset(part)
        else:
            subset = train
        for kind in kinds:
            out = work / f"curve-{kind}-{fraction}"
            train_model(subset, str(out), kind_config(kind, "web", seed, None))
            metrics, _ = evaluate_scorer(Scorer.load(out), held)
            rows.append({"fraction": fraction, "n_train": len(subset), "kind": kind, "n_holdout": metrics["n"],
                         "f1_at_3": metrics["f1_at_3"], "macro_f1": metrics["macro_f1"], "spearman": metrics["spearman"]})
            log.info("curve %s %.0f%% (n=%d): f1@3=%.3f spearman=%.3f", kind, 100 * fraction, len(subset),
                     metrics["f1_at_3"], metrics["spearman"])
    return rows


def fasttext_speed(seed_dir: Path, model_dir: Path, repeats: int = 5) -> dict:
    """MB/s of the fastText Scorer vs bare fastText predict on the same texts, one thread each.

    Both get the same texts: the web seed documents cut to the model's max_chars (so neither side
    gains from truncation); bare predict gets them with newlines replaced (it requires one line)."""
    import fasttext

    scorer = Scorer.load(model_dir)
    texts = [t[: scorer.max_chars] for t in read_labels(str(seed_dir / "web.parquet"), "web").texts]
    texts = texts * 4
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    bare_model = fasttext.load_model(str(model_dir / "model.bin"))
    one_line = [t.replace("\n", " ") for t in texts]

    def bare():
        bare_model.predict(one_line, k=-1)

    def ours():
        scorer.score(texts)

    timings = {"bare": [], "scorer": []}
    for _ in range(repeats):  # interleaved so machine load hits both alike
        for name, fn in (("bare", bare), ("scorer", ours)):
            t0 = time.process_time()
            fn()
            timings[name].append(time.process_time() - t0)
    bare_s, ours_s = min(timings["bare"]), min(timings["scorer"])
    return {
        "docs": len(texts), "mb": nbytes / 1e6, "measure": "CPU seconds of this process (per core), best of %d" % repeats,
        "bare_fasttext_mb_per_s": nbytes / 1e6 / bare_s, "scorer_mb_per_s": nbytes / 1e6 / ours_s,
        "ratio": bare_s / ours_s, "target_ratio": 0.75,
    }


def embedding_speed(seed_dir: Path, model_dir: Path) -> dict:
    import torch

    scorer = Scorer.load(model_dir, device="cpu")
    # web documents (up to 4 chunks each at web's max_chars), changed so the embedding cache misses
    texts = [t[: scorer.max_chars] + " " for t in read_labels(str(seed_dir / "web.parquet"), "web").texts[:96]]
    t0 = time.perf_counter()
    scorer.score(texts)
    seconds = time.perf_counter() - t0
    return {"device": "cpu", "torch_threads": torch.get_num_threads(), "docs": len(texts), "seconds": seconds,
            "docs_per_s": len(texts) / seconds, "max_chars": scorer.max_chars,
            "max_chunks": scorer.info["encoder"]["max_chunks"]}


def markdown(result: dict) -> str:
    lines = ["# Classifier benchmark", "", f"Seed set, stratified 20% holdout (seed {result['seed']}).", "",
             "| domain | kind | n train | n holdout | F1@3 | P@3 | R@3 | macro-F1 | Spearman | CV F1@3 | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["quality"]:
        cv = f"{r['cv_f1_at_3']:.3f}" if r["cv_f1_at_3"] is not None else "-"
        lines.append(f"| {r['domain']} | {r['kind']} | {r['n_train']} | {r['n_holdout']} | {r['f1_at_3']:.3f} | "
                     f"{r['precision_at_3']:.3f} | {r['recall_at_3']:.3f} | {r['macro_f1']:.3f} | {r['spearman']:.3f} | {cv} | {r['target_f1_at_3']} |")
    if result.get("learning_curve"):
        lines += ["", "## Learning curve (web, same holdout)", "", "| kind | fraction | n train | F1@3 | macro-F1 | Spearman |",
                  "|---|---|---|---|---|---|"]
        for r in result["learning_curve"]:
            lines.append(f"| {r['kind']} | {r['fraction']:.0%} | {r['n_train']} | {r['f1_at_3']:.3f} | {r['macro_f1']:.3f} | {r['spearman']:.3f} |")
    s = result.get("speed", {})
    if "fasttext" in s:
        f = s["fasttext"]
        lines += ["", "## Speed", "", f"fastText Scorer {f['scorer_mb_per_s']:.2f} MB/s per core vs bare fastText predict "
                  f"{f['bare_fasttext_mb_per_s']:.2f} MB/s: ratio {f['ratio']:.2f} (target {f['target_ratio']})."]
    if "embedding" in s:
        e = s["embedding"]
        lines.append(f"Embedding Scorer on CPU ({e['torch_threads']} torch threads): {e['docs_per_s']:.2f} docs/s "
                     f"(web docs, up to {e['max_chunks']} chunks each).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed-dir", default=None, help="directory with web/code/stackoverflow.parquet (default: build them)")
    p.add_argument("--domains", default="web,code,stackoverflow", help="domains to train and evaluate")
    p.add_argument("--kinds", default=",".join(KINDS), help="kinds: fasttext, tfidf, embedding-<head>")
    p.add_argument("--curve-kinds", default="fasttext,tfidf,embedding-ridge", help="kinds in the web learning curve")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "classifier.json"), help="result JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        work = Path(tmp)
        seed_dir = Path(args.seed_dir) if args.seed_dir else work / "seed"
        if not args.seed_dir:
            script = SHARED / "corpus" / "labelled" / "edufilter_seed" / "build_seed.py"
            subprocess.run([sys.executable, str(script), str(seed_dir)], check=True)
        kinds = [k for k in args.kinds.split(",") if k]
        result = {
            "benchmark": "classifier", "seed": args.seed, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                                       "load_average_at_start": os.getloadavg()},
            "quality": quality(seed_dir, [d for d in args.domains.split(",") if d], kinds, work, args.seed),
        }
        result["learning_curve"] = learning_curve(seed_dir, [k for k in args.curve_kinds.split(",") if k], work, args.seed)
        result["speed"] = {}
        if (work / "web-fasttext").exists():
            result["speed"]["fasttext"] = fasttext_speed(seed_dir, work / "web-fasttext")
            log.info("fastText speed: %s", result["speed"]["fasttext"])
        emb = next((d for d in sorted(work.glob("*-embedding-*")) if (d / "model.json").exists()), None)
        if emb:
            result["speed"]["embedding"] = embedding_speed(seed_dir, emb)
            log.info("embedding speed: %s", result["speed"]["embedding"])
    result["machine"]["load_average_at_end"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    write_json_atomic(args.output, result)
    write_text_atomic(Path(args.output).with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
