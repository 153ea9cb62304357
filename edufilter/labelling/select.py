"""Active selection: spend the next labelling round where the classifiers are
least sure.

From a pool of candidates (a stratified sample `pool_factor` times larger
than the labelling limit), every classifier given with ``--model-dir`` scores
each document through the one `classifier.scorer.Scorer`. A document's
priority is

    disagreement - mean margin

where ``margin = |score - threshold|`` (a classifier's distance from its own
keep decision: near zero means a coin flip on keep/drop) and
``disagreement = max score - min score`` across classifiers (0 with one).
With two classifiers this puts first the documents they disagree on most,
then the ones both place at the threshold. The classifiers give a point
score, not a label distribution, so the margin stands in for the expected-
label entropy. Ties keep the sample's seeded order, so the choice is
reproducible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edufilter.documents import Document

log = logging.getLogger(__name__)

SCORE_BATCH = 512


@dataclass(frozen=True)
class Selection:
    documents: list[Document]
    priority: np.ndarray  # of the selected documents, in order
    pool_size: int
    models: tuple[str, ...]
    mean_margin_pool: float
    mean_margin_selected: float


def uncertainty_priority(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """`scores` is (n_models, n_docs) on the 0-5 scale; higher priority = more worth labelling."""
    scores = np.asarray(scores, dtype=np.float64)
    margins = np.abs(scores - np.asarray(thresholds, dtype=np.float64)[:, None])  # (M, N)
    disagreement = scores.max(axis=0) - scores.min(axis=0)  # (N,)
    return disagreement - margins.mean(axis=0)


def select_uncertain(pool: Sequence[Document], model_dirs: Sequence[str], limit: int) -> Selection:
    from classifier.scorer import Scorer

    if not model_dirs:
        raise ValueError("--select uncertain needs at least one --model-dir (a trained classifier folder)")
    scorers = [Scorer.load(d) for d in model_dirs]
    texts = [d.text for d in pool]
    scores = np.zeros((len(scorers), len(texts)), dtype=np.float64)
    for m, scorer in enumerate(scorers):
        for start in range(0, len(texts), SCORE_BATCH):
            scores[m, start : start + SCORE_BATCH] = scorer.score(texts[start : start + SCORE_BATCH]).score
    thresholds = [s.threshold for s in scorers]
    priority = uncertainty_priority(scores, thresholds)
    order = np.argsort(-priority, kind="stable")[:limit]
    margins = np.abs(scores - np.asarray(thresholds)[:, None]).mean(axis=0)
    selection = Selection(
        documents=[pool[i] for i in order],
        priority=priority[order],
        pool_size=len(pool),
        models=tuple(s.model_id for s in scorers),
        mean_margin_pool=float(margins.mean()) if len(pool) else 0.0,
        mean_margin_selected=float(margins[order].mean()) if len(order) else 0.0,
    )
    log.info(
        "active selection: %d of %d candidates by %s; mean |score - threshold| %.3f in the pool, %.3f selected",
        len(order), len(pool), ", ".join(selection.models), selection.mean_margin_pool, selection.mean_margin_selected,
    )
    return selection
