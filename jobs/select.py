"""`edufilter select`: choose a pretraining corpus from scored shards, without rescoring.

Two ways to decide:

  --threshold 3                 keep every document with score >= 3 (or per key: --threshold web=3.2)
  --token-budget web=88B ...    per key, keep the highest-scoring documents up to that many tokens

A budget KEY names a source (refinedweb, the-stack, stackoverflow, ...), a
domain (web, code, stackoverflow), a `+`-joined group solved jointly
(`code+stackoverflow`), or `all`. Each document belongs to at most one key
(overlapping keys are an error); documents no key names are not selected.

The phi-1.5-web recipe (88B tokens of filtered web, 7B of code and Q&A) is one command:

    edufilter select --scored scored/ --output corpus/ \\
        --token-budget web=88B --token-budget code+stackoverflow=7B

or, as a total and a mix: `--token-budget all=95B --mix web=88,code+stackoverflow=7`.
On sample data the same recipe scales down with `--scale 1e-6` (88B -> 88K tokens).

How a budget is solved: the scoring job stored, per shard and domain, a token-weighted
histogram of scores in 0.01-wide bins. Walking the bins from the top gives the bin where
the budget runs out, without reading any shard. Only that boundary bin's documents are
read (id, score, tokens), ordered by score, ties broken by sha256(id), and taken while
they fit. The rule written to the manifest is therefore exact and reproducible:
keep iff score > cut_score, or score == cut_score and sha256(id) <= cut_hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edufilter.io import write_json_atomic, write_parquet_atomic
from jobs.layout import ScoredDir
from jobs.stages import BIN_WIDTH, HISTOGRAM_BINS, score_bins

log = logging.getLogger(__name__)

CORPUS_COLUMNS = ["text", "id", "source", "domain", "url", "shard", "row", "score", "int_score", "tokens", "model",
                  "model_version"]
SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
MANIFEST = "manifest.json"


def parse_tokens(text: str) -> int:
    """'88B' -> 88_000_000_000; also plain integers and floats like 1.5e6."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBGT]?)\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"not a token count: {text!r} (examples: 7B, 88e9, 500000)")
    value = float(m.group(1)) * SUFFIXES[m.group(2).upper()]
    if value <= 0:
        raise ValueError(f"token budget must be positive: {text!r}")
    return int(round(value))


@dataclass(frozen=True)
class SelectionKey:
    """A named set of documents decided together: sources and/or domains, or everything."""

    name: str

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(self.name.split("+"))

    def matches(self, source: str, domain: str) -> bool:
        return self.name == "all" or source in self.members or domain in self.members


@dataclass(frozen=True)
class SelectConfig:
    scored: tuple[str, ...]
    output: str
    thresholds: dict[str, float] = field(default_factory=dict)  # key -> min score
    budgets: dict[str, int] = field(default_factory=dict)  # key -> tokens (after mix and scale)

    def __post_init__(self) -> None:
        if bool(self.thresholds) == bool(self.budgets):
            raise ValueError("give either --threshold or --token-budget (exactly one of them)")
        for key, t in self.thresholds.items():
            if not 0.0 <= t <= 5.0:
                raise ValueError(f"--threshold {key}={t}: must be within 0-5")
        for d in self.scored:
            if not (Path(d) / "_done").is_dir():
                raise ValueError(f"--scored {d}: no completed shards (not an `edufilter score` output folder)")

    @property
    def keys(self) -> list[SelectionKey]:
        return [SelectionKey(k) for k in (self.thresholds or self.budgets)]


def parse_key_values(items: list[str], parse_value, flag: str, default_key: str = "all") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        for part in item.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                key, value = default_key, key
            key = key.strip()
            if not key:
                raise ValueError(f"{flag} {item!r}: empty key")
            if key in out:
                raise ValueError(f"{flag}: key {key!r} given twice")
            out[key] = parse_value(value.strip())
    return out


