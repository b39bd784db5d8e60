"""A local stand-in for an OpenAI-compatible chat-completions server, answering what `longqa.generate` asks.

Its default "model" is deterministic: asked for a question about a passage, it asks about the passage's first words;
asked to answer, it quotes those words back (they are in the document), so every pair is grounded. A test changes
that by queueing faults (served in order, one a request): an HTTP status (`429`, `500`), `"hang"` (never answers
until the server closes), `"broken_body"` (200 with a body that is not JSON), or a callable `body -> content` whose
string becomes the model's reply. `hold_after=N` makes every request after the N-th answer wait until `release` is
set; `held` is set when one does (a test waits on it, never on the clock). `refuse_json_schema=True` answers every
request with `response_format: json_schema` HTTP 400, as some TGI and llama.cpp builds do. A path outside `/v1/` is
HTTP 404.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PASSAGE = re.compile(r"<passage[^>]*>\n(.*?)\n</passage", re.S)
_HINT = re.compile(r"say about: (.*?)\?\n")

Fault = int | str | Callable[[dict], str]


def default_content(body: dict) -> str:
    """The fake model's reply: a question on a passage's first 8 words, or an answer quoting them."""
    user = body["messages"][-1]["content"]
    passages = _PASSAGE.findall(user)
    if passages:
        words = " ".join(passages[0].split()[:8])
        return json.dumps({"question": f"What does the document say about: {words}?"})
    hint = _HINT.search(user + "\n")
    quote = hint.group(1) if hint else "nothing at all"
    return json.dumps({"answer": f"It says {quote}.", "quotes": [quote]})


def is_answer_request(body: dict) -> bool:
    return "Question: " in body["messages"][-1]["content"]


class FakeOpenAI:
    def __init__(self, faults: list[Fault] | None = None, content: Callable[[dict], str] = default_content,
                 hold_after: int | None = None, refuse_json_schema: bool = False):
        self.faults, self.content, self.hold_after = list(faults or []), content, hold_after
        self.refuse_json_schema = refuse_json_schema
        self.requests: list[dict[str, Any]] = []
        self.answers_served = 0
        self.held, self.release, self._closing = threading.Event(), threading.Event(), threading.Event()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.path.startswith("/v1/"):  # as vLLM and llama.cpp's server answer an unknown path
                    return self._send(404, json.dumps({"detail": "Not Found"}).encode())
                body = json.loads(raw)
                with server._lock:
                    server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                            "body": body})
                    fault = server.faults.pop(0) if server.faults else None
                    # counted when started, so concurrent requests cannot slip past the hold
                    hold = server.hold_after is not None and server.answers_served >= server.hold_after
                    if not hold and is_answer_request(body):
                        server.answers_served += 1
                if hold:
                    server.held.set()
                    server.release.wait()
                    if server._closing.is_set():
                        return
                if fault == "hang":
                    server._closing.wait()
                    return
                if server.refuse_json_schema and body.get("response_format", {}).get("type") == "json_schema":
                    return self._send(400, json.dumps({"error": {"message": "response_format json_schema is not "
                                                                            "supported"}}).encode())
                if isinstance(fault, int):
                    return self._send(fault, json.dumps({"error": {"message": f"fake {fault}"}}).encode(),
                                      {"retry-after-ms": "1"})
                if fault == "broken_body":
                    return self._send(200, b'{"id": "x", "choices": [{"message": ')
                content = fault(body) if callable(fault) else server.content(body)
                reply = {"id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
                self._send(200, json.dumps(reply).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
