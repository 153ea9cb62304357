"""A small OpenAI chat-completions server for the labelling tests and benchmark.

Test code, not a product feature. It speaks enough HTTP/1.1 (keep-alive,
Content-Length) for httpx and any OpenAI client, on loopback, from a
background thread (`ChatServer(...).start()`) or as its own process
(`python tests/llm_server.py --port N`).

How it answers is decided per document by directives written inside the
document text, so one run can mix behaviours:

    [[score=4]]           answer with this score (default: sha256(document) % 6)
    [[status=429]]        answer HTTP 429 (any status code), ...
    [[times=2]]           ... only for the first 2 requests of this document, then answer well
    [[retry_after=0.2]]   with this Retry-After header
    [[delay=5]]           sleep this many seconds before answering (timeouts)
    [[body=malformed]]    answer 200 with a body that is not JSON
    [[body=unparseable]]  answer well-formed JSON whose text has no score line

`server.delay` (seconds) delays every answer. `server.requests` counts
requests per document (sha256 of the document text between the prompt's
<document> tags, which is `content_hash(text)` for untruncated documents),
`server.total` all requests.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import threading
from collections import Counter

DIRECTIVE = re.compile(r"\[\[(\w+)=([\w.]+)\]\]")
DOCUMENT = re.compile(r"<document>\n(.*)\n</document>", re.DOTALL)

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class ChatServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, api_key: str | None = None):
        self.host, self.port = host, port
        self.api_key = api_key
        self.delay = 0.0
        self.requests: Counter = Counter()  # user-message hash -> requests received
        self.total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> "ChatServer":
        self._thread = threading.Thread(target=self._run_thread, name="llm-test-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test LLM server did not start")
        return self

    def _run_thread(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._open())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._close())
        tasks = asyncio.all_tasks(self._loop)  # connections still open (keep-alive clients)
        for task in tasks:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def serve_forever(self) -> None:
        async def main():
            await self._open()
            print(f"listening on {self.url}", flush=True)
            async with self._server:
                await self._server.serve_forever()

        asyncio.run(main())

    # ---------------------------------------------------------------- HTTP

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                status, extra_headers, payload = await self._handle(method, path, headers, body)
                reason = REASONS.get(status, "Status")
                out = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(payload)}",
                       "Content-Type: application/json", "Connection: keep-alive"]
                out += [f"{k}: {v}" for k, v in extra_headers.items()]
                writer.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return 200, {}, b'{"object":"list","data":[{"id":"test-llm","object":"model"}]}'
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {}, b'{"error":{"message":"not found"}}'
        if self.api_key and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {}, b'{"error":{"message":"invalid api key"}}'
        self.total += 1
        request = json.loads(body)
        user = request["messages"][-1]["content"]
        match = DOCUMENT.search(user)
        document = match.group(1) if match else user
        key = hashlib.sha256(document.encode()).hexdigest()
        self.requests[key] += 1
        directives = dict(DIRECTIVE.findall(document))
        delay = float(directives.get("delay", self.delay))
        if delay:
            await asyncio.sleep(delay)
        failing = "times" not in directives or self.requests[key] <= int(directives["times"])
        if "status" in directives and failing:
            extra = {"Retry-After": directives["retry_after"]} if "retry_after" in directives else {}
            return int(directives["status"]), extra, b'{"error":{"message":"scripted failure"}}'
        if directives.get("body") == "malformed" and failing:
            return 200, {}, b'{"id": "chatcmpl-1", "choices": [{"message": '
        if directives.get("body") == "unparseable":
            content = "This document is about something, but I will not give a number."
        else:
            score = int(directives.get("score", int(hashlib.sha256(document.encode()).hexdigest(), 16) % 6))
            content = f"Rationale: test server label for a {len(document)}-character document.\nEducational score: {score}"
        prompt_tokens = sum(len(m["content"]) for m in request["messages"]) // 4
        completion_tokens = len(content) // 4
        payload = {
            "id": f"chatcmpl-{self.total}",
            "object": "chat.completion",
            "model": request.get("model", "test-llm"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return 200, {}, json.dumps(payload).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description="OpenAI chat-completions test server (loopback)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    parser.add_argument("--api-key", help="require this bearer token")
    args = parser.parse_args()
    ChatServer(args.host, args.port, api_key=args.api_key).serve_forever()


if __name__ == "__main__":
    main()
