"""The REST service against real uvicorn servers on loopback, with real fastText models
trained here from literal texts: endpoints, parity with the in-process Scorer, API keys,
limits, fuzzed bodies, a 500-request burst, reload, graceful shutdown, and the page in
Debian's Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import REPO, free_port

API_KEY = "test-key-" + "x" * 24
# uvicorn re-raises the signal it stopped on after a clean shutdown, so SIGTERM is the exit status.
CLEAN_EXIT = (0, -signal.SIGTERM)

EDUCATIONAL = [
    "Photosynthesis is the process by which plants convert light energy into chemical energy stored in glucose.",
    "In this lesson we explain how the derivative measures the rate of change of a function, with worked examples.",
    "The French Revolution began in 1789; historians explain its causes through debt, inequality and new ideas.",
    "Newton's second law states that force equals mass times acceleration. Example: a 2 kg mass accelerating at 3 m/s2.",
    "A prime number has exactly two divisors. We prove there are infinitely many primes using Euclid's argument.",
    "Cells divide by mitosis: prophase, metaphase, anaphase and telophase. Each phase is explained with a diagram.",
    "This tutorial explains recursion step by step: a base case, a recursive case, and how the call stack grows.",
    "Students learn that the water cycle moves water through evaporation, condensation, precipitation and runoff.",
    "The theorem of Pythagoras relates the sides of a right triangle; the lesson derives it and gives exercises.",
    "Chemical bonds form when atoms share or transfer electrons; ionic and covalent bonds are compared in detail.",
    "An introduction to probability: events, sample spaces, and how to compute conditional probability with examples.",
    "The lecture explains supply and demand curves and how equilibrium price is determined in a market.",
]
MEDIUM = [
    "Our museum opens at nine. The exhibition on ancient Egypt shows mummies and tools from the old kingdom.",
    "The city council discussed the new bridge. Engineers said the design uses steel and reinforced concrete.",
    "A short news item: the telescope photographed a distant galaxy; scientists will study the images next year.",
    "Travel guide: the castle was built in the twelfth century and is open to visitors in summer.",
    "The recipe uses flour, eggs and milk; baking at high heat makes the crust brown because sugars caramelise.",
    "Product review: this calculator handles fractions and has a solar panel, useful for school homework.",
    "Interview with a nurse about her daily routine at the hospital and the training she needed for the job.",
    "The team won the match after a long season; the coach explained the tactics they practised.",
]
JUNK = [
    "BUY NOW!!! best cheap watches discount sale click here free shipping limited offer",
    "casino bonus win big jackpot slots free spins sign up today",
    "Login | Register | Cart (0) | Privacy policy | Terms of use | Cookie settings",
    "hot singles in your area click here now amazing deals",
    "lol omg this is so funny share with your friends like and subscribe",
    "Copyright 2021 all rights reserved. Home About Contact Sitemap",
    "cheap pills online pharmacy no prescription fast delivery best price",
    "follow us on social media for more updates giveaway winner announced",
    "Click to accept cookies. We use cookies to improve your experience on our site.",
    "best deals of the day sale sale sale 70% off everything must go",
]


def write_labels(path: Path, domain: str, variant: int = 0) -> Path:
    rows = []
    for texts, score in ((EDUCATIONAL, 5), (EDUCATIONAL, 4), (MEDIUM, 2), (JUNK, 0), (JUNK, 1)):
        for i, text in enumerate(texts):
            if score in (4, 1) and i % 2:
                continue
            label = score + 1 if texts is MEDIUM and i % 2 else score  # medium texts: 2 and 3
            rows.append({"id": f"{domain}-{len(rows)}", "domain": domain, "text": text + f" v{variant}", "score": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_tiny(root: Path, domain: str, variant: int = 0) -> Path:
    """A real fastText artefact trained in about a second from the literal texts above."""
    from classifier.train import TrainConfig, train_model

    labels = write_labels(root / f"{domain}-{variant}.jsonl", domain, variant)
    out = root / f"{domain}-model-{variant}"
    config = TrainConfig(domain=domain, kind="fasttext", cv_folds=0, calibration="none", progress=False, seed=variant)
    train_model(str(labels), str(out), config)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("service-models")
    built = {"web": train_tiny(root, "web"), "code": train_tiny(root, "code"), "web-b": train_tiny(root, "web", 1)}
    # The web model the keyed server serves lives in a directory the SIGHUP test replaces.
    live = root / "web-live"
    shutil.copytree(built["web"], live)
    built["web-live"] = live
    return built


def wait_ready(base_url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(base_url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready after {timeout}s")


class SubprocessServer:
    """`edufilter serve` in its own process, as an operator runs it."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.stdout_path = tmp / f"server-{self.port}.out"
        self.stderr_path = tmp / f"server-{self.port}.err"
        cmd = [sys.executable, "-m", "edufilter.cli", "serve", "--port", str(self.port), *args]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self.stdout_path.open("wb"), stderr=self.stderr_path.open("wb")
        )
        try:
            wait_ready(self.base_url, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"server did not start:\n{self.stderr_path.read_text()[-3000:]}") from None

    def access_log(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout_path.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    """Protected by an API key (from a file), with small limits so the limit tests stay cheap."""
    tmp = tmp_path_factory.mktemp("keyed-server")
    keys = tmp / "keys.txt"
    keys.write_text(f"# test keys\n{API_KEY}\nsecond-key\n")
    srv = SubprocessServer(
        [
            "--model", f"web={models['web-live']}", "--model", f"code={models['code']}",
            "--api-keys-file", str(keys),
            "--max-documents-per-request", "32",
            "--max-document-bytes", "20000",
            "--max-request-bytes", "300000",
        ],
        tmp,
    )
    yield srv
    assert srv.stop() in CLEAN_EXIT, srv.stderr_path.read_text()[-3000:]


@pytest.fixture(scope="module")
def open_server(models):
    """An app built by `create_app` served by uvicorn in a thread: no keys configured, so it is open."""
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(models={"web": models["web"]}, batch_max_wait_ms=1.0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(base_url)
    yield base_url
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def scorers(models):
    from classifier.scorer import Scorer

    return {"web": Scorer.load(models["web"]), "code": Scorer.load(models["code"]), "web-b": Scorer.load(models["web-b"])}


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body["error"]


# --------------------------------------------------------------------------- health, keys


def test_health_and_readiness_are_open(server):
    assert httpx.get(server.base_url + "/healthz").json() == {"status": "ok", "models": []}
    ready = httpx.get(server.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "models": ["code", "web"]}


@pytest.mark.parametrize(
    "headers, problem",
    [({}, "missing API key"), ({"Authorization": "Bearer wrong"}, "invalid API key"),
     ({"Authorization": f"Basic {API_KEY}"}, "missing API key"), ({"Authorization": f"Bearer {API_KEY}x"}, "invalid API key")],
)
@pytest.mark.parametrize("method, path", [("POST", "/v1/score"), ("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/explain")])
def test_wrong_or_missing_key_is_401(server, headers, problem, method, path):
    response = httpx.request(method, server.base_url + path, headers=headers, json={"documents": [{"text": "x"}]})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert problem in error_of(response)["message"]


def test_every_configured_key_works(server):
    for key in (API_KEY, "second-key"):
        response = httpx.get(server.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200


def test_open_server_needs_no_key_but_refuses_http_reload(open_server):
    response = httpx.post(open_server + "/v1/score", json={"documents": [{"text": "The cell divides by mitosis."}]})
    assert response.status_code == 200 and response.json()["results"][0]["domain"] == "web"  # the only model
    reload = httpx.post(open_server + "/v1/models/reload", json={})
    assert reload.status_code == 403 and "SIGHUP" in error_of(reload)["message"]


# --------------------------------------------------------------------------- scoring


def test_score_answers_in_order_with_model_stamp(client, scorers):
    documents = [
        {"id": "a", "text": EDUCATIONAL[0]},
        {"id": "b", "text": "def add(a, b):\n    return a + b", "domain": "code"},
        {"text": JUNK[0]},
        {"id": "d", "text": ""},
    ]
    response = client.post("/v1/score", json={"documents": documents, "domain": "web"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b", None, "d"]
    assert [r["domain"] for r in results] == ["web", "code", "web", "web"]
    for result in results:
        scorer = scorers[result["domain"]]
        assert result["model"] == {"id": scorer.model_id, "version": scorer.version}
        assert 0.0 <= result["score"] <= 5.0
        assert result["int_score"] == int(np.floor(result["score"] + 0.5))
        assert result["keep"] == (np.float32(result["score"]) >= np.float32(scorer.threshold))
    assert results[3]["score"] == 0.0  # an empty document scores 0 (the Scorer's rule)
    assert results[0]["score"] > results[2]["score"]


def test_http_scores_equal_the_in_process_scorer(client, scorers):
    """Parity: the batch jobs score with the same Scorer, so HTTP must give bit-identical scores,
    whether a text travels alone or inside a micro-batch with others."""
    texts = EDUCATIONAL + MEDIUM + JUNK + ["Unicode: naïve café — 数学 ∑ 🙂", "x" * 5000]
    expected = scorers["web"].score(texts)
    batched = client.post("/v1/score", json={"domain": "web", "documents": [{"text": t} for t in texts]}).json()["results"]
    for i, text in enumerate(texts):
        alone = client.post("/v1/score", json={"domain": "web", "documents": [{"text": text}]}).json()["results"][0]
        for got in (alone, batched[i]):
            assert np.float32(got["score"]) == expected.score[i]
            assert got["int_score"] == int(expected.int_score[i])
            assert got["keep"] == bool(expected.keep[i])


def test_unknown_or_missing_domain_lists_loaded_ones(client):
    response = client.post("/v1/score", json={"documents": [{"text": "hi"}], "domain": "stackoverflow"})
    assert response.status_code == 422
    error = error_of(response)
    assert error["code"] == "unknown_domain" and error["loaded"] == ["code", "web"]
    assert "stackoverflow" in error["message"] and "code, web" in error["message"]
    response = client.post("/v1/score", json={"documents": [{"text": "hi"}]})  # two models: must say which
    assert response.status_code == 422 and "no domain given" in error_of(response)["message"]


@pytest.mark.parametrize(
    "body, limit",
    [
        ({"domain": "web", "documents": [{"text": "a"}] * 33}, "max_documents_per_request=32"),
        ({"domain": "web", "documents": [{"text": "a" * 20001}]}, "max_document_bytes=20000"),
        ({"domain": "web", "documents": [{"text": "é" * 10001}]}, "max_document_bytes=20000"),  # 2 bytes each
        ({"domain": "web", "documents": [{"text": "a" * 19000}] * 20}, "max_request_bytes=300000"),
        ({"domain": "web", "text": "a" * 20001}, "max_document_bytes=20000"),  # /v1/explain
    ],
)
def test_limits_are_named(client, body, limit):
    path = "/v1/explain" if "text" in body else "/v1/score"
    response = client.post(path, json=body)
    assert response.status_code == 413
    error = error_of(response)
    assert limit in error["message"] and error["code"] in ("limit_exceeded", "request_too_large")
    assert "EDUFILTER_" in error["message"]


def test_streamed_body_over_the_limit_is_413(client):
    def chunks():
        yield b'{"domain": "web", "documents": [{"text": "'
        for _ in range(40):
            yield b"a" * 10000
        yield b'"}]}'

    response = client.post("/v1/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "max_request_bytes" in error_of(response)["message"]


@pytest.mark.parametrize(
    "content, expected",
    [
        (b'{"documents": [', "not valid JSON"),
        (b'{"documents": [{"text": "\xff\xfe"}]}', "not valid JSON"),
        (b"[" * 50000 + b"]" * 50000, "not valid JSON"),
        (b'{"documents": [{"text": 5}]}', "documents.0.text"),
        (b'{"documents": [{"txt": "a"}]}', "documents.0.text: Field required"),
        (b'{"documents": "abc"}', "documents"),
        (b'{"documents": [{"text": "a", "domian": "web"}]}', "documents.0.domian"),
        (b"null", "invalid request"),
        (b"", "invalid request"),
    ],
)
def test_bad_bodies_are_422_with_a_clear_message(client, content, expected):
    response = client.post("/v1/score", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert expected in error_of(response)["message"]


def test_validation_errors_do_not_echo_the_input(client):
    secret = "s3cr3t-" + "z" * 1000
    response = client.post("/v1/score", json={"documents": [{"text": 1, "id": secret}], "extra": secret})
    assert response.status_code == 422 and secret not in response.text


def test_score_html_uses_the_shared_extraction(client, scorers):
    from edufilter.extract import extract_html

    paragraphs = "".join(f"<p>{t}</p>" for t in EDUCATIONAL[:6])
    html = f"<html><head><title>Lesson</title></head><body><nav>Home | About</nav><article><h1>Biology</h1>{paragraphs}</article></body></html>"
    response = client.post("/v1/score/html", json={"html": html, "url": "https://example.org/a", "domain": "web", "include_text": True, "id": "p1"})
    assert response.status_code == 200, response.text
    result = response.json()
    text = extract_html(html, "https://example.org/a")
    assert result["text"] == text and result["extracted_chars"] == len(text) > 100
    assert np.float32(result["score"]) == scorers["web"].score([text]).score[0]
    assert result["id"] == "p1" and result["model"]["version"] == scorers["web"].version
    empty = client.post("/v1/score/html", json={"html": "<html><body></body></html>", "domain": "web"})
    assert empty.status_code == 422 and error_of(empty)["code"] == "no_text_extracted"


def test_explain_names_the_terms_behind_the_score(client, scorers):
    text = EDUCATIONAL[1] + " " + JUNK[0]
    response = client.post("/v1/explain", json={"text": text, "domain": "web", "top_k": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["terms"] == [{"term": t, "contribution": c} for t, c in scorers["web"].explain(text, 8)]
    assert len(body["terms"]) == 8 and any(t["contribution"] > 0 for t in body["terms"])
    assert np.float32(body["score"]) == scorers["web"].score([text]).score[0]
    too_many = client.post("/v1/explain", json={"text": text, "domain": "web", "top_k": 1000})
    assert too_many.status_code == 422 and "explain_max_terms=50" in error_of(too_many)["message"]


def test_models_lists_model_json(client, scorers):
    models = {m["domain"]: m for m in client.get("/v1/models").json()["models"]}
    assert set(models) == {"web", "code"}
    for domain, model in models.items():
        assert model["model_id"] == scorers[domain].model_id and model["kind"] == "fasttext"
        assert model["info"]["version"] == scorers[domain].version and model["info"]["domain"] == domain


def test_docs_page_and_static_files(server):
    assert "/v1/score" in httpx.get(server.base_url + "/openapi.json").json()["paths"]
    assert httpx.get(server.base_url + "/docs").status_code == 200
    page = httpx.get(server.base_url + "/")
    assert page.status_code == 200 and "<title>edufilter" in page.text and "/static/app.js" in page.text
    assert httpx.get(server.base_url + "/static/app.js").status_code == 200
    missing = httpx.get(server.base_url + "/no/such/page")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"


# --------------------------------------------------------------------------- observability


def test_metrics_count_requests_documents_and_scores(client):
    client.post("/v1/score", json={"domain": "code", "documents": [{"text": "int main() { return 0; }"}] * 3})
    client.post("/v1/score", json={"documents": []})
    text = client.get("/metrics").text
    assert 'edufilter_http_requests_total{method="POST",route="/v1/score",status="200"}' in text
    assert 'edufilter_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/score",status="200"}' in text
    assert "/no/such/page" not in text  # raw paths never become label values
    assert "edufilter_http_requests_in_flight 1.0" in text  # this very request
    documents = [line for line in text.splitlines() if line.startswith('edufilter_documents_scored_total{domain="code"}')]
    assert documents and float(documents[0].split()[-1]) >= 3
    assert 'edufilter_document_score_bucket{domain="code",le="5.0"}' in text
    assert 'edufilter_batch_documents_count{domain="code"}' in text


def test_access_log_is_one_json_object_per_request(client, server):
    client.post("/v1/score", json={"domain": "web", "documents": [{"text": "x"}]}, headers={"X-Request-ID": "trace-123"})
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        entries = [e for e in server.access_log() if e.get("request_id") == "trace-123"]
        if entries:
            break
        time.sleep(0.05)
    (entry,) = entries
    assert entry["route"] == "/v1/score" and entry["status"] == 200 and entry["method"] == "POST"
    assert entry["duration_ms"] > 0 and entry["logger"] == "service.access" and entry["time"].endswith("Z")


# --------------------------------------------------------------------------- fuzzing, load

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
documents_like = st.fixed_dictionaries(
    {"documents": st.lists(st.fixed_dictionaries({"text": json_values}, optional={"id": json_values, "domain": json_values}), max_size=4)},
    optional={"domain": json_values},
)


def _nested(depth: int) -> bytes:
    return b'{"documents": ' + b"[" * depth + b"]" * depth + b"}"


bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    documents_like.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),  # mostly invalid UTF-8 / not JSON
    st.integers(1, 200_000).map(_nested),
    st.integers(0, 400_000).map(lambda n: json.dumps({"documents": [{"text": "a" * n}], "domain": "web"}).encode()),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@hsettings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(body=bodies, path=st.sampled_from(["/v1/score", "/v1/explain", "/v1/score/html", "/v1/models/reload"]))
def test_fuzzed_bodies_never_cause_a_5xx(client, body, path):
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code >= 400:
        error = error_of(response)
        assert error["code"] and len(error["message"]) < 5000


def test_server_still_answers_after_fuzzing(client):
    # Runs after the fuzz test in file order; also a guard on its own.
    assert client.get("/healthz").status_code == 200
    assert client.post("/v1/score", json={"domain": "web", "documents": [{"text": "still here"}]}).status_code == 200


def test_burst_of_500_concurrent_requests_is_answered(server, scorers):
    texts = [f"{EDUCATIONAL[i % len(EDUCATIONAL)]} burst {i}" for i in range(500)]
    expected = scorers["web"].score(texts).score

    async def burst():
        limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60,
                                     headers={"Authorization": f"Bearer {API_KEY}"}) as c:
            return await asyncio.gather(
                *(c.post("/v1/score", json={"domain": "web", "documents": [{"id": str(i), "text": t}]}) for i, t in enumerate(texts))
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 500
    for i, response in enumerate(responses):
        (result,) = response.json()["results"]
        assert result["id"] == str(i) and np.float32(result["score"]) == expected[i]


def test_micro_batcher_groups_concurrent_requests(scorers):
    from concurrent.futures import ThreadPoolExecutor

    from service.batching import MicroBatcher

    sizes: list[int] = []

    async def run():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(lambda: scorers["web"], pool, max_documents=16, max_wait_s=0.05, on_batch=sizes.append)
            batcher.start()
            results = await asyncio.gather(*(batcher.score([t]) for t in EDUCATIONAL * 4), batcher.score(JUNK * 3))
            await batcher.close()
            return results

    results = asyncio.run(run())
    assert 30 in sizes and max(s for s in sizes if s != 30) <= 16  # a request larger than a batch goes alone
    assert len(sizes) < len(EDUCATIONAL) * 4 and sum(sizes) == len(EDUCATIONAL) * 4 + 30
    expected = scorers["web"].score(EDUCATIONAL).score
    for i, result in enumerate(results[:-1]):
        assert np.float32(result.score[0]) == expected[i % len(EDUCATIONAL)]
    assert len(results[-1].score) == 30


# --------------------------------------------------------------------------- operations


def test_http_reload_swaps_the_model_without_dropping_requests(client, models, scorers):
    stop = threading.Event()
    statuses: list[int] = []

    def traffic():
        with httpx.Client(base_url=str(client.base_url), headers=dict(client.headers), timeout=30) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/score", json={"domain": "web", "documents": [{"text": EDUCATIONAL[0]}]}).status_code)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.2)
        response = client.post("/v1/models/reload", json={"domain": "web", "path": str(models["web-b"])})
        assert response.status_code == 200, response.text
        assert response.json()["models"][0]["version"] == scorers["web-b"].version
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}
    after = client.post("/v1/score", json={"domain": "web", "documents": [{"text": EDUCATIONAL[0]}]}).json()["results"][0]
    assert after["model"]["version"] == scorers["web-b"].version
    bad = client.post("/v1/models/reload", json={"domain": "web", "path": "/nonexistent/model"})
    assert bad.status_code == 422 and "no model.json" in error_of(bad)["message"]
    # back to the configured directory for the next test
    assert client.post("/v1/models/reload", json={"domain": "web", "path": str(models["web-live"])}).status_code == 200


def test_sighup_reloads_every_model_from_its_directory(client, server, models, scorers):
    live = models["web-live"]
    staged = live.with_name("web-live.new")
    shutil.copytree(models["web-b"], staged)
    old = live.with_name("web-live.old")
    os.replace(live, old)
    os.replace(staged, live)  # the operator's atomic swap of the directory
    try:
        assert sighup_and_wait(server, client, scorers["web-b"].version) == {
            "web": scorers["web-b"].version, "code": scorers["code"].version,
        }
        assert 'edufilter_model_reloads_total{domain="web",outcome="ok"}' in client.get("/metrics").text
    finally:  # put the original model back for the tests that follow
        shutil.rmtree(live)
        os.replace(old, live)
        assert sighup_and_wait(server, client, scorers["web"].version)["web"] == scorers["web"].version


def sighup_and_wait(server, client, web_version: str) -> dict[str, str]:
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        versions = {m["domain"]: m["version"] for m in client.get("/v1/models").json()["models"]}
        if versions["web"] == web_version:
            break
        time.sleep(0.1)
    return versions


def test_graceful_shutdown_lets_in_flight_requests_finish(models, tmp_path):
    # A long batching wait keeps the request in flight when SIGTERM arrives.
    srv = SubprocessServer(["--model", f"web={models['web']}", "--batch-max-wait-ms", "1500",
                            "--batch-max-documents", "100000", "--metrics-open"], tmp_path)
    result: dict = {}

    def slow_request():
        result["response"] = httpx.post(srv.base_url + "/v1/score", json={"documents": [{"text": EDUCATIONAL[2]}]}, timeout=30)

    thread = threading.Thread(target=slow_request)
    try:
        thread.start()
        deadline = time.monotonic() + 10
        while "edufilter_http_requests_in_flight 2.0" not in httpx.get(srv.base_url + "/metrics").text:
            assert time.monotonic() < deadline, "the request never arrived"
            time.sleep(0.02)
        srv.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert result["response"].status_code == 200
        assert srv.proc.wait(timeout=30) in CLEAN_EXIT
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.base_url + "/healthz")
    finally:
        srv.stop()
    assert "scoring stopped" in srv.stderr_path.read_text()


def test_several_workers_share_the_port_and_sum_their_metrics(models, tmp_path):
    srv = SubprocessServer(["--model", f"web={models['web']}", "--workers", "2", "--metrics-open"], tmp_path)
    try:
        with httpx.Client(base_url=srv.base_url) as c:  # a new connection per request spreads them over workers
            for i in range(12):
                c.post("/v1/score", json={"documents": [{"text": EDUCATIONAL[i % 5]}]}, headers={"Connection": "close"})
            text = c.get("/metrics").text
        assert 'edufilter_http_requests_total{method="POST",route="/v1/score",status="200"} 12.0' in text
        assert 'edufilter_documents_scored_total{domain="web"} 12.0' in text
    finally:
        assert srv.stop() in CLEAN_EXIT


def test_cli_refuses_bad_configuration(tmp_path, capsys):
    from service.cli import main

    assert main(["--model", f"web={tmp_path}"]) == 2
    assert "has no model.json" in capsys.readouterr().err
    assert main(["--model", "web"]) == 2
    assert "DOMAIN=DIR" in capsys.readouterr().err
    assert main([]) == 2
    assert "no model given" in capsys.readouterr().err


def test_settings_from_environment(models, monkeypatch):
    from service.settings import ServiceSettings

    monkeypatch.setenv("EDUFILTER_API_KEYS", "one, two ,,three")
    monkeypatch.setenv("EDUFILTER_MODELS", json.dumps({"web": str(models["web"])}))
    monkeypatch.setenv("EDUFILTER_BATCH_MAX_WAIT_MS", "5")
    settings = ServiceSettings()
    assert settings.resolved_api_keys() == ("one", "two", "three")
    assert settings.models == {"web": models["web"]} and settings.batch_max_wait_ms == 5.0
    assert "one" not in json.dumps(settings.summary())
    monkeypatch.setenv("EDUFILTER_MODELS", json.dumps({"maths": str(models["web"])}))
    with pytest.raises(ValueError, match="unknown domain 'maths'"):
        ServiceSettings()


# --------------------------------------------------------------------------- the page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
def test_page_scores_and_highlights_in_chromium(server, scorers):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    text = EDUCATIONAL[0] + " " + EDUCATIONAL[4]
    expected = float(scorers["web"].score([text]).score[0])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.base_url + "/")
            sync_api.expect(page.locator("#status")).to_contain_text("Could not list the models")  # no key yet
            page.fill("#api-key", API_KEY)
            page.fill("#document", text)
            page.click("#score-button")
            sync_api.expect(page.locator("#status")).to_have_text("Scored.", timeout=15000)
            page.select_option("#domain", "web")
            page.click("#score-button")
            sync_api.expect(page.locator("#status")).to_have_text("Scored.", timeout=15000)
            assert page.text_content("#score-value") == f"{expected:.2f}"
            assert page.text_content("#decision") == ("keep" if expected >= scorers["web"].threshold else "drop")
            assert page.locator("#highlighted mark").count() > 0
            assert page.locator("#terms tbody tr").count() == 20
            assert page.text_content("#highlighted") == text  # highlighting never changes the text

            page.check("#kind-html")
            page.fill("#document", "<html><body><article>" + "".join(f"<p>{t}</p>" for t in EDUCATIONAL[:5]) + "</article></body></html>")
            page.click("#score-button")
            sync_api.expect(page.locator("#extracted-row")).to_be_visible(timeout=15000)
            assert int(page.text_content("#extracted")) > 100

            page.fill("#api-key", "wrong")
            page.click("#score-button")
            sync_api.expect(page.locator("#status")).to_contain_text("invalid API key", timeout=15000)
        finally:
            browser.close()
