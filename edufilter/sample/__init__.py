"""The bundled sample: small shards in the real corpus formats, written by the project.

Nothing here comes from a dataset. The web pages and StackOverflow threads were
written for edufilter, across the whole quality range the rubric distinguishes
(spam, cookie walls, listings and gossip up to textbook sections with worked
examples); the code part is built at run time from the local Python
installation's standard library (the files named in `code_files.jsonl`).

`build_sample(out_dir)` writes the shards the way the real datasets ship them:

    web/refinedweb-0000{0,1}.parquet   Falcon-RefinedWeb schema (content, url, timestamp, dump, segment, image_urls)
    html/*.html                        raw pages with navigation, cookie banner, sidebar and footer around the article
    stackoverflow/Posts.xml            a Stack Exchange dump file (questions, answers, AcceptedAnswerId, HTML bodies)
    code/the-stack-00000.parquet       The Stack schema, stdlib files that carry a recorded label
    code/the-stack-00001.parquet       The Stack schema, stdlib files without one (scored, never labelled)
    sample.json                        what was written, counts, and code files skipped or changed

`annotations.jsonl` holds the recorded LLM annotations (score 0-5 + one-sentence
rationale, following the project rubric) for every document of the web parquet
shards, every thread of Posts.xml and the labelled code shard; the raw HTML
pages and the second code shard are deliberately unlabelled.
`record_annotations(...)` turns them into the labelling module's answer cache,
so `edufilter label --backend replay` reproduces the seed labels offline.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

ANNOTATOR = "claude-sample-annotator"  # the model name the recorded answers are stored under
LABELLED_SOURCES = {"web": "refinedweb", "stackoverflow": "stackoverflow", "code": "the-stack"}
WEB_SHARDS = 2  # two RefinedWeb shards, so the Ray job really fans out over files
_DATA_FILES = ("web.jsonl", "html_pages.jsonl", "code_files.jsonl", "annotations.jsonl", "Posts.xml")


@dataclass(frozen=True)
class Annotation:
    """One recorded LLM answer: which document (by a stable reference), its score and rationale."""

    domain: str
    ref: str  # web: page URL; stackoverflow: question id; code: stdlib path
    score: int
    rationale: str
    annotator: str = ANNOTATOR
    sha256: str | None = None  # of the text the annotator read (code: the file; web: the page text)


@dataclass(frozen=True)
class SampleShards:
    """Where `build_sample` put each part of the sample."""

    root: Path
    web: tuple[Path, ...]
    html: tuple[Path, ...]
    stackoverflow: Path
    code_labelled: Path
    code_unlabelled: Path | None
    manifest: Path
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def html_dir(self) -> Path:
        return self.root / "html"

    def labelled_inputs(self) -> dict[str, list[Path]]:
        """Per domain, the shards whose every document carries a recorded annotation."""
        return {"web": list(self.web), "stackoverflow": [self.stackoverflow], "code": [self.code_labelled]}

    def score_inputs(self) -> list[tuple[str, str, list[Path]]]:
        """(domain, reader source, paths) of every shard the demo scores."""
        code = [self.code_labelled] + ([self.code_unlabelled] if self.code_unlabelled else [])
        return [("web", "refinedweb", list(self.web)), ("web", "html", list(self.html)),
                ("stackoverflow", "stackoverflow", [self.stackoverflow]), ("code", "the-stack", code)]


def data_path(name: str) -> Path:
    """A file of the packaged sample data."""
    if name not in _DATA_FILES:
        raise ValueError(f"no sample data file {name!r}; there are: {', '.join(_DATA_FILES)}")
    return Path(str(resources.files(__name__).joinpath(name)))


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    with open(data_path(name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_annotations() -> list[Annotation]:
    return [Annotation(**row) for row in _read_jsonl("annotations.jsonl")]


# --------------------------------------------------------------------------- web (RefinedWeb parquet)

def _crawl_fields(url: str, date: str) -> tuple[datetime, str, str]:
    """A Common Crawl dump name and segment consistent with the page's crawl date."""
    when = datetime.fromisoformat(date)
    week = min(max(when.isocalendar().week, 1), 50)
    digest = int(hashlib.sha1(url.encode()).hexdigest()[:8], 16)
    segment = f"{1600000000000 + digest % 90000000000}.{digest % 97:02d}"
    return when, f"CC-MAIN-{when.year}-{week:02d}", segment


