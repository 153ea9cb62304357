"""Agreement between two label sets: two LLMs, two prompt versions, LLM vs human.

Rows are matched on ``id`` or on the content hash of ``text``, whichever
matches more rows (``--key`` forces one). Only rows with a usable score are
compared (and, when the file has a ``status`` column, only ``status == ok``).
Continuous scores (a classifier's ``fwedu_score``) are rounded and clipped to
0-5 the way FineWeb-Edu derives ``int_score``.

Reported: exact agreement, within-one agreement, quadratic-weighted Cohen's
kappa, Spearman's rho, agreement on the keep decision (score >= 3) and the
6x6 confusion matrix (rows: A, columns: B).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edufilter.documents import content_hash
from edufilter.labelling.labelfiles import find_score_column, read_label_rows, score_of, text_of

log = logging.getLogger(__name__)

LEVELS = 6  # scores 0..5
KEEP_THRESHOLD = 3


@dataclass(frozen=True)
class LabelSet:
    path: str
    column: str
    by_id: dict[str, int]
    by_text: dict[str, int]
    rows: int
    unusable: int  # rows without a usable score (or status != ok)


def load_label_set(path: str | Path, column: str | None = None) -> LabelSet:
    rows = read_label_rows(path)
    column = find_score_column(rows, path, column)
    by_id: dict[str, int] = {}
    by_text: dict[str, int] = {}
    unusable = 0
    for row in rows:
        status = row.get("status")
        score = score_of(row.get(column)) if status in (None, "", "ok") else None
        if score is None:
            unusable += 1
            continue
        if row.get("id") not in (None, ""):
            by_id[str(row["id"])] = score
        text = text_of(row)
        if text is not None:
            by_text[content_hash(text)] = score
    return LabelSet(str(path), column, by_id, by_text, len(rows), unusable)


def pair_scores(a: LabelSet, b: LabelSet, key: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    if key not in ("auto", "id", "text"):
        raise ValueError(f"--key must be auto, id or text, got {key!r}")
    shared_ids = sorted(a.by_id.keys() & b.by_id.keys())
    shared_texts = sorted(a.by_text.keys() & b.by_text.keys())
    if key == "auto":
        key = "id" if len(shared_ids) >= len(shared_texts) else "text"
    keys, left, right = (shared_ids, a.by_id, b.by_id) if key == "id" else (shared_texts, a.by_text, b.by_text)
    if not keys:
        raise ValueError(
            f"no rows in common between {a.path} and {b.path} (matched on {key}; {len(shared_ids)} shared ids, "
            f"{len(shared_texts)} shared texts)"
        )
    return np.array([left[k] for k in keys]), np.array([right[k] for k in keys]), key


def confusion_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    matrix = np.zeros((LEVELS, LEVELS), dtype=np.int64)
    np.add.at(matrix, (a, b), 1)
    return matrix


def quadratic_weighted_kappa(a: np.ndarray, b: np.ndarray) -> float:
    observed = confusion_matrix(a, b).astype(float)
    n = observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    i, j = np.indices((LEVELS, LEVELS))
    weights = (i - j) ** 2 / (LEVELS - 1) ** 2
    denominator = (weights * expected).sum()
    if denominator == 0:  # both annotators gave one and the same score to everything
        return 1.0 if (weights * observed).sum() == 0 else 0.0
    return float(1.0 - (weights * observed).sum() / denominator)


def cohen_kappa_binary(a: np.ndarray, b: np.ndarray) -> float:
    p_observed = float(np.mean(a == b))
    p_expected = float(np.mean(a) * np.mean(b) + (1 - np.mean(a)) * (1 - np.mean(b)))
    return 1.0 if p_expected == 1 else (p_observed - p_expected) / (1 - p_expected)


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from scipy.stats import spearmanr

    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("agreement needs two non-empty score arrays of the same length")
    if a.min() < 0 or b.min() < 0 or a.max() >= LEVELS or b.max() >= LEVELS:
        raise ValueError("scores must be integers 0-5")
    rho = spearmanr(a, b).statistic if a.std() > 0 and b.std() > 0 else float("nan")
    keep_a, keep_b = a >= KEEP_THRESHOLD, b >= KEEP_THRESHOLD
    return {
        "n": int(a.size),
        "exact": float(np.mean(a == b)),
        "within_one": float(np.mean(np.abs(a - b) <= 1)),
        "quadratic_weighted_kappa": quadratic_weighted_kappa(a, b),
        "spearman": float(rho),
        "mean_abs_diff": float(np.mean(np.abs(a - b))),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "keep_threshold": KEEP_THRESHOLD,
        "keep_agreement": float(np.mean(keep_a == keep_b)),
        "keep_kappa": cohen_kappa_binary(keep_a.astype(float), keep_b.astype(float)),
        "confusion_matrix": confusion_matrix(a, b).tolist(),
    }


def format_report(report: dict) -> str:
    lines = [
        f"A: {report['a']['path']} (column {report['a']['column']}, {report['a']['rows']} rows, "
        f"{report['a']['unusable']} without a usable score)",
        f"B: {report['b']['path']} (column {report['b']['column']}, {report['b']['rows']} rows, "
        f"{report['b']['unusable']} without a usable score)",
        f"matched on {report['key']}: {report['n']} rows",
        f"exact agreement          {report['exact']:.3f}",
        f"within-one agreement     {report['within_one']:.3f}",
        f"quadratic-weighted kappa {report['quadratic_weighted_kappa']:.3f}",
        f"Spearman rho             {report['spearman']:.3f}",
        f"mean |A-B|               {report['mean_abs_diff']:.3f}   (mean A {report['mean_a']:.2f}, "
        f"mean B {report['mean_b']:.2f})",
        f"keep (>= {report['keep_threshold']}) agreement   {report['keep_agreement']:.3f}   "
        f"kappa {report['keep_kappa']:.3f}",
        "",
        "confusion matrix (rows A, columns B)",
        "      " + "".join(f"{j:>6}" for j in range(LEVELS)),
    ]
    for i, row in enumerate(report["confusion_matrix"]):
        lines.append(f"{i:>6}" + "".join(f"{v:>6}" for v in row))
    return "\n".join(lines)


def compare_files(a_path, b_path, *, a_column=None, b_column=None, key="auto") -> dict:
    a = load_label_set(a_path, a_column)
    b = load_label_set(b_path, b_column)
    scores_a, scores_b, used_key = pair_scores(a, b, key)
    report = agreement(scores_a, scores_b)
    report.update(
        key=used_key,
        a={"path": a.path, "column": a.column, "rows": a.rows, "unusable": a.unusable},
        b={"path": b.path, "column": b.column, "rows": b.rows, "unusable": b.unusable},
    )
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="edufilter label agree",
        description="Agreement between two label files (parquet, jsonl, json or csv): exact, within-one, "
        "quadratic-weighted kappa, Spearman, keep-decision agreement and the confusion matrix.",
    )
    parser.add_argument("a", help="first label file (rows of the confusion matrix)")
    parser.add_argument("b", help="second label file (columns of the confusion matrix); may be the same file as A")
    parser.add_argument("--a-column", help="score column of A (default: first of score, int_score, educational_score, label)")
    parser.add_argument("--b-column", help="score column of B (same default); e.g. fwedu_score")
    parser.add_argument("--key", default="auto", choices=["auto", "id", "text"],
                        help="match rows on id, on the text's content hash, or whichever matches more (auto)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--output", help="also write the JSON report to this file (atomically)")
    args = parser.parse_args(argv)
    log.info("agree: %s", vars(args))
    try:
        report = compare_files(args.a, args.b, a_column=args.a_column, b_column=args.b_column, key=args.key)
    except ValueError as exc:
        print(f"edufilter label agree: {exc}", file=sys.stderr)
        return 1
    if args.output:
        from edufilter.io import write_json_atomic

        write_json_atomic(args.output, report)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
