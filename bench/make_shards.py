#!/usr/bin/env python
"""Turn the shared real data (../shared/corpus) into shards in the real corpus formats.

    python bench/make_shards.py                      # -> /tmp/edufilter-shards
    python bench/make_shards.py --out DIR --rows-per-shard 200 --workers 2

Output (always outside the repository; nothing from ../shared is ever copied into it):

    OUT/manifest.json                       what was written: files, rows, counts, options, timings
    OUT/refinedweb/refinedweb-00000.parquet Falcon-RefinedWeb schema (content, url, timestamp, dump,
                                            segment, image_urls): every page of corpus/web_html/ run
                                            through edufilter.extract.extract_html; pages with no
                                            extractable text are left out (counted in the manifest).
                                            url = the page's own URL where the benchmark gives one,
                                            else its canonical link, else a file:// URI of the page;
                                            segment = the benchmark subset; dump = "edufilter-shared".
    OUT/fineweb/fineweb-00000.parquet       FineWeb schema (text, id, dump, url, date, file_path,
                                            language, language_score, token_count, score, int_score)
                                            from labelled/fineweb_edu_classifier_en (native rows).
    OUT/the-stack/the-stack-00000.parquet   The Stack schema, built by corpus/code/build.py (the
                                            labelled CPython files; --stack-all: every stdlib file).
    OUT/stackoverflow/<site>/Posts.xml      symlinks to the Stack Exchange dumps, as they come.
    OUT/stackoverflow-jsonl/<site>/posts.jsonl  the same posts as JSON lines (Posts.xml attribute names).
    OUT/warc/<name>.warc.gz                 symlinks to the WARC / WET files, as they come.
    OUT/jsonl/<name>                        symlinks to the JSONL text corpora (Dolma, CCNet), as they come.
    OUT/html/<subset>__<name>.html.gz       symlinks to the raw HTML pages of python_docs, dclm_enricher_tests
                                            and trafilatura_resources (small subsets, for the html reader).

Every file is written under a temporary name and renamed; an existing output is kept unless --force,
so a rerun only fills in what is missing. Read them back with
`edufilter.readers.read_documents("auto", OUT/<format>)`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edufilter.extract import extract_html  # noqa: E402
from edufilter.io import atomic_path, write_json_atomic, write_parquet_atomic  # noqa: E402
from edufilter.readers.web import page_url  # noqa: E402

log = logging.getLogger("make_shards")

REFINEDWEB_SCHEMA = pa.schema([
    ("content", pa.string()), ("url", pa.string()), ("timestamp", pa.timestamp("s")), ("dump", pa.string()),
    ("segment", pa.string()), ("image_urls", pa.list_(pa.list_(pa.string()))),
])
HTML_SUBSETS_LINKED = ("python_docs", "dclm_enricher_tests", "trafilatura_resources")


def known_urls(web_html: Path) -> dict[Path, str]:
    """The crawl URL each benchmark gives for its pages (AEB, trafilatura eval, WCXB)."""
    urls: dict[Path, str] = {}
    aeb = web_html / "scrapinghub_aeb"
    if (aeb / "ground-truth.json").exists():
        for page_id, entry in json.loads((aeb / "ground-truth.json").read_text()).items():
            if entry.get("url"):
                urls[aeb / "html" / f"{page_id}.html.gz"] = entry["url"]
    evaldata = web_html / "trafilatura_eval" / "evaldata.json"
    if evaldata.exists():
        for url, entry in json.loads(evaldata.read_text()).items():
            urls[web_html / "trafilatura_eval" / "html" / f"{entry['file']}.gz"] = url
    for truth in sorted((web_html / "wcxb" / "ground-truth").glob("*.json.gz")):
        url = json.loads(gzip.decompress(truth.read_bytes())).get("url")
        if url:
            urls[web_html / "wcxb" / "html" / truth.name.replace(".json.gz", ".html.gz")] = url
    return urls


def html_pages(web_html: Path) -> list[Path]:
    pages = [p for p in files_under(web_html) if p.name.endswith((".html", ".html.gz", ".htm"))]
    # Readability's expected.html is its own extraction (ground truth), not a page.
    return sorted(p for p in pages if not p.name.startswith("expected"))


def extract_page(job: tuple[str, str | None]) -> tuple[str, str]:
    """(path, known url) -> (text, url) in a worker process."""
    path, url = job
    data = Path(path).read_bytes()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return extract_html(data, url=url), url or page_url(data) or Path(path).as_uri()


def write_refinedweb(corpus: Path, out: Path, rows_per_shard: int, workers: int, force: bool) -> dict:
    target = out / "refinedweb"
    if target.exists() and any(target.glob("*.parquet")) and not force:
        return {"skipped": "exists", "files": sorted(str(p) for p in target.glob("*.parquet"))}
    web_html = corpus / "web_html"
    pages, urls = html_pages(web_html), known_urls(web_html)
    jobs = [(str(p), urls.get(p)) for p in pages]
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(_progress(pool.map(extract_page, jobs, chunksize=8), len(jobs), "extracting pages"))
    elapsed = time.perf_counter() - started
    rows = [
        {"content": text, "url": url, "timestamp": None, "dump": "edufilter-shared",
         "segment": page.relative_to(web_html).parts[0], "image_urls": []}
        for page, (text, url) in zip(pages, results) if text
    ]
    files = []
    for n, start in enumerate(range(0, len(rows), rows_per_shard)):
        path = target / f"refinedweb-{n:05d}.parquet"
        write_parquet_atomic(path, pa.Table.from_pylist(rows[start:start + rows_per_shard], schema=REFINEDWEB_SCHEMA))
        files.append(str(path))
    log.info("refinedweb: %d pages -> %d documents in %d files (%.1f pages/s)", len(pages), len(rows), len(files),
             len(pages) / elapsed)
    return {"files": files, "pages": len(pages), "documents": len(rows), "no_text": len(pages) - len(rows),
            "extract_seconds": round(elapsed, 1)}


def write_fineweb(corpus: Path, out: Path, force: bool) -> dict:
    source = corpus / "labelled" / "fineweb_edu_classifier_en" / "english_classified_samples.csv"
    path = out / "fineweb" / "fineweb-00000.parquet"
    if path.exists() and not force:
        return {"skipped": "exists", "files": [str(path)]}
    table = pacsv.read_csv(source, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    write_parquet_atomic(path, table)
    return {"files": [str(path)], "documents": table.num_rows}


def write_the_stack(corpus: Path, out: Path, force: bool, every_file: bool) -> dict:
    path = out / "the-stack" / ("the-stack-all-00000.parquet" if every_file else "the-stack-00000.parquet")
    if path.exists() and not force:
        return {"skipped": "exists", "files": [str(path)]}
    with atomic_path(path) as tmp:
        command = [sys.executable, str(corpus / "code" / "build.py"), str(tmp)] + (["--all"] if every_file else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    log.info("the-stack: %s", done.stderr.strip())
    return {"files": [str(path)], "build_log": done.stderr.strip()}


def write_stackoverflow(corpus: Path, out: Path, force: bool) -> dict:
    files, json_files = [], []
    for dump in sorted((corpus / "stackoverflow").glob("*/Posts.xml")):
        site = dump.parent.name
        files.append(_link(dump, out / "stackoverflow" / site / "Posts.xml"))
        path = out / "stackoverflow-jsonl" / site / "posts.jsonl"
        if not path.exists() or force:
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as sink:
                for _, elem in ET.iterparse(dump):
                    if elem.tag == "row":
                        sink.write(json.dumps(dict(elem.attrib), ensure_ascii=False) + "\n")
                        elem.clear()
        json_files.append(str(path))
    return {"files": files, "jsonl_files": json_files}


def link_as_they_come(corpus: Path, out: Path) -> dict:
    warc = [_link(p, out / "warc" / p.name) for p in files_under(corpus / "warc") if p.name.endswith(".gz")]
    jsonl = [_link(p, out / "jsonl" / p.name) for p in files_under(corpus / "web_text")]
    html = [_link(p, out / "html" / f"{subset}__{p.name}")
            for subset in HTML_SUBSETS_LINKED for p in sorted((corpus / "web_html" / subset).glob("*.htm*"))]
    return {"warc": warc, "jsonl": jsonl, "html": html}


def files_under(folder: Path) -> list[Path]:
    """Every file below `folder`, sorted, following linked folders (Path.rglob does not before 3.13)."""
    return sorted(Path(root) / name for root, _, names in os.walk(folder, followlinks=True) for name in names)


def _link(target: Path, link: Path) -> str:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target.resolve())
    return str(link)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit="page", file=sys.stderr)
    except ImportError:
        return iterable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared data folder holding corpus/ (default: ../shared beside the repository)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/edufilter-shards"),
                        help="where the shards go; must be outside the repository (default: /tmp/edufilter-shards)")
    parser.add_argument("--rows-per-shard", type=int, default=400,
                        help="documents per RefinedWeb parquet file, so that readers have several files to shard")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="processes extracting HTML in parallel")
    parser.add_argument("--stack-all", action="store_true",
                        help="also build a The Stack shard of EVERY CPython stdlib file (unlabelled, ~2000 files)")
    parser.add_argument("--force", action="store_true", help="rebuild outputs that already exist")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    corpus, out = args.shared / "corpus", args.out.resolve()
    if not corpus.is_dir():
        parser.error(f"{corpus} not found: pass --shared")
    if out == REPO or REPO in out.parents:
        parser.error(f"--out {out} is inside the repository; shards of shared data must stay outside it")
    if args.rows_per_shard <= 0 or args.workers <= 0:
        parser.error("--rows-per-shard and --workers must be positive")
    log.info("config: %s", {k: str(v) for k, v in vars(args).items()})

    started = time.perf_counter()
    manifest = {
        "shared": str(args.shared.resolve()),
        "refinedweb": write_refinedweb(corpus, out, args.rows_per_shard, args.workers, args.force),
        "fineweb": write_fineweb(corpus, out, args.force),
        "the-stack": write_the_stack(corpus, out, args.force, every_file=False),
        "stackoverflow": write_stackoverflow(corpus, out, args.force),
        **link_as_they_come(corpus, out),
    }
    if args.stack_all:
        manifest["the-stack-all"] = write_the_stack(corpus, out, args.force, every_file=True)
    manifest["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / "manifest.json", manifest)
    log.info("wrote %s in %.0f s", out / "manifest.json", manifest["seconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
