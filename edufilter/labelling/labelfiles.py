"""Reading label files in the formats they come in.

`edufilter label` writes parquet; the shared label sets come as the seed
JSONL, a JSON array (Gemini-labelled Danish), CSV (FineWeb-C, FineWeb-Edu
classifier samples). `read_label_rows` turns any of them into plain dicts and
`score_of` finds and normalises the score, so `label agree` and
`--source labels` accept all of them.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from edufilter.documents import Document

# Columns tried, in order, when no score column is named.
SCORE_COLUMNS = ("score", "int_score", "educational_score", "label")
TEXT_COLUMNS = ("text", "content")


class LabelFileError(ValueError):
    pass


def read_label_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"{path}: no such label file")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        if suffix in (".jsonl", ".jsonl.gz"):
            import gzip

            opener = gzip.open if suffix.endswith(".gz") else open
            rows = []
            with opener(path, "rt", encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except ValueError as exc:
                            raise LabelFileError(f"{path}: line {number} is not JSON ({exc})") from exc
            return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # {"rows": [...]} / {"data": [...]}
                data = next((v for v in data.values() if isinstance(v, list)), None)
            if not isinstance(data, list):
                raise LabelFileError(f"{path}: expected a JSON array of label objects")
            return data
        if suffix in (".csv", ".tsv"):
            csv.field_size_limit(sys.maxsize)
            with open(path, newline="", encoding="utf-8") as f:
                return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelFileError(f"{path}: cannot read ({exc})") from exc
    raise LabelFileError(f"{path}: unknown label file format {suffix!r} (parquet, jsonl, json, csv, tsv)")


def find_score_column(rows: list[dict[str, Any]], path: str | Path, column: str | None = None) -> str:
    columns = set().union(*(r.keys() for r in rows[:100])) if rows else set()
    if column:
        if column not in columns:
            raise LabelFileError(f"{path}: no column {column!r} (columns: {', '.join(sorted(columns))})")
        return column
    for name in SCORE_COLUMNS:
        if name in columns:
            return name
    raise LabelFileError(
        f"{path}: no score column found (tried {', '.join(SCORE_COLUMNS)}; columns: {', '.join(sorted(columns))}); "
        "name one with --a-column/--b-column"
    )


def score_of(value: Any) -> int | None:
    """An integer 0-5 from a label value; continuous scores are rounded and clipped the FineWeb-Edu way."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if math.isnan(number):
        return None
    return int(min(5, max(0, round(number))))


def text_of(row: dict[str, Any]) -> str | None:
    for name in TEXT_COLUMNS:
        value = row.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def label_file_documents(path: str | Path, domain: str) -> list[Document]:
    """The documents of a label file (`--source labels`), to relabel them with another annotator or prompt."""
    rows = read_label_rows(path)
    documents = []
    for number, row in enumerate(rows):
        text = text_of(row)
        if text is None:
            raise LabelFileError(f"{path}: row {number} has no text (label files need a 'text' column to relabel)")
        documents.append(
            Document(
                id=str(row.get("id") or f"{Path(path).name}:{number}"),
                text=text,
                domain=row.get("domain") or domain,
                source=str(row.get("source") or Path(path).stem),
                url=row.get("ref") or row.get("url"),
                shard=str(path),
                row=number,
            )
        )
    return documents