def resolve_budgets(budgets: dict[str, int], mix: dict[str, float] | None, scale: float) -> dict[str, int]:
    if mix:
        if len(budgets) != 1:
            raise ValueError("--mix splits one total: give exactly one --token-budget (e.g. all=95B)")
        total = next(iter(budgets.values()))
        weight = sum(mix.values())
        if weight <= 0 or any(w < 0 for w in mix.values()):
            raise ValueError(f"--mix weights must be non-negative and not all zero: {mix}")
        budgets = {k: total * w / weight for k, w in mix.items() if w > 0}
    if scale <= 0:
        raise ValueError(f"--scale must be positive, got {scale}")
    return {k: max(1, int(round(v * scale))) for k, v in budgets.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edufilter select",
        description="Select a pretraining corpus from `edufilter score` output by score threshold or token budget "
        "(per source, domain or group); writes parquet shards of text + provenance and manifest.json.",
        epilog="phi-1.5-web recipe: --token-budget web=88B --token-budget code+stackoverflow=7B "
        "(add --scale 1e-6 on sample data).",
    )
    p.add_argument("--scored", required=True, action="append", help="scored-output folder (repeatable)")
    p.add_argument("--output", required=True, help="corpus folder to write")
    p.add_argument("--threshold", action="append", default=[],
                   help="keep score >= T: 'T' for all documents or 'KEY=T' (repeatable, KEY = source/domain/group)")
    p.add_argument("--token-budget", action="append", default=[],
                   help="'KEY=TOKENS' (e.g. web=88B, code+stackoverflow=7B, all=95B; suffixes K/M/B/T; repeatable)")
    p.add_argument("--mix", default=None,
                   help="split a single total budget: 'web=0.8,code=0.2' (weights are normalised)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every budget by this factor, e.g. 1e-6 to run a real recipe on sample data")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        thresholds = parse_key_values(args.threshold, float, "--threshold")
        budgets = parse_key_values(args.token_budget, parse_tokens, "--token-budget")
        mix = parse_key_values([args.mix], float, "--mix") if args.mix else None
        if mix and not budgets:
            raise ValueError("--mix needs a --token-budget total")
        if budgets:
            budgets = resolve_budgets(budgets, mix, args.scale)
        config = SelectConfig(scored=tuple(args.scored), output=args.output, thresholds=thresholds, budgets=budgets)
        log.info("edufilter select config: %s", json.dumps(asdict(config), sort_keys=True))
        manifest = select(config, command=["edufilter", "select", *argv])
    except ValueError as exc:
        print(f"edufilter select: error: {exc}", file=sys.stderr)
        return 2
    print(format_manifest(manifest))
    return 0


@dataclass
class ShardRef:
    scored_dir: ScoredDir
    stats: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.scored_dir.shard_path(self.stats["shard_key"])


@dataclass
class Decision:
    """The exact keep rule of one key."""

    key: str
    mode: str  # "threshold" | "budget"
    min_score: float | None = None  # threshold mode
    budget: int | None = None
    boundary_bin: int = -1  # budget mode: bins above are kept whole
    cut_score: float | None = None  # within the boundary bin: score > cut, or == cut and hash <= cut_hash
    cut_hash: str | None = None

    def keep(self, scores: np.ndarray, ids: list[str]) -> np.ndarray:
        if self.mode == "threshold":
            return scores >= np.float32(self.min_score)
        bins = score_bins(scores)
        keep = bins > self.boundary_bin
        if self.cut_score is not None:
            cut = np.float32(self.cut_score)
            boundary = np.nonzero((bins == self.boundary_bin) & (scores >= cut))[0]
            for i in boundary:
                if scores[i] > cut or id_hash(ids[i]) <= self.cut_hash:
                    keep[i] = True
        return keep


def id_hash(doc_id: str) -> str:
    return hashlib.sha256(doc_id.encode("utf-8", errors="surrogatepass")).hexdigest()


