#!/usr/bin/env python
"""Extraction quality and speed of `edufilter.extract.extract_html` on pages with ground truth.

    python bench/bench_extraction.py                 # all datasets, writes bench/results/extraction.json
    python bench/bench_extraction.py --limit 20      # quick look

Datasets (../shared/corpus/web_html, see ../shared/corpus/SOURCES.md):
  aeb          ScrapingHub Article Extraction Benchmark pages here (136 of its 181; the rest are held
               out), ground truth `articleBody`;
  wcxb         WCXB pages (article, forum, product, listing, documentation, ...), ground truth `main_content`;
  readability  Mozilla Readability's real test pages, ground truth = the text of `expected.html`.

Metrics, per dataset and extractor configuration:
  aeb_shingle  the ScrapingHub AEB method (its evaluate.py): \\w+ tokens, 4-gram shingles counted as a
               bag per page, TP/FP/FN normalised per page, precision and recall averaged over pages,
               F1 = their harmonic mean. trafilatura's published F1 0.958 on AEB is on this scale.
  token_bag    the same per-page averaging over a bag of whitespace tokens (looser: word order ignored).

Configurations, all run in the same process on the same pages:
  edufilter            extract_html as shipped (favor_recall, include_tables: the seed set's options)
  trafilatura_default  bare `trafilatura.extract(page_bytes)` with its defaults  <- the baseline
  favor_precision      the shipped options with favor_precision instead of favor_recall
  fast                 the shipped options with fast=True (no fallback extractors)
Speed is pages per CPU-second of the extracting process (= pages/s per core), file reading excluded.

Why the shipped options are favor_recall + include_tables (see CHOICE below): they are the options
the seed labels' texts were extracted with, so training and scoring see the same text; their quality
is within ~1% of trafilatura's defaults on every dataset here and they run ~1.5x faster.
favor_precision wins on AEB (news articles only) but loses ~4 F1 points on WCXB's mixed page
types (forums, docs, listings), which look more like a web crawl.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edufilter.extract import EXTRACTION, extract_html_with  # noqa: E402
from edufilter.io import write_json_atomic  # noqa: E402

PUBLISHED_TRAFILATURA_AEB_F1 = 0.958  # trafilatura's figure on the full 181-page AEB
CHOICE = ("shipped options = the seed set's (favor_recall, include_tables) so trained and scored texts match; "
          "the gap to the published 0.958 on AEB: 45 of AEB's 181 pages are held out of this copy, and "
          "trafilatura's own defaults score about the same as ours here; favor_precision reaches the published "
          "figure on AEB's news articles but drops sharply on WCXB's mixed page types")

Page = tuple[str, bytes, str, str | None]  # (page id, raw html bytes, ground-truth text, url)


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def aeb_pages(web_html: Path) -> Iterator[Page]:
    root = web_html / "scrapinghub_aeb"
    truth = json.loads((root / "ground-truth.json").read_text())
    for page_id in sorted(truth):
        path = root / "html" / f"{page_id}.html.gz"
        if path.exists():
            yield page_id, _read(path), truth[page_id].get("articleBody") or "", truth[page_id].get("url")


def wcxb_pages(web_html: Path) -> Iterator[Page]:
    root = web_html / "wcxb"
    for truth_path in sorted((root / "ground-truth").glob("*.json.gz")):
        page_id = truth_path.name.split(".")[0]
        path = root / "html" / f"{page_id}.html.gz"
        if path.exists():
            truth = json.loads(_read(truth_path))
            yield page_id, _read(path), truth["ground_truth"].get("main_content") or "", truth.get("url")


def readability_pages(web_html: Path) -> Iterator[Page]:
    import lxml.html

    for case in sorted((web_html / "mozilla_readability" / "test-pages").iterdir()):
        expected = lxml.html.fromstring(_read(case / "expected.html.gz"))
        yield case.name, _read(case / "source.html.gz"), expected.text_content(), None


DATASETS: dict[str, Callable[[Path], Iterator[Page]]] = {
    "aeb": aeb_pages, "wcxb": wcxb_pages, "readability": readability_pages}

_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 4) -> Counter:
    tokens = _WORD.findall(text or "")
    return Counter(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)) if tokens[i:i + n])


def bag_of_tokens(text: str) -> Counter:
    return Counter((text or "").split())


def tp_fp_fn(truth: Counter, predicted: Counter) -> tuple[float, float, float]:
    """Per-page counts normalised to sum 1, so long pages do not outweigh short ones (as AEB does)."""
    tp = sum((truth & predicted).values())
    fp = sum((predicted - truth).values())
    fn = sum((truth - predicted).values())
    total = tp + fp + fn
    return (tp / total, fp / total, fn / total) if total else (0.0, 0.0, 0.0)


def aggregate(counts: list[tuple[float, float, float]]) -> dict[str, float]:
    """AEB's metrics_from_tp_fp_fns: mean per-page precision and recall, F1 of the means."""
    def precision(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fp == 0 else tp / (tp + fp))

    def recall(tp, fp, fn):
        return 1.0 if fp == fn == 0 else (0.0 if tp == fn == 0 else tp / (tp + fn))

    p = statistics.mean([precision(*c) for c in counts if c[0] + c[1] > 0] or [0.0])
    r = statistics.mean([recall(*c) for c in counts if c[0] + c[2] > 0] or [0.0])
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)}


