"""Reading and checking label files (the seed set's parquet/JSONL, or `edufilter label` output).

A label file has at least the columns `text` and `score` (int 0-5); `domain`
is checked against the domain being trained when present; rows whose
`status` is not "ok" (answers the labeller could not parse) are skipped and
counted, never trained on. Every error names the file, the row and the field.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edufilter.documents import check_domain, content_hash

log = logging.getLogger(__name__)

LABELS = (0, 1, 2, 3, 4, 5)


class LabelError(ValueError):
    """A label file that cannot be trained or evaluated on; the message names file, row and field."""


@dataclass(frozen=True)
class LabelSet:
    texts: list[str]
    scores: np.ndarray  # int64, 0-5
    ids: list[str]
    files: tuple[str, ...]
    skipped: int  # rows with status != "ok"

    def __len__(self) -> int:
        return len(self.texts)

    def distribution(self) -> dict[str, int]:
        counts = np.bincount(self.scores, minlength=6)
        return {str(k): int(counts[k]) for k in LABELS}

    def data_hash(self) -> str:
        """sha256 over (text hash, score) in file order: names exactly the data a model saw."""
        h = hashlib.sha256()
        for text, score in zip(self.texts, self.scores):
            h.update(f"{content_hash(text)}\t{int(score)}\n".encode())
        return h.hexdigest()

    def subset(self, index) -> "LabelSet":
        index = np.asarray(index)
        return LabelSet(
            texts=[self.texts[i] for i in index],
            scores=self.scores[index],
            ids=[self.ids[i] for i in index],
            files=self.files,
            skipped=self.skipped,
        )


def _read_rows(path: Path) -> list[dict]:
    if not path.exists():
        raise LabelError(f"{path}: label file not found")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise LabelError(f"{path}: not a readable parquet file ({exc})") from exc
        return table.to_pylist()
    if name.endswith((".jsonl", ".json", ".ndjson")):
        rows = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LabelError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise LabelError(f"{path}: line {lineno}: expected a JSON object")
                rows.append(row)
        return rows
    raise LabelError(f"{path}: unknown label file format (expected .parquet or .jsonl)")


def _check_score(path: Path, row: int, value) -> int:
    where = f"{path}: row {row}: field 'score'"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise LabelError(f"{where}: missing")
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LabelError(f"{where}: expected an integer 0-5, got {value!r}")
    if float(value) != int(value) or not 0 <= int(value) <= 5:
        raise LabelError(f"{where}: {value!r} is outside the labels 0-5")
    return int(value)


def read_labels(paths: str | list[str], domain: str | None = None, *, min_rows: int = 1) -> LabelSet:
    """Read one or more label files (comma-separated string or list) into a checked LabelSet."""
    if domain is not None:
        check_domain(domain)
    if isinstance(paths, str):
        paths = [p for p in paths.split(",") if p.strip()]
    if not paths:
        raise LabelError("no label file given")
    texts: list[str] = []
    scores: list[int] = []
    ids: list[str] = []
    skipped = 0
    for p in paths:
        path = Path(p.strip() if isinstance(p, str) else p)
        rows = _read_rows(path)
        if not rows:
            raise LabelError(f"{path}: label file is empty (no rows)")
        for col in ("text", "score"):
            if col not in rows[0]:
                raise LabelError(f"{path}: row 0: missing field {col!r} (columns: {', '.join(rows[0])})")
        for i, r in enumerate(rows):
            status = r.get("status", "ok")
            if status not in (None, "ok"):
                skipped += 1
                continue
            if domain is not None and r.get("domain") not in (None, domain):
                raise LabelError(
                    f"{path}: row {i}: field 'domain' is {r.get('domain')!r} but the model is for {domain!r}"
                )
            text = r.get("text")
            if not isinstance(text, str):
                what = "missing (None/NaN)" if text is None or isinstance(text, float) else type(text).__name__
                raise LabelError(f"{path}: row {i}: field 'text' is {what}")
            texts.append(text)
            scores.append(_check_score(path, i, r.get("score")))
            ids.append(str(r.get("id", f"{path.name}:{i}")))
    if skipped:
        log.warning("skipped %d label rows whose status is not 'ok'", skipped)
    if len(texts) < min_rows:
        raise LabelError(f"{', '.join(map(str, paths))}: {len(texts)} usable labelled rows, need at least {min_rows}")
    return LabelSet(texts, np.asarray(scores, dtype=np.int64), ids, tuple(map(str, paths)), skipped)


def check_trainable(labels: LabelSet, threshold: float) -> None:
    """Refuse label sets a classifier cannot learn the keep/drop decision from."""
    dist = labels.distribution()
    present = [k for k in LABELS if dist[str(k)] > 0]
    files = ", ".join(labels.files)
    if len(present) < 2:
        raise LabelError(f"{files}: field 'score': only class {present} has examples; need at least two classes")
    below = sum(dist[str(k)] for k in LABELS if k < threshold)
    above = sum(dist[str(k)] for k in LABELS if k >= threshold)
    if below == 0 or above == 0:
        side = "below" if below == 0 else "at or above"
        raise LabelError(f"{files}: field 'score': no example {side} the threshold {threshold} (distribution {dist})")
    missing = [k for k in LABELS if dist[str(k)] == 0]
    if missing:
        log.warning("classes %s have no examples; the model cannot predict them (distribution %s)", missing, dist)