def _key_of(keys: list[SelectionKey], source: str, domain: str) -> str | None:
    matching = [k.name for k in keys if k.matches(source, domain)]
    if len(matching) > 1:
        raise ValueError(f"keys {matching} overlap on source={source!r} domain={domain!r}; each document must "
                         "belong to one key")
    return matching[0] if matching else None


def select(config: SelectConfig, command: list[str] | None = None) -> dict[str, Any]:
    shards = [ShardRef(ScoredDir(d), s) for d in config.scored for s in ScoredDir(d).completed_stats()]
    if not shards:
        raise ValueError(f"no completed scored shards in {', '.join(config.scored)}")
    seen: dict[str, Path] = {}
    for ref in shards:
        key = ref.stats["shard_key"]
        if key in seen:
            raise ValueError(f"input {ref.stats['path']} was scored twice ({seen[key]} and {ref.path}); "
                             "select from one of them")
        seen[key] = ref.path
    keys = config.keys
    # (shard, domain) -> key, and per key the token-weighted histogram
    hist_docs: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
    hist_tokens: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(HISTOGRAM_BINS, dtype=np.int64))
    unselected: Counter[str] = Counter()
    for ref in shards:
        for domain, bins in ref.stats["token_histogram"].items():
            key = _key_of(keys, ref.stats["source"], domain)
            if key is None:
                unselected[f"{ref.stats['source']}/{domain}"] += sum(v[1] for v in bins.values())
                continue
            for b, (n, t) in bins.items():
                hist_docs[key][int(b)] += n
                hist_tokens[key][int(b)] += t
    decisions = {}
    for key in keys:
        if config.thresholds:
            decisions[key.name] = Decision(key.name, "threshold", min_score=config.thresholds[key.name])
        else:
            decisions[key.name] = _solve_budget(key, config.budgets[key.name], hist_tokens[key.name], shards, keys)
    manifest = _write_corpus(config, shards, keys, decisions, command or [])
    for name, info in manifest["selection"].items():
        info["tokens_available"] = int(hist_tokens[name].sum())
        info["documents_available"] = int(hist_docs[name].sum())
    manifest["unselected_tokens"] = dict(unselected)
    write_json_atomic(Path(config.output) / MANIFEST, manifest)
    return manifest


def _solve_budget(key: SelectionKey, budget: int, tokens_per_bin: np.ndarray, shards: list[ShardRef],
                  keys: list[SelectionKey]) -> Decision:
    above = 0
    for b in range(HISTOGRAM_BINS - 1, -1, -1):
        if above + tokens_per_bin[b] > budget:
            break
        above += int(tokens_per_bin[b])
    else:
        log.warning("budget %s=%d exceeds the %d tokens available: everything is kept", key.name, budget, above)
        return Decision(key.name, "budget", budget=budget, boundary_bin=-1)
    # Only the boundary bin is read from the shards: its documents in (score desc, sha256(id)) order.
    remaining = budget - above
    candidates = []
    for ref in shards:
        table = pq.read_table(ref.path, columns=["id", "score", "tokens", "domain"])
        scores = table["score"].to_numpy(zero_copy_only=False)
        in_bin = score_bins(scores) == b
        if not in_bin.any():
            continue
        domains = table["domain"].to_pylist()
        ids = table["id"].to_pylist()
        tokens = table["tokens"].to_numpy()
        for i in np.nonzero(in_bin)[0]:
            if _key_of(keys, ref.stats["source"], domains[i]) == key.name:
                candidates.append((-float(scores[i]), id_hash(ids[i]), int(tokens[i])))
    candidates.sort()
    taken = 0
    cut = None
    for neg_score, h, t in candidates:
        if taken + t > remaining:
            break
        taken += t
        cut = (-neg_score, h)
    return Decision(key.name, "budget", budget=budget, boundary_bin=b,
                    cut_score=None if cut is None else cut[0], cut_hash=None if cut is None else cut[1])