def configurations() -> dict[str, Callable[[bytes, str | None], str]]:
    import trafilatura

    precision_options = replace(EXTRACTION, favor_recall=False, favor_precision=True)
    fast_options = replace(EXTRACTION, fast=True)
    return {
        "edufilter": lambda html, url: extract_html_with(html, url, EXTRACTION),
        "trafilatura_default": lambda html, url: trafilatura.extract(html, url=url) or "",
        "favor_precision": lambda html, url: extract_html_with(html, url, precision_options),
        "fast": lambda html, url: extract_html_with(html, url, fast_options),
    }


def run(pages: list[Page], configs: dict[str, Callable[[bytes, str | None], str]]) -> dict[str, dict]:
    """Every configuration on every page, interleaved page by page so that cache warm-up and
    machine load fall on all of them alike."""
    counts = {name: {"shingle": [], "tokens": [], "empty": 0, "cpu": 0.0, "wall": 0.0} for name in configs}
    for _, html, truth, url in pages:
        truth_shingles, truth_tokens = shingles(truth), bag_of_tokens(truth)
        for name, extract in configs.items():
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            text = extract(html, url)
            c = counts[name]
            c["cpu"] += time.process_time() - started_cpu
            c["wall"] += time.perf_counter() - started_wall
            c["empty"] += not text
            c["shingle"].append(tp_fp_fn(truth_shingles, shingles(text)))
            c["tokens"].append(tp_fp_fn(truth_tokens, bag_of_tokens(text)))
    return {name: {"pages": len(pages), "empty_outputs": c["empty"], "aeb_shingle": aggregate(c["shingle"]),
                   "token_bag": aggregate(c["tokens"]), "cpu_seconds": round(c["cpu"], 2),
                   "wall_seconds": round(c["wall"], 2),
                   "pages_per_cpu_second": round(len(pages) / c["cpu"], 2) if c["cpu"] else None}
            for name, c in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared data folder holding corpus/web_html (default: ../shared)")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="which ground-truth datasets to run")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N pages of each dataset (0 = all)")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "extraction.json",
                        help="where to write the JSON results")
    args = parser.parse_args(argv)
    web_html = args.shared / "corpus" / "web_html"
    if not web_html.is_dir():
        parser.error(f"{web_html} not found: pass --shared")
    print(f"config: {vars(args)}; extraction options {asdict(EXTRACTION)}", file=sys.stderr)

    import trafilatura

    results: dict = {"datasets": {}, "published": {"trafilatura_aeb_f1": PUBLISHED_TRAFILATURA_AEB_F1,
                                                   "note": "on the full 181-page AEB; 136 of its pages are here"},
                     "extraction_options": asdict(EXTRACTION), "choice": CHOICE, "trafilatura_version": trafilatura.__version__,
                     "python": platform.python_version(), "cpu_count": os.cpu_count(),
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    configs = configurations()
    for name in args.datasets:
        pages = list(DATASETS[name](web_html))
        pages = pages[: args.limit] if args.limit else pages
        by_config = run(pages, configs)
        for config, m in list(by_config.items()):
            print(f"{name:<12} {config:<20} shingle P/R/F1 {m['aeb_shingle']['precision']:.3f}/"
                  f"{m['aeb_shingle']['recall']:.3f}/{m['aeb_shingle']['f1']:.3f}  token-bag F1 "
                  f"{m['token_bag']['f1']:.3f}  {m['pages_per_cpu_second']:.1f} pages/s/core  "
                  f"({m['pages']} pages, {m['empty_outputs']} empty)", file=sys.stderr)
        ours, base = by_config["edufilter"], by_config["trafilatura_default"]
        by_config["ratio_edufilter_vs_trafilatura_default"] = {
            "f1": round(ours["aeb_shingle"]["f1"] / base["aeb_shingle"]["f1"], 4),
            "speed": round(ours["pages_per_cpu_second"] / base["pages_per_cpu_second"], 3)}
        results["datasets"][name] = by_config
        print(f"{name:<12} ratio edufilter / trafilatura_default: F1 x{by_config['ratio_edufilter_vs_trafilatura_default']['f1']}"
              f", speed x{by_config['ratio_edufilter_vs_trafilatura_default']['speed']}", file=sys.stderr)
    if "aeb" in results["datasets"]:
        f1 = results["datasets"]["aeb"]["edufilter"]["aeb_shingle"]["f1"]
        results["aeb_f1_vs_published"] = round(f1 / PUBLISHED_TRAFILATURA_AEB_F1, 4)
        print(f"AEB F1 {f1:.3f} vs trafilatura's published {PUBLISHED_TRAFILATURA_AEB_F1}: "
              f"x{results['aeb_f1_vs_published']}", file=sys.stderr)
    write_json_atomic(args.output, results)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
