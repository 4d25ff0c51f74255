"""A tiny OpenAI-compatible upstream for health-check tests, run as its own process.

GET /v1/models answers 200 with the Bearer key from STUB_API_KEY, else 401; /broken/v1/models
answers 503, /nolist/v1/models 404, /slow/v1/models after 3 s; /leaky/v1/models answers 401 with
a message that echoes the Authorization header and a URL with credentials. GET /_hits counts the probes.
Usage: python tests/worker_models_upstream.py PORT
"""

from __future__ import annotations

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = os.environ.get("STUB_API_KEY", "")
hits = {"count": 0}


class Handler(BaseHTTPRequestHandler):
    def _json(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/_hits":
            return self._json(200, {"count": hits["count"]})
        hits["count"] += 1
        if self.path == "/v1/models":
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                return self._json(401, {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}})
            return self._json(200, {"object": "list", "data": [{"id": "demo", "object": "model"}]})
        if self.path == "/broken/v1/models":
            return self._json(503, {"error": {"message": "model is still loading"}})
        if self.path == "/leaky/v1/models":
            message = (
                f"Key {self.headers.get('Authorization')} rejected (also tried sk-live-{'x' * 24}); "
                "rotate it at https://ops:hunter2@keys.internal/rotate?token=tok_abcdef123456"
            )
            return self._json(401, {"error": {"message": message}})
        if self.path == "/slow/v1/models":
            time.sleep(3)
            return self._json(200, {"object": "list", "data": []})
        return self._json(404, {"error": {"message": "not found"}})

    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
