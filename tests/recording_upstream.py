"""A tiny OpenAI-compatible server that records what it is sent: the far end of the example runs.

It answers chat completions (plain, streamed with a usage chunk, and one round of tool calls) so
each example runs to completion, and keeps every request so a test can check what the example
really sent: path, headers and the decoded JSON body (the model id survives the round trip).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLY = "Hello from the recording upstream."
USAGE = {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.server.records.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
        if not isinstance(body, dict):
            return self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error", "param": None, "code": None}})
        model = body.get("model", "v1-deployment")
        if body.get("stream"):
            return self._stream(model, include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
        if body.get("tools") and not any(m.get("role") == "tool" for m in body.get("messages", [])):
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
                ],
            }
            return self._json(200, self._completion(model, message, "tool_calls"))
        return self._json(200, self._completion(model, {"role": "assistant", "content": REPLY}, "stop"))

    def _completion(self, model, message, finish_reason):
        return {
            "id": "chatcmpl-rec",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": USAGE,
        }

    def _json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, model, include_usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0 without a length: the stream ends when the connection closes
        base = {"id": "chatcmpl-rec", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": None}]}
            for word in REPLY.split(" ")[:1] + [" " + w for w in REPLY.split(" ")[1:]]
        ]
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if include_usage:
            chunks.append({**base, "choices": [], "usage": USAGE})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    records: list[dict]


class RecordingUpstream:
    def __init__(self):
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.records = []
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def records(self) -> list[dict]:
        return self.server.records

    def __enter__(self) -> RecordingUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
