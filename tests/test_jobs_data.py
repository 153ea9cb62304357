"""Small literal data for the jobs tests (no tests here): a tiny fastText model's labels and
input shards in every format the scoring job reads, built in tmp folders."""

from __future__ import annotations

import gzip
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EDUCATIONAL = [
    "Photosynthesis converts light energy into chemical energy stored in glucose; chlorophyll absorbs red and blue light.",
    "To solve a quadratic equation ax^2 + bx + c = 0, compute the discriminant b^2 - 4ac and apply the quadratic formula.",
    "The French Revolution began in 1789 and abolished feudal privileges; historians link it to fiscal crisis and Enlightenment ideas.",
    "Newton's second law states that force equals mass times acceleration, so doubling the force doubles the acceleration.",
    "A binary search halves the sorted interval at each step, so it finds an element in logarithmic time.",
    "Cells divide by mitosis: prophase, metaphase, anaphase and telophase produce two identical daughter cells.",
    "The derivative of a function measures its instantaneous rate of change; the derivative of x squared is two x.",
    "Plate tectonics explains earthquakes and mountain building: lithospheric plates move over the asthenosphere.",
    "In this lesson we explain how vaccines train the immune system to recognise antigens and produce antibodies.",
    "Supply and demand determine market prices; when supply falls and demand stays constant, prices rise.",
    "A hash table maps keys to buckets with a hash function; collisions are resolved by chaining or open addressing.",
    "The water cycle moves water through evaporation, condensation, precipitation and collection in rivers and oceans.",
]
SPAM = [
    "BUY NOW cheap watches best price free shipping click here limited offer discount code.",
    "Hot singles in your area tonight click now to meet them free registration.",
    "Casino bonus spins win big jackpot today deposit now and get double credits.",
    "Our shop sells shoes bags hats. Add to cart. Checkout. Login. Register. Newsletter.",
    "Home | About | Contact | Privacy Policy | Terms of Service | Cookie settings | Sitemap",
    "lol this is so funny i cant even omg follow me for more likes and shares",
    "Best deals on car insurance loans mortgage credit cards apply online instant approval.",
    "Subscribe to our newsletter for exclusive offers and coupons delivered weekly to your inbox.",
    "Celebrity gossip shocking photos you won't believe number seven will surprise you.",
    "Cheap pills online pharmacy no prescription needed fast delivery worldwide.",
    "Click like and share if you agree!!! Tag a friend who needs to see this.",
    "Sale sale sale everything must go 70 percent off this weekend only in all stores.",
]


def write_labels(path: Path, n: int = 300) -> Path:
    """Educational (5), spam (0) and mixed (2) documents built from the sentences above."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            rows.append({"text": " ".join(rng.choice(EDUCATIONAL) for _ in range(3)), "score": 5})
        elif kind == 1:
            rows.append({"text": " ".join(rng.choice(SPAM) for _ in range(3)), "score": 0})
        else:
            rows.append({"text": rng.choice(EDUCATIONAL) + " " + rng.choice(SPAM), "score": 2})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train_model(tmp: Path, domain: str = "web") -> Path:
    from classifier.cli import train_main

    labels = write_labels(tmp / f"labels-{domain}.jsonl")
    out = tmp / f"model-{domain}"
    rc = train_main(["--labels", str(labels), "--domain", domain, "--kind", "fasttext", "--output", str(out),
                     "--cv-folds", "0", "--calibration", "none", "--params", '{"lr": 0.5, "epoch": 25, "dim": 32, "wordNgrams": 2, "minn": 0, "maxn": 0}', "--no-progress"])
    assert rc == 0, "training the test model failed"
    return out


def texts(n: int, seed: int) -> list[str]:
    """n distinct documents mixing educational and spam sentences (so scores spread over 0-5)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pool = EDUCATIONAL if rng.random() < 0.5 else SPAM
        k = rng.randint(1, 4)
        body = " ".join(rng.choice(pool) for _ in range(k))
        out.append(f"{body} (doc {seed}-{i})")
    return out


def refinedweb_shard(path: Path, n: int, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = texts(n, seed)
    pq.write_table(pa.table({
        "content": docs,
        "url": [f"https://example.org/{seed}/{i}" for i in range(n)],
        "timestamp": ["2023-01-01T00:00:00"] * n,
        "dump": ["CC-MAIN-2023-06"] * n,
        "segment": ["1"] * n,
        "image_urls": [[] for _ in range(n)],
    }), path, row_group_size=max(1, n // 3))
    return path


def jsonl_shard(path: Path, n: int, seed: int, bad_rows: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": t, "id": f"j{seed}-{i}", "url": f"https://j.example/{i}"}) for i, t in
             enumerate(texts(n, seed))]
    lines += [json.dumps({"text": "   ", "id": f"empty{i}"}) for i in range(bad_rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def html_page(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return (f"<html><head><title>{title}</title></head><body><nav>Home | About | Contact</nav>"
            f"<article><h1>{title}</h1>{body}</article><footer>Copyright 2024</footer></body></html>")


def html_files(folder: Path, n: int, seed: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts(n, seed)):
        paragraphs = [t] * 3 + [EDUCATIONAL[i % len(EDUCATIONAL)]]
        (folder / f"page{i}.html").write_text(html_page(f"Page {i}", paragraphs), encoding="utf-8")
    return folder


def warc_shard(path: Path, n: int, seed: int) -> Path:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for i, t in enumerate(texts(n, seed)):
            html = html_page(f"Warc page {i}", [t] * 3 + [EDUCATIONAL[i % len(EDUCATIONAL)]]).encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
            record = writer.create_warc_record(f"https://warc.example/{seed}/{i}", "response",
                                               payload=io.BytesIO(html), http_headers=headers)
            writer.write_record(record)
    return path


def stackoverflow_posts(path: Path, threads: int, seed: int) -> Path:
    from xml.sax.saxutils import quoteattr

    path.parent.mkdir(parents=True, exist_ok=True)
    body = texts(threads * 2, seed)
    rows = []
    post_id = 1
    for q in range(threads):
        qid = post_id
        aid = post_id + 1
        rows.append(f'<row Id="{qid}" PostTypeId="1" AcceptedAnswerId="{aid}" CreationDate="2018-03-01T00:00:00.000" '
                    f'Score="{q}" Body={quoteattr("<p>" + body[2 * q] + "</p>")} Title={quoteattr(f"Question {q}")} '
                    f'Tags="&lt;python&gt;&lt;math&gt;" AnswerCount="1" />')
        rows.append(f'<row Id="{aid}" PostTypeId="2" ParentId="{qid}" CreationDate="2018-03-02T00:00:00.000" '
                    f'Score="2" Body={quoteattr("<p>" + body[2 * q + 1] + "</p>")} />')
        post_id += 2
    path.write_text('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "\n".join(rows) + "\n</posts>\n",
                    encoding="utf-8")
    return path


def corrupt_parquet(path: Path) -> Path:
    """A parquet file cut in half: what a crashed upload leaves behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    good = refinedweb_shard(path.with_suffix(".tmp.parquet"), 50, 999)
    data = good.read_bytes()
    good.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def gz(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return out
