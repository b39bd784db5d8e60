"""A local stand-in for the Hub's HTTP API that records what the real `huggingface_hub` client sends.

It answers repo creation, YAML validation, pre-upload (every file "regular", so contents travel inside the commit)
and the NDJSON commit; `fail_commits` makes the first commit requests answer 503 (a transient error).
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self, fail_commits: int = 0):
        self.requests: list[dict] = []
        self.commits: list[dict] = []
        self.fail_commits = fail_commits
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                hub.requests.append({"method": self.command, "path": self.path,
                                     "authorization": self.headers.get("Authorization"), "body": raw})
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    body = json.loads(raw)
                    repo = f"{body.get('organization')}/{body['name']}" if body.get("organization") else body["name"]
                    return self._reply(200, {"url": f"{hub.url}/{body.get('type', 'model')}s/{repo}", "name": repo})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if "/preupload/" in path:
                    files = json.loads(raw)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if "/commit/" in path:
                    if hub.fail_commits > 0:
                        hub.fail_commits -= 1
                        return self._reply(503, {"error": "try again"})
                    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
                    files = {entry["value"]["path"]: base64.b64decode(entry["value"]["content"])
                             for entry in lines if entry["key"] == "file"}
                    hub.commits.append({"path": path, "header": lines[0]["value"], "files": files})
                    repo = path.removeprefix("/api").split("/commit/")[0]  # /datasets/org/name
                    return self._reply(200, {"commitUrl": f"{hub.url}{repo}/commit/{'1' * 40}", "commitOid": "1" * 40})
                if "/branch/" in path:
                    return self._reply(200, {})
                return self._reply(404, {"error": f"not handled by the fake hub: {self.command} {path}"})

            do_GET = do_POST = do_PUT = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
