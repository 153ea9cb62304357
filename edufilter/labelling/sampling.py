"""Which documents to label: a seeded sample stratified by source and length.

Each document gets a pseudo-random key derived from ``(seed, content hash)``
alone, so the sample does not depend on read order, the same command draws
the same documents again (which is what makes a rerun resume from the
cache), and a larger ``--limit`` keeps the documents of a smaller one.

Strata are ``(source, length bucket)``. The limit is shared between strata
in proportion to their sizes (largest-remainder rounding), with at least one
document from every stratum when the limit allows it, so rare sources and
very long or very short documents are represented. Memory stays bounded:
each stratum keeps only its ``limit`` smallest keys while reading.
Documents are deduplicated by content hash before sampling.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from edufilter.documents import BadDocument, Document, content_hash

log = logging.getLogger(__name__)

# Upper bounds (characters, exclusive) of the length buckets; the last bucket is open.
LENGTH_BUCKET_EDGES = (500, 2000, 4000, 16000)
LENGTH_BUCKET_NAMES = ("<500", "500-2k", "2k-4k", "4k-16k", ">=16k")


def length_bucket(n_chars: int) -> str:
    for edge, name in zip(LENGTH_BUCKET_EDGES, LENGTH_BUCKET_NAMES):
        if n_chars < edge:
            return name
    return LENGTH_BUCKET_NAMES[-1]


def sample_key(seed: int, text_hash: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{text_hash}".encode()).digest()[:8], "big")


@dataclass
class SampleStats:
    read: int = 0
    bad: Counter = field(default_factory=Counter)  # reader's BadDocument reasons
    duplicates: int = 0
    excluded: int = 0  # already labelled elsewhere (--exclude)
    strata: dict[str, int] = field(default_factory=dict)  # stratum -> documents available
    drawn: dict[str, int] = field(default_factory=dict)  # stratum -> documents drawn

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "bad": dict(self.bad),
            "duplicates": self.duplicates,
            "excluded": self.excluded,
            "strata_available": self.strata,
            "strata_drawn": self.drawn,
        }


def allocate(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Split `limit` over strata proportionally to `sizes` (largest remainder), >= 1 each when the limit allows."""
    total = sum(sizes.values())
    if limit >= total:
        return dict(sizes)
    strata = sorted(sizes)
    exact = {s: limit * sizes[s] / total for s in strata}
    quotas = {s: int(exact[s]) for s in strata}
    leftover = limit - sum(quotas.values())
    for s in sorted(strata, key=lambda s: (-(exact[s] - quotas[s]), -sizes[s], s))[:leftover]:
        quotas[s] += 1
    if limit >= len(strata):
        # A rare stratum still gets one document, taken from the stratum with the largest quota.
        for s in (s for s in strata if quotas[s] == 0 and sizes[s] > 0):
            donor = max(strata, key=lambda d: (quotas[d], d))
            quotas[donor] -= 1
            quotas[s] = 1
    return quotas


def sample_documents(
    records: Iterable[Document | BadDocument],
    *,
    limit: int | None,
    seed: int = 0,
    exclude_hashes: frozenset[str] | set[str] = frozenset(),
) -> tuple[list[Document], SampleStats]:
    """Draw up to `limit` distinct documents (all of them when `limit` is None), in sample-key order."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    stats = SampleStats()
    seen: set[str] = set()
    # stratum -> max-heap (negated keys) of the `limit` smallest-key documents seen so far
    heaps: dict[str, list[tuple[int, int, Document]]] = {}
    sizes: Counter = Counter()
    order = 0
    for record in records:
        if isinstance(record, BadDocument):
            stats.bad[record.reason] += 1
            continue
        stats.read += 1
        if not record.text or not record.text.strip():
            stats.bad["empty-text"] += 1
            continue
        text_hash = content_hash(record.text)
        if text_hash in seen:
            stats.duplicates += 1
            continue
        seen.add(text_hash)
        if text_hash in exclude_hashes:
            stats.excluded += 1
            continue
        stratum = f"{record.source}|{length_bucket(len(record.text))}"
        sizes[stratum] += 1
        key = sample_key(seed, text_hash)
        heap = heaps.setdefault(stratum, [])
        order += 1
        item = (-key, order, record)
        if limit is None or len(heap) < limit:
            heapq.heappush(heap, item)
        elif -heap[0][0] > key:
            heapq.heapreplace(heap, item)
    quotas = allocate(dict(sizes), limit if limit is not None else sum(sizes.values()))
    drawn: list[tuple[int, Document]] = []
    for stratum, heap in heaps.items():
        ranked = sorted(heap, key=lambda item: (-item[0], item[1]))[: quotas[stratum]]
        smallest = [(-neg_key, doc) for neg_key, _, doc in ranked]
        drawn.extend(smallest)
        stats.drawn[stratum] = len(smallest)
    stats.strata = dict(sorted(sizes.items()))
    stats.drawn = dict(sorted(stats.drawn.items()))
    drawn.sort(key=lambda kd: kd[0])
    return [doc for _, doc in drawn], stats
