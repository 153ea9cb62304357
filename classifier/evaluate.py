"""Evaluation the way FineWeb-Edu reports its classifier: binary precision/recall/F1 at the
keep threshold, 6-class accuracy and macro-F1, Spearman, MSE, plus the confusion matrix and a
calibration table. Predictions always come from `Scorer.score` (the same path as the service
and the jobs)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LABELS = np.arange(6)


def compute_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float = 3.0) -> dict[str, Any]:
    """All metrics for continuous scores `score` against integer labels `y_true`."""
    from scipy.stats import spearmanr
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    score = np.asarray(score, dtype=np.float64)
    y_int = np.clip(np.floor(score + 0.5), 0, 5).astype(np.int64)
    true_keep = y_true >= threshold
    pred_keep = score >= threshold
    p, r, f, _ = precision_recall_fscore_support(true_keep, pred_keep, average="binary", zero_division=0)
    if len(np.unique(y_true)) > 1 and len(np.unique(score)) > 1:
        spearman = float(spearmanr(y_true, score).statistic)
    else:
        spearman = float("nan")
    present = np.unique(np.concatenate([y_true, y_int]))
    return {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "precision_at_3": float(p),
        "recall_at_3": float(r),
        "f1_at_3": float(f),
        "accuracy": float(accuracy_score(y_true, y_int)),
        # macro over the classes that occur in the labels or the predictions (sklearn's convention)
        "macro_f1": float(f1_score(y_true, y_int, labels=present, average="macro", zero_division=0)),
        "spearman": spearman,
        "mse": float(np.mean((score - y_true) ** 2)),
        "positives": int(true_keep.sum()),
        "predicted_positives": int(pred_keep.sum()),
        "confusion_matrix": confusion_matrix(y_true, y_int, labels=LABELS).tolist(),  # rows: true 0-5, cols: predicted
        "calibration": calibration_table(y_true, score),
    }


def calibration_table(y_true: np.ndarray, score: np.ndarray) -> list[dict[str, Any]]:
    """Per predicted-score bin [k-0.5, k+0.5): how many documents, their mean score and mean true label,
    and the share truly at or above 3."""
    rows = []
    edges = [-np.inf, 0.5, 1.5, 2.5, 3.5, 4.5, np.inf]
    for k in range(6):
        m = (score >= edges[k]) & (score < edges[k + 1])
        n = int(m.sum())
        rows.append(
            {
                "bin": k,
                "n": n,
                "mean_score": float(score[m].mean()) if n else None,
                "mean_label": float(y_true[m].mean()) if n else None,
                "share_label_ge_3": float((y_true[m] >= 3).mean()) if n else None,
            }
        )
    return rows


def evaluate_scorer(scorer, labels, progress: bool = False) -> tuple[dict[str, Any], np.ndarray]:
    """Score a LabelSet with a Scorer; returns (metrics, scores)."""
    from tqdm.auto import tqdm

    scores = []
    step = max(scorer.batch_size, 64)
    for start in tqdm(range(0, len(labels), step), desc=f"scoring {scorer.model_id}", disable=not progress, unit="batch"):
        scores.append(scorer.score(labels.texts[start : start + step]).score)
    score = np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)
    metrics = compute_metrics(labels.scores, score, scorer.threshold)
    metrics.update(model_id=scorer.model_id, version=scorer.version, kind=scorer.kind, domain=scorer.domain)
    return metrics, score


SUMMARY_KEYS = ("n", "f1_at_3", "precision_at_3", "recall_at_3", "macro_f1", "accuracy", "spearman", "mse")


def comparison_table(results: list[dict[str, Any]]) -> str:
    """A markdown table with one row per model."""
    head = "| model | kind | " + " | ".join(SUMMARY_KEYS) + " |"
    sep = "|" + "---|" * (len(SUMMARY_KEYS) + 2)
    lines = [head, sep]
    for r in results:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in SUMMARY_KEYS]
        lines.append(f"| {r['model_id']} | {r['kind']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_report(metrics: dict[str, Any]) -> str:
    """Confusion matrix and calibration table of one model, as text."""
    lines = [f"{metrics['model_id']}: confusion matrix (rows = true label 0-5, columns = predicted int_score 0-5)"]
    lines.append("      " + " ".join(f"{k:>5}" for k in range(6)))
    for k, row in enumerate(metrics["confusion_matrix"]):
        lines.append(f"  {k:>2}  " + " ".join(f"{v:>5}" for v in row))
    lines.append("calibration (by predicted score bin):")
    lines.append("  bin      n  mean_score  mean_label  share>=3")
    for c in metrics["calibration"]:
        if c["n"]:
            lines.append(
                f"  {c['bin']:>3}  {c['n']:>5}  {c['mean_score']:>10.2f}  {c['mean_label']:>10.2f}  {c['share_label_ge_3']:>8.2f}"
            )
        else:
            lines.append(f"  {c['bin']:>3}  {0:>5}")
    return "\n".join(lines)


def save_png(fig, path: Path) -> str:
    """Write a matplotlib figure atomically as PNG, close it, and return the path."""
    import matplotlib.pyplot as plt

    from edufilter.io import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(path)


def write_plots(metrics: dict[str, Any], y_true: np.ndarray, score: np.ndarray, out_dir: str | os.PathLike) -> list[str]:
    """PNG of the confusion matrix and of the score distribution per true label; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = metrics["model_id"]
    paths = []

    cm = np.asarray(metrics["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(6):
        for j in range(6):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted int_score")
    ax.set_ylabel("true label")
    ax.set_xticks(range(6))
    ax.set_yticks(range(6))
    ax.set_title(f"{name}\nF1@3={metrics['f1_at_3']:.3f} macro-F1={metrics['macro_f1']:.3f}", fontsize=9)
    paths.append(save_png(fig, out_dir / f"{name}.confusion.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    groups = [score[y_true == k] for k in range(6)]
    present = [k for k in range(6) if len(groups[k])]
    ax.boxplot([groups[k] for k in present], positions=present, widths=0.6)
    for k in present:
        jitter = np.random.default_rng(k).uniform(-0.2, 0.2, len(groups[k]))
        ax.scatter(k + jitter, groups[k], s=6, alpha=0.4)
    ax.axhline(metrics["threshold"], color="red", linestyle="--", linewidth=1, label=f"threshold {metrics['threshold']}")
    ax.set_xlabel("true label")
    ax.set_ylabel("predicted score")
    ax.set_ylim(-0.2, 5.2)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{name}: score by true label (Spearman {metrics['spearman']:.3f})", fontsize=9)
    paths.append(save_png(fig, out_dir / f"{name}.scores.png"))
    return paths
