"""Annotator backends: an OpenAI-compatible HTTP endpoint, a local
transformers chat model, and replay of recorded answers.

Every backend takes the same `LabelRequest`s (chat messages already built by
`prompts.build_messages`, so truncation is identical everywhere) and reports
each outcome through `on_answer` as soon as it has it; the caller stores it
in the answer cache right away. `should_stop()` is checked before each new
request (or batch) so a token budget stops the run cleanly: what is in
flight finishes and is kept, nothing new is sent.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_string  # C implementation: '"..."'
from typing import Callable, Iterable, NamedTuple, Protocol, Sequence

log = logging.getLogger(__name__)

API_KEY_ENV_VARS = ("EDUFILTER_LLM_API_KEY", "OPENAI_API_KEY")


class LabelRequest(NamedTuple):
    text_hash: str
    doc_ref: str  # how to name the document in errors: "id (shard:row)"
    messages: list[dict[str, str]]


class Answer(NamedTuple):
    """One backend outcome: a raw answer, or a failure reason when none could be had."""

    request: LabelRequest
    raw_response: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: str = ""  # timeout, http-500, http-429, malformed-response, connection-error, ...
    detail: str = ""
    extra: dict = {}  # never mutated

    @property
    def ok(self) -> bool:
        return not self.failure


OnAnswer = Callable[[Answer], None]
ShouldStop = Callable[[], bool]


class Backend(Protocol):
    annotator: str  # the model name stamped on every label and part of the cache key

    def run(self, requests: Sequence[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None: ...


class EndpointError(RuntimeError):
    """The endpoint refuses every request (bad key, wrong URL or model): stop instead of failing each document."""


class ReplayMissError(LookupError):
    """Replay was asked for documents that have no recorded answer."""


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


def fast_event_loop_factory():
    """uvloop's event loop when installed (it comes with uvicorn[standard]): the client then needs far less
    CPU per request than the endpoint it labels against; the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def chat_completions_url(endpoint: str) -> str:
    """Accept `http://host:8000`, `http://host:8000/v1` or the full `/v1/chat/completions` URL."""
    url = endpoint.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    if url.endswith("/v1"):
        return url + "/chat/completions"
    return url + "/v1/chat/completions"


def api_key_from_env(env_var: str | None = None) -> str | None:
    names = (env_var,) if env_var else API_KEY_ENV_VARS
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After is either delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass(frozen=True)
class OpenAIConfig:
    endpoints: tuple[str, ...]  # one or more replicas; requests are spread round-robin
    model: str
    api_key: str | None = None
    concurrency: int = 16
    timeout_s: float = 120.0  # whole request, connect to last byte
    max_retries: int = 6
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    max_tokens: int = 300  # generation limit per answer
    temperature: float = 0.0

    def __post_init__(self):
        if not self.endpoints:
            raise ValueError("the openai backend needs at least one --endpoint URL")
        if not self.model:
            raise ValueError("the openai backend needs --model (the model name the endpoint serves)")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {self.max_retries}")


