"""The one scoring entry point: `Scorer.load(MODEL_DIR).score(texts)`.

The REST service, the Ray batch jobs and `edufilter evaluate` all score through
this class, so normalisation (`classifier.text.normalize_text`), truncation,
calibration and the keep threshold are the same everywhere, and every score
can be stamped with `scorer.model_id` / `scorer.version`.

Score pipeline for one text:
  normalize_text(text, max_chars, split_punctuation, punctuation_to_space)
                                   -> "" for an empty document: score 0.0, no model call
  backend raw score                -> expected label (fastText, logistic), regression (ridge, forest)
  calibration                      -> monotone piecewise-linear map fitted on cross-validated
                                      predictions of the training labels (identity when absent)
  clip to [0, 5]                   -> score (float32); int_score = round half up; keep = score >= threshold

A text scores the same alone or in any batch: bit-identical for fastText and TF-IDF; for embedding
models equal up to float32 rounding (~1e-6), because the encoder's and the head's BLAS kernels sum
in an order that depends on the batch shape (every chunk is padded to the same length, so nothing
else depends on the batch).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from classifier.artefact import ArtefactError, read_artefact
from classifier.text import normalize_texts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    score: np.ndarray  # float32, continuous 0-5
    int_score: np.ndarray  # int64, 0-5
    keep: np.ndarray  # bool, score >= threshold

    def __len__(self) -> int:
        return len(self.score)


def apply_calibration(raw: np.ndarray, calibration: dict | None) -> np.ndarray:
    if calibration:
        raw = np.interp(raw, np.asarray(calibration["x"], dtype=np.float64), np.asarray(calibration["y"], dtype=np.float64))
    return np.clip(raw, 0.0, 5.0)


def load_backend(model_dir: Path, info: dict, device: str | None = None):
    from classifier import backends

    kind = info["kind"]
    if kind == "fasttext":
        return backends.FastTextBackend.load(model_dir, info)
    if kind == "tfidf":
        return backends.TfidfBackend.load(model_dir, info)
    return backends.EmbeddingBackend.load(model_dir, info, device=device)


class Scorer:
    """A loaded classifier artefact. Thread-safe: model calls are serialised by a lock
    (fastText and torch CPU inference already use all cores per call)."""

    def __init__(self, info: dict[str, Any], backend, model_dir: str | None = None) -> None:
        self.info = info
        self.backend = backend
        self.model_dir = model_dir
        scoring = info["scoring"]
        self.max_chars = int(scoring["max_chars"])
        self.split_punctuation = bool(scoring.get("split_punctuation", False))
        # absent in artefacts written before it existed: those were trained without it
        self.punctuation_to_space = bool(scoring.get("punctuation_to_space", False))
        self.calibration = scoring.get("calibration")
        self.batch_size = int(scoring.get("batch_size", 1024))
        self.model_id: str = info.get("model_id", "unsaved")
        self.version: str = info.get("version", "unsaved")
        self.domain: str = info["domain"]
        self.kind: str = info["kind"]
        self.threshold: float = float(info["threshold"])
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_dir: str | Path, *, device: str | None = None, verify: bool = True) -> "Scorer":
        """Load and verify an artefact; raises ArtefactError naming what is wrong."""
        model_dir = Path(model_dir)
        info = read_artefact(model_dir, verify=verify)
        try:
            backend = load_backend(model_dir, info, device)
        except ArtefactError:
            raise
        except Exception as exc:
            raise ArtefactError(f"{model_dir}: cannot load the {info['kind']} model ({exc})") from exc
        log.info("loaded %s (kind=%s domain=%s threshold=%s)", info["model_id"], info["kind"], info["domain"], info["threshold"])
        return cls(info, backend, str(model_dir))

    def raw_scores(self, normalized: list[str]) -> np.ndarray:
        """Backend scores for already-normalised texts; "" scores raw 0 without a model call."""
        raw = np.zeros(len(normalized), dtype=np.float64)
        nonempty = [i for i, t in enumerate(normalized) if t]
        for start in range(0, len(nonempty), self.batch_size):
            idx = nonempty[start : start + self.batch_size]
            with self._lock:
                raw[idx] = self.backend.raw_scores([normalized[i] for i in idx])
        return raw

    def finish(self, raw: np.ndarray, normalized: list[str]) -> Scores:
        score = apply_calibration(raw, self.calibration)
        score[[i for i, t in enumerate(normalized) if not t]] = 0.0  # empty document: nothing to learn from
        score = score.astype(np.float32)
        int_score = np.clip(np.floor(score.astype(np.float64) + 0.5), 0, 5).astype(np.int64)
        return Scores(score=score, int_score=int_score, keep=score >= np.float32(self.threshold))

    def score(self, texts: Sequence[str]) -> Scores:
        """Score documents. Raises TypeError naming the position of a text that is not a str."""
        if isinstance(texts, str):
            raise TypeError("score() takes a sequence of texts, not one str")
        normalized = normalize_texts(texts, self.max_chars, self.split_punctuation, self.punctuation_to_space)
        return self.finish(self.raw_scores(normalized), normalized)

    def explain(self, text: str, top_k: int = 10) -> list[tuple[str, float]]:
        """The words/n-grams that moved this document's score most, as (term, contribution to the
        0-5 score), largest |contribution| first. Positive = pushed the score up.

        TF-IDF: exact linear contributions (tf-idf weight x ridge coefficient), in units of the
        ridge output before calibration. fastText and embedding: occlusion, i.e. the change of
        the final score when every occurrence of the word is removed (embedding models try only
        the 64 most frequent words, each costing one encoder pass). Occluded words are the
        document's own whitespace-separated words, lower-cased ("sunlight." as written, even
        where the model reads "sunlight"), so a page can find and highlight them.
        """
        from classifier.text import normalize_text

        norm = normalize_text(text, self.max_chars, self.split_punctuation, self.punctuation_to_space)
        if not norm:
            return []
        if self.kind == "tfidf":
            contrib = self.backend.term_contributions(norm)
        else:
            words = normalize_text(text, self.max_chars).split()
            contrib = self._occlusion(norm, words, max_terms=64 if self.kind == "embedding" else 2000)
        contrib.sort(key=lambda kv: (-abs(kv[1]), kv[0]))
        return contrib[:top_k]

    def _occlusion(self, norm: str, words: list[str], max_terms: int) -> list[tuple[str, float]]:
        counts: dict[str, int] = {}
        for w in words:
            counts[w] = counts.get(w, 0) + 1
        terms = sorted(counts, key=lambda t: (-counts[t], t))[:max_terms]
        # each variant goes through the model's own normalisation (a no-op without punctuation_to_space)
        variants = normalize_texts(
            [" ".join(w for w in words if w != term) for term in terms],
            self.max_chars, self.split_punctuation, self.punctuation_to_space,
        )
        full = self.finish(self.raw_scores([norm]), [norm]).score[0]
        reduced = self.finish(self.raw_scores(variants), variants).score
        return [(term, float(full - r)) for term, r in zip(terms, reduced)]

    def __repr__(self) -> str:
        return f"Scorer({self.model_id}, kind={self.kind}, domain={self.domain}, threshold={self.threshold})"