def _write_corpus(config: SelectConfig, shards: list[ShardRef], keys: list[SelectionKey],
                  decisions: dict[str, Decision], command: list[str]) -> dict[str, Any]:
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / MANIFEST
    old_files = set()
    if previous.exists():
        old_files = {f["file"] for f in json.loads(previous.read_text(encoding="utf-8")).get("files", [])}
    kept = {k.name: Counter() for k in keys}
    models: dict[str, set] = defaultdict(set)
    counters: dict[str, set] = defaultdict(set)
    files = []
    for ref in sorted(shards, key=lambda r: r.stats["shard_key"]):
        table = pq.read_table(ref.path)
        scores = table["score"].to_numpy(zero_copy_only=False)
        ids = table["id"].to_pylist()
        domains = np.asarray(table["domain"].to_pylist(), dtype=object)
        keep = np.zeros(table.num_rows, dtype=bool)
        for domain in set(domains.tolist()):
            name = _key_of(keys, ref.stats["source"], domain)
            if name is None:
                continue
            mask = domains == domain
            keep |= mask & decisions[name].keep(scores, ids)
        selected = table.filter(pa.array(keep)).select(CORPUS_COLUMNS)
        for domain in set(selected["domain"].to_pylist()):
            name = _key_of(keys, ref.stats["source"], domain)
            part = selected.filter(pc.equal(selected["domain"], domain))
            kept[name]["documents"] += part.num_rows
            kept[name]["tokens"] += int(pc.sum(part["tokens"]).as_py() or 0)
            models[name].update(f"{m}@{v}" for m, v in ref.stats["models"])
            counters[name].add(ref.stats["token_counter"])
        if selected.num_rows == 0:
            continue
        name = f"{ref.stats['shard_key']}.parquet"
        write_parquet_atomic(out / name, selected)
        files.append({"file": name, "scored_shard": str(ref.path), "input": ref.stats["path"],
                      "documents": selected.num_rows, "tokens": int(pc.sum(selected["tokens"]).as_py() or 0)})
    for stale in old_files - {f["file"] for f in files}:
        (out / stale).unlink(missing_ok=True)
    selection = {}
    for k in keys:
        d = decisions[k.name]
        selection[k.name] = {
            "mode": d.mode,
            "budget_tokens": d.budget,
            "min_score": d.min_score,
            "threshold": _effective_threshold(d),
            "rule": asdict(d),
            "documents_kept": kept[k.name]["documents"],
            "tokens_kept": kept[k.name]["tokens"],
            "models": sorted(models[k.name]),
            "token_counters": sorted(counters[k.name]),
        }
    return {
        "command": command,
        "scored": list(config.scored),
        "selection": selection,
        "files": files,
        "documents": sum(f["documents"] for f in files),
        "tokens": sum(f["tokens"] for f in files),
        "columns": CORPUS_COLUMNS,
    }


def _effective_threshold(d: Decision) -> float:
    """The lowest score kept (threshold mode: the threshold itself)."""
    if d.mode == "threshold":
        return float(d.min_score)
    if d.cut_score is not None:
        return float(d.cut_score)
    return round((d.boundary_bin + 1) * BIN_WIDTH, 4) if d.boundary_bin >= 0 else 0.0


def format_manifest(manifest: dict[str, Any]) -> str:
    head = f"{'key':<22}{'mode':>10}{'budget':>14}{'threshold':>10}{'docs kept':>11}{'tokens kept':>13}" \
           f"{'of tokens':>13}"
    lines = [head, "-" * len(head)]
    for name, s in manifest["selection"].items():
        budget = "" if s["budget_tokens"] is None else str(s["budget_tokens"])
        lines.append(f"{name:<22}{s['mode']:>10}{budget:>14}{s['threshold']:>10.3f}{s['documents_kept']:>11}"
                     f"{s['tokens_kept']:>13}{s['tokens_available']:>13}")
    lines.append(f"{len(manifest['files'])} corpus shards, {manifest['documents']} documents, "
                 f"{manifest['tokens']} tokens")
    return "\n".join(lines)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    sys.exit(main())