def refinedweb_table(pages: list[dict[str, Any]]):
    import pyarrow as pa

    rows = []
    for page in pages:
        when, dump, segment = _crawl_fields(page["url"], page["date"])
        rows.append({"content": page["text"], "url": page["url"], "timestamp": when, "dump": dump,
                     "segment": segment, "image_urls": []})
    schema = pa.schema([("content", pa.string()), ("url", pa.string()), ("timestamp", pa.timestamp("s")),
                        ("dump", pa.string()), ("segment", pa.string()), ("image_urls", pa.list_(pa.list_(pa.string())))])
    return pa.Table.from_pylist(rows, schema=schema)


# --------------------------------------------------------------------------- raw HTML pages

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} | {site}</title>
<link rel="canonical" href="{url}">
<link rel="stylesheet" href="/static/css/main.min.css?v=3.2.1">
<script async src="https://ads.adnetwork.example/tag.js"></script>
<script>window.dataLayer=window.dataLayer||[];function gtag(){{dataLayer.push(arguments);}}gtag('js',new Date());</script>
</head>
<body class="article-page">
<div id="cookie-banner" class="cookie-consent" role="dialog">
  <p>We use cookies to personalise content and ads and to analyse our traffic. By clicking "Accept" you consent to our use of cookies.</p>
  <button class="accept">Accept all</button> <button class="reject">Reject</button> <a href="/privacy">Privacy policy</a>
</div>
<header class="site-header">
  <a class="logo" href="/">{site}</a>
  <nav class="main-nav"><ul>
    <li><a href="/">Home</a></li><li><a href="/topics">Topics</a></li><li><a href="/latest">Latest</a></li>
    <li><a href="/newsletter">Newsletter</a></li><li><a href="/login">Sign in</a></li>
  </ul></nav>
  <form class="search" action="/search"><input type="search" name="q" placeholder="Search {site}"></form>
</header>
<div class="layout">
<main>
<nav class="breadcrumbs"><a href="/">Home</a> &rsaquo; <a href="/topics">Topics</a> &rsaquo; {title}</nav>
<article>
<h1>{title}</h1>
<p class="byline">By the {site} team &middot; <time datetime="2023-05-02">2 May 2023</time> &middot; 4 min read</p>
{body}
</article>
<div class="share">Share: <a href="#">Facebook</a> <a href="#">X</a> <a href="#">Email</a></div>
<section class="comments"><h3>Comments (3)</h3>
  <div class="comment"><b>sam_k</b>: Great post, thanks!</div>
  <div class="comment"><b>lee</b>: Bookmarked.</div>
</section>
</main>
<aside class="sidebar">
  <h3>Popular this week</h3>
  <ul><li><a href="/p/1">10 things you didn't know about sleep</a></li><li><a href="/p/2">The best budget headphones</a></li>
  <li><a href="/p/3">Why cats knock things off tables</a></li></ul>
  <div class="ad-slot">Advertisement</div>
  <h3>Subscribe</h3><form><input type="email" placeholder="Your email"><button>Sign up</button></form>
</aside>
</div>
<footer class="site-footer">
  <p>&copy; 2023 {site}. All rights reserved.</p>
  <ul><li><a href="/about">About</a></li><li><a href="/contact">Contact</a></li><li><a href="/terms">Terms</a></li>
  <li><a href="/privacy">Privacy</a></li><li><a href="/cookies">Cookie settings</a></li></ul>
