"""`edufilter train` and `edufilter evaluate`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger(__name__)


def _train_parser() -> argparse.ArgumentParser:
    from classifier.artefact import KINDS
    from classifier.backends import HEADS
    from classifier.train import CALIBRATIONS
    from edufilter.documents import DOMAINS

    p = argparse.ArgumentParser(prog="edufilter train", description="Train an educational-value classifier on 0-5 labels.")
    p.add_argument("--labels", required=True, help="label file(s), comma-separated: parquet or JSONL with text, score (0-5) [, domain, status]")
    p.add_argument("--domain", required=True, choices=DOMAINS, help="domain the model scores; rows with another domain are an error")
    p.add_argument("--kind", default="fasttext", choices=KINDS, help="model kind (default: fasttext)")
    p.add_argument("--output", required=True, help="model directory to write (replaced atomically when it exists)")
    p.add_argument("--head", default="ridge", choices=HEADS, help="embedding kind: scikit-learn head (default: ridge)")
    p.add_argument("--encoder", default=None, help="embedding kind: local sentence-transformers directory (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--device", default=None, help="embedding kind: torch device (default: cuda when available, else cpu)")
    p.add_argument("--max-chunks", type=int, default=8, help="embedding kind: 254-token windows embedded per document (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed + same labels = same model (default: 0)")
    p.add_argument("--holdout", type=float, default=None, help="fraction of labels held out (stratified) and evaluated into model.json")
    p.add_argument("--threshold", type=float, default=3.0, help="keep threshold on the 0-5 score (default: 3)")
    p.add_argument("--max-chars", type=int, default=None, help="characters of each document the model reads (default: per domain)")
    p.add_argument("--cv-folds", type=int, default=4, help="cross-validation folds for the hyperparameter search; 0 = no search (default: 4)")
    p.add_argument("--calibration", default="isotonic-f1", choices=CALIBRATIONS, help="score calibration fitted on cross-validated predictions (see classifier.train.fit_calibration)")
    p.add_argument("--params", default=None, help="fixed hyperparameters as JSON (skips the search), e.g. '{\"epoch\": 25}'")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def train_main(argv: list[str]) -> int:
    from classifier.labels import LabelError
    from classifier.train import TrainConfig, train_model

    args = _train_parser().parse_args(argv)
    try:
        params = json.loads(args.params) if args.params else {}
        config = TrainConfig(
            domain=args.domain, kind=args.kind, head=args.head, encoder=args.encoder, device=args.device,
            max_chunks=args.max_chunks, seed=args.seed, holdout=args.holdout, threshold=args.threshold,
            max_chars=args.max_chars, cv_folds=args.cv_folds, calibration=args.calibration, params=params,
            progress=not args.no_progress,
        )
        info = train_model(args.labels, args.output, config)
    except (LabelError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"edufilter train: error: {exc}", file=sys.stderr)
        return 2
    summary = {"model_id": info["model_id"], "version": info["version"], "output": args.output}
    if "holdout" in info["evaluation"]:
        h = info["evaluation"]["holdout"]
        summary.update({k: h[k] for k in ("n", "f1_at_3", "macro_f1", "spearman")})
    print(json.dumps(summary))
    return 0


def _evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter evaluate",
        description="Evaluate one or more classifiers on labelled documents (binary P/R/F1 at the threshold, "
        "6-class accuracy and macro-F1, Spearman, MSE, confusion matrix, calibration).",
    )
    p.add_argument("--model", required=True, help="model directory, or several comma-separated to compare")
    p.add_argument("--labels", required=True, help="label file(s), comma-separated: parquet or JSONL with text, score")
    p.add_argument("--json", action="store_true", help="print one JSON object: the metrics for one model; for several, "
                   "{'models': [metrics, ...], 'n': N} in --model order")
    p.add_argument("--plots", default=None, help="directory for PNGs: confusion matrix and score distribution by true label")
    p.add_argument("--device", default=None, help="torch device for embedding models (default: cuda when available)")
    return p


def evaluate_main(argv: list[str]) -> int:
    import numpy as np

    from classifier.artefact import ArtefactError
    from classifier.evaluate import comparison_table, evaluate_scorer, format_report, write_plots
    from classifier.labels import LabelError, read_labels
    from classifier.scorer import Scorer

    args = _evaluate_parser().parse_args(argv)
    model_dirs = [m for m in args.model.split(",") if m.strip()]
    results = []
    try:
        scorers = [Scorer.load(m.strip()) for m in model_dirs]
        domains = {s.domain for s in scorers}
        labels = read_labels(args.labels, scorers[0].domain if len(domains) == 1 else None)
        for scorer in scorers:
            metrics, score = evaluate_scorer(scorer, labels, progress=not args.json)
            metrics["model_dir"] = scorer.model_dir
            results.append(metrics)
            if args.plots:
                metrics["plots"] = write_plots(metrics, labels.scores, np.asarray(score), args.plots)
    except (ArtefactError, LabelError, ValueError, TypeError) as exc:
        print(f"edufilter evaluate: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = results[0] if len(results) == 1 else {"n": results[0]["n"], "models": results}
        print(json.dumps(out, default=float))
    else:
        print(comparison_table(results))
        for r in results:
            print()
            print(format_report(r))
    return 0