class OpenAIBackend:
    """Async client for `/v1/chat/completions` with bounded concurrency, timeouts and retries."""

    RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))
    FATAL_STATUSES = frozenset({401, 403, 404})

    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.annotator = config.model
        self.urls = [chat_completions_url(e) for e in config.endpoints]
        self._headers = {"Content-Type": "application/json"}
        if config.api_key:
            self._headers["Authorization"] = f"Bearer {config.api_key}"
        self.retries = 0  # requests sent again after a retryable failure
        self._encoded_messages: dict[tuple[str, str], bytes] = {}
        head = {"model": config.model, "temperature": config.temperature, "max_tokens": config.max_tokens}
        self._body_head = json.dumps(head)[:-1].encode("utf-8") + b', "messages": ['

    def run(self, requests: Sequence[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None:
        with asyncio.Runner(loop_factory=fast_event_loop_factory()) as runner:
            runner.run(self.arun(requests, on_answer, should_stop))

    async def arun(self, requests: Iterable[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None:
        # aiohttp rather than httpx: on this 2-core machine a bare httpx loop reached ~8% of the requests/s
        # of a bare aiohttp loop against the same server (bench/bench_labelling.py), far from the 80% target.
        import aiohttp

        cfg = self.config
        pending = iter(requests)
        url_cycle = itertools.cycle(self.urls)
        connector = aiohttp.TCPConnector(limit=cfg.concurrency, ttl_dns_cache=300)
        # The whole request (connect, send, wait, read) must finish within timeout_s.
        timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
        async with aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=timeout) as session:

            async def worker() -> None:
                # A pull loop per worker (not one task per document) keeps memory flat for 100k documents.
                while not should_stop():
                    request = next(pending, None)
                    if request is None:
                        return
                    on_answer(await self.ask(session, request, next(url_cycle)))

            try:
                async with asyncio.TaskGroup() as group:
                    for _ in range(cfg.concurrency):
                        group.create_task(worker())
            except ExceptionGroup as errors:
                # One worker hit a fatal error (e.g. EndpointError) and the others were cancelled: raise it as is.
                raise errors.exceptions[0] from None

    def request_body(self, request: LabelRequest) -> bytes:
        """The JSON body, assembled from pre-encoded parts: the request's fields and the system prompt (the
        same ~2 KB for every document) are encoded once; per request only the document's text is escaped."""
        parts = []
        for message in request.messages:
            role, content = message["role"], message["content"]
            encoded = self._encoded_messages.get((role, content)) if role == "system" else None
            if encoded is None:
                encoded = f'{{"role": {_json_string(role)}, "content": {_json_string(content)}}}'.encode("utf-8")
                if role == "system" and len(self._encoded_messages) < 64:
                    self._encoded_messages[(role, content)] = encoded
            parts.append(encoded)
        return self._body_head + b", ".join(parts) + b"]}"

    async def ask(self, session, request: LabelRequest, url: str) -> Answer:
        """One document: send, retry what is worth retrying, and return an answer or the last failure."""
        import aiohttp

        cfg = self.config
        body = self.request_body(request)
        failure, detail = "", ""
        for attempt in range(cfg.max_retries + 1):
            retry_after = None
            try:
                async with session.post(url, data=body) as response:
                    status = response.status
                    payload = await response.read()
                    retry_header = response.headers.get("Retry-After")
            except TimeoutError:
                failure, detail = "timeout", f"no answer within {cfg.timeout_s:g}s from {url}"
            except aiohttp.ClientError as exc:
                failure, detail = "connection-error", f"{type(exc).__name__}: {exc} ({url})"
            else:
                if status == 200:
                    answer = self._read_completion(request, payload, url)
                    if answer.ok:
                        return answer
                    failure, detail = answer.failure, answer.detail
                else:
                    text = payload.decode("utf-8", errors="replace")
                    if status in self.FATAL_STATUSES:
                        raise EndpointError(
                            f"{url} answered HTTP {status} for model {cfg.model!r}: {text[:300]!r} "
                            f"(check --endpoint, --model and the API key in ${'/$'.join(API_KEY_ENV_VARS)})"
                        )
                    if status not in self.RETRY_STATUSES:
                        # 400 and the like: this document's request is wrong; asking again would not help
                        return Answer(request, None, failure=f"http-{status}", detail=text[:300])
                    failure, detail = f"http-{status}", text[:300]
                    retry_after = parse_retry_after(retry_header)
            if attempt == cfg.max_retries:
                break
            self.retries += 1
            await asyncio.sleep(self._delay(attempt, retry_after))
        log.debug("giving up on %s after %d attempts: %s %s", request.doc_ref, cfg.max_retries + 1, failure, detail)
        return Answer(request, None, failure=failure, detail=detail)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # The server said when; add a little jitter so all workers do not return in the same millisecond.
            return min(retry_after, self.config.backoff_max_s) + random.uniform(0, 0.1 * max(retry_after, 0.1))
        # Exponential backoff with full jitter (spreads retries of many workers evenly).
        return random.uniform(0, min(self.config.backoff_max_s, self.config.backoff_base_s * 2**attempt))

    @staticmethod
    def _read_completion(request: LabelRequest, payload: bytes, url: str) -> Answer:
        try:
            data = json.loads(payload)
            content = data["choices"][0]["message"].get("content") or ""
            usage = data.get("usage") or {}
            prompt_tokens = int(usage.get("prompt_tokens") or 0)
            completion_tokens = int(usage.get("completion_tokens") or 0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return Answer(request, None, failure="malformed-response", detail=f"{exc!r}: {payload[:200]!r}")
        if not isinstance(content, str):
            return Answer(request, None, failure="malformed-response", detail=f"content is {type(content).__name__}")
        return Answer(request, content, prompt_tokens, completion_tokens, extra={"endpoint": url})


# --------------------------------------------------------------------------- local transformers model


@dataclass(frozen=True)
class TransformersConfig:
    model_dir: str
    model_name: str | None = None  # annotator name; defaults to the folder name
    batch_size: int = 8
    max_new_tokens: int = 300
    device: str | None = None  # "cuda", "cpu"; default: cuda when available

    def __post_init__(self):
        if not os.path.isdir(self.model_dir):
            raise ValueError(f"--model-path {self.model_dir!r} is not a folder with a transformers chat model")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")


class TransformersBackend:
    """A local chat model: batched greedy generation through the model's own chat template."""

    def __init__(self, config: TransformersConfig):
        self.config = config
        self.annotator = config.model_name or os.path.basename(os.path.normpath(config.model_dir))
        self._model = None
        self._tokenizer = None

    def setup(self) -> None:
        """Load the model once, on first use (not at construction)."""
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = AutoTokenizer.from_pretrained(self.config.model_dir)
        if tokenizer.chat_template is None:
            raise ValueError(f"the tokenizer in {self.config.model_dir} has no chat template")
        tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(self.config.model_dir, dtype=dtype).to(device).eval()
        self._model, self._tokenizer, self._device = model, tokenizer, device
        log.info("loaded %s on %s", self.config.model_dir, device)

    def _chat_prompt(self, messages: list[dict[str, str]]) -> str:
        tok = self._tokenizer
        try:
            return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception:  # noqa: BLE001 - jinja's TemplateError: some templates (Gemma, Mistral v1) refuse "system"
            if messages[0]["role"] != "system":
                raise
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            return tok.apply_chat_template(merged + messages[2:], add_generation_prompt=True, tokenize=False)

    def run(self, requests: Sequence[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None:
        import torch

        self.setup()
        tok, model = self._tokenizer, self._model
        prompts = [self._chat_prompt(r.messages) for r in requests]
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.config.batch_size):
            if should_stop():
                return
            batch = order[start : start + self.config.batch_size]
            enc = tok([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self._device) for k, v in enc.items()}
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=self.config.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            new_tokens = out[:, enc["input_ids"].shape[1] :]  # (B, T_new)
            texts = tok.batch_decode(new_tokens, skip_special_tokens=True)
            prompt_lengths = enc["attention_mask"].sum(dim=1).tolist()
            for row, i in enumerate(batch):
                generated = new_tokens[row].tolist()
                if tok.eos_token_id in generated:
                    generated = generated[: generated.index(tok.eos_token_id) + 1]
                on_answer(Answer(requests[i], texts[row].strip(), int(prompt_lengths[row]), len(generated)))


# --------------------------------------------------------------------------- replay


class ReplayBackend:
    """Answers only from the cache. Anything that reaches it is a miss, so it fails naming the documents."""

    def __init__(self, model: str):
        if not model:
            raise ValueError("the replay backend needs --model: the annotator whose recorded answers to replay")
        self.annotator = model

    def run(self, requests: Sequence[LabelRequest], on_answer: OnAnswer, should_stop: ShouldStop) -> None:
        if not requests:
            return
        shown = ", ".join(r.doc_ref for r in requests[:5])
        more = f" and {len(requests) - 5} more" if len(requests) > 5 else ""
        raise ReplayMissError(
            f"replay: no recorded answer from model {self.annotator!r} for {len(requests)} document(s): "
            f"{shown}{more} (text hash {requests[0].text_hash[:16]}...); record them with the openai or "
            f"transformers backend into the same --cache first"
        )