</footer>
</body>
</html>
"""

_CODE_LINE = re.compile(r"^( {2,}\S|[\w.\[\]\"']+\s*(\+?=|\()|(for|while|def|print|if|del|import)\b.*[:)]$)")


def render_page(page: dict[str, Any]) -> str:
    """One article page with realistic boilerplate around its content (## starts a heading; code lines become <pre>)."""
    blocks: list[str] = []
    code: list[str] = []

    def flush_code() -> None:
        if code:
            blocks.append("<pre><code>" + html.escape("\n".join(code)) + "</code></pre>")
            code.clear()

    for line in page["body"].split("\n"):
        if not line.strip():
            flush_code()
        elif line.startswith("## "):
            flush_code()
            blocks.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif _CODE_LINE.match(line) and not line.rstrip().endswith("."):
            code.append(line)
        else:
            flush_code()
            blocks.append(f"<p>{html.escape(line)}</p>")
    flush_code()
    return _PAGE.format(title=html.escape(page["title"]), site=html.escape(page["site"]), url=html.escape(page["url"]),
                        body="\n".join(blocks))


# --------------------------------------------------------------------------- code (The Stack parquet)

def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def the_stack_row(path: str, data: bytes) -> dict[str, Any]:
    """A row in The Stack's layout for one stdlib file."""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines() or [""]
    return {
        "content": text,
        "lang": "Python",
        "max_stars_repo_path": f"Lib/{path}",
        "max_stars_repo_name": "python/cpython",
        "max_stars_repo_licenses": ["PSF-2.0"],
        "max_stars_count": 0,
        "size": len(data),
        "avg_line_length": sum(map(len, lines)) / len(lines),
        "max_line_length": max(map(len, lines)),
        "alphanum_fraction": sum(c.isalnum() for c in text) / max(len(text), 1),
        "hexsha": hashlib.sha1(data).hexdigest(),
        "ext": "py",
    }


def the_stack_table(rows: list[dict[str, Any]]):
    import pyarrow as pa

    schema = pa.schema([
        ("content", pa.string()), ("lang", pa.string()), ("max_stars_repo_path", pa.string()),
        ("max_stars_repo_name", pa.string()), ("max_stars_repo_licenses", pa.list_(pa.string())),
        ("max_stars_count", pa.int64()), ("size", pa.int64()), ("avg_line_length", pa.float64()),
        ("max_line_length", pa.int64()), ("alphanum_fraction", pa.float64()), ("hexsha", pa.string()),
        ("ext", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def stdlib_path_of(repo_path: str) -> str:
    """'Lib/bisect.py' (The Stack row) -> 'bisect.py' (annotation ref)."""
    return repo_path[4:] if repo_path.startswith("Lib/") else repo_path


# --------------------------------------------------------------------------- build

def build_sample(out_dir: str | os.PathLike, *, stdlib: str | os.PathLike | None = None) -> SampleShards:
    """Write the sample shards under `out_dir` (atomically, file by file) and return where they are.

    Idempotent: running it again rewrites identical files. Code files missing from this Python
    installation are skipped and counted; files that differ from the version that was annotated are
    kept (their annotation is applied by path) and counted as `code_changed` in `sample.json`.
    """
    from edufilter.io import write_json_atomic, write_parquet_atomic, write_text_atomic

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    stdlib = Path(stdlib) if stdlib else stdlib_root()

    pages = _read_jsonl("web.jsonl")
    web_paths = []
    per_shard = -(-len(pages) // WEB_SHARDS)
    for i in range(WEB_SHARDS):
        path = root / "web" / f"refinedweb-{i:05d}.parquet"
        write_parquet_atomic(path, refinedweb_table(pages[i * per_shard:(i + 1) * per_shard]))
        web_paths.append(path)

    html_paths = []
    for page in _read_jsonl("html_pages.jsonl"):
        slug = re.sub(r"[^a-z0-9]+", "-", page["title"].lower()).strip("-")[:60]
        path = root / "html" / f"{page['id']}-{slug}.html"
        write_text_atomic(path, render_page(page))
        html_paths.append(path)

    so_path = root / "stackoverflow" / "Posts.xml"
    write_text_atomic(so_path, data_path("Posts.xml").read_text(encoding="utf-8"))

    labelled_rows, unlabelled_rows, missing, changed = [], [], [], []
    for entry in _read_jsonl("code_files.jsonl"):
        try:
            data = (stdlib / entry["path"]).read_bytes()
        except OSError:
            missing.append(entry["path"])
            continue
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            changed.append(entry["path"])
        (labelled_rows if entry["labelled"] else unlabelled_rows).append(the_stack_row(entry["path"], data))
    if not labelled_rows:
        raise RuntimeError(f"none of the sample's code files exist under {stdlib}; is this a CPython installation?")
    code_labelled = root / "code" / "the-stack-00000.parquet"
    write_parquet_atomic(code_labelled, the_stack_table(labelled_rows))
    code_unlabelled = None
    if unlabelled_rows:
        code_unlabelled = root / "code" / "the-stack-00001.parquet"
        write_parquet_atomic(code_unlabelled, the_stack_table(unlabelled_rows))
    if missing or changed:
        log.warning("sample code: %d file(s) missing and %d changed in %s (annotated on CPython 3.11.7)",
                    len(missing), len(changed), stdlib)

    stats = {
        "web_documents": len(pages), "web_shards": len(web_paths), "html_pages": len(html_paths),
        "stackoverflow_threads": _count_questions(so_path), "code_files_labelled": len(labelled_rows),
        "code_files_unlabelled": len(unlabelled_rows), "code_missing": missing, "code_changed": changed,
        "stdlib": str(stdlib),
    }
    manifest = root / "sample.json"
    write_json_atomic(manifest, {
        "description": "edufilter's bundled sample: web pages and StackOverflow threads written by the project, "
                       "code from the local Python standard library",
        "annotator": ANNOTATOR,
        "files": {"web": [str(p) for p in web_paths], "html": [str(p) for p in html_paths],
                  "stackoverflow": str(so_path), "code_labelled": str(code_labelled),
                  "code_unlabelled": str(code_unlabelled) if code_unlabelled else None},
        **stats,
    })
    return SampleShards(root=root, web=tuple(web_paths), html=tuple(html_paths), stackoverflow=so_path,
                        code_labelled=code_labelled, code_unlabelled=code_unlabelled, manifest=manifest, stats=stats)


def _count_questions(path: Path) -> int:
    return len(re.findall(r'PostTypeId="1"', path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- recorded annotations -> answer cache

def annotation_ref(domain: str, document) -> str | None:
    """The stable reference an annotation uses for a document read back by edufilter.readers."""
    if domain == "web":
        return document.url
    if domain == "stackoverflow":
        qid = document.metadata.get("question_id")
        return str(qid) if qid is not None else None
    path = document.metadata.get("max_stars_repo_path")
    return stdlib_path_of(path) if path else None


@dataclass(frozen=True)
class RecordStats:
    recorded: dict[str, int]
    unmatched_documents: dict[str, list[str]]  # documents of a labelled shard without an annotation

    def as_dict(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "unmatched_documents": self.unmatched_documents}


def record_annotations(cache_dir: str | os.PathLike, inputs: dict[str, Iterable[str | os.PathLike]], *,
                       model: str = ANNOTATOR) -> RecordStats:
    """Store the recorded annotations in the labelling answer cache for the documents of `inputs`.

    Documents are read with the project's readers, so the cache is keyed by exactly the text the
    labeller will see, under the current prompt version of each domain. Existing entries are kept.
    """
    from edufilter.documents import Document, content_hash
    from edufilter.labelling.cache import AnswerCache, prompt_version, render_response
    from edufilter.readers import read_documents

    by_ref = {(a.domain, a.ref): a for a in load_annotations()}
    recorded: Counter[str] = Counter()
    unmatched: dict[str, list[str]] = {}
    with AnswerCache(cache_dir) as cache:
        for domain, paths in inputs.items():
            version = prompt_version(domain)
            for doc in read_documents(LABELLED_SOURCES[domain], [os.fspath(p) for p in paths]):
                if not isinstance(doc, Document):
                    continue
                ref = annotation_ref(domain, doc)
                note = by_ref.get((domain, ref))
                if note is None:
                    unmatched.setdefault(domain, []).append(doc.id)
                    continue
                text_hash = content_hash(doc.text)
                if cache.get(version, model, text_hash) is None:
                    cache.put(version, model, text_hash, render_response(note.rationale, note.score),
                              extra={"recorded": "edufilter.sample", "ref": ref})
                recorded[domain] += 1
    return RecordStats(dict(recorded), unmatched)
