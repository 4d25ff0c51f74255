"""Upstream calls: request building, error mapping and the SSE relay.

The client is gateway/upstream.py's: its own HTTP/1.1 client by default, httpx with
GATEWAY_UPSTREAM_CLIENT=httpx (make_client); one per process, pooled keep-alive connections.
SSE is passed through as it arrives."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.errors import GatewayError
from gateway.upstream import HttpxClient, NativeClient, UpstreamForbidden, UpstreamTimeout


def make_client(*, kind: str, max_connections: int):
    return HttpxClient(max_connections=max_connections) if kind == "httpx" else NativeClient(max_idle_per_origin=max_connections)


def upstream_call(route, payload: dict, *, stream: bool, usage_option: bool = True) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body for the upstream: the upstream's model name, and usage always asked for."""
    body = dict(payload)
    body["model"] = route.upstream_model
    if stream and usage_option:
        # Always ask for usage, so a streamed call is metered from the upstream's own count.
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body["stream_options"] = options
    headers = [(b"content-type", b"application/json"), (b"accept", b"text/event-stream" if stream else b"application/json")]
    if route.api_key:
        headers.append((b"authorization", b"Bearer " + route.api_key.encode()))
    return headers, orjson.dumps(body)


def transport_error(exc: Exception) -> GatewayError:
    if isinstance(exc, UpstreamTimeout):
        return GatewayError(504, "The model did not answer in time.", code="upstream_timeout", type="server_error")
    if isinstance(exc, UpstreamForbidden):
        return GatewayError(
            502,
            "The model's address is not allowed for upstream calls; ask an administrator.",
            code="upstream_forbidden",
            type="server_error",
        )
    return GatewayError(502, "The model could not be reached.", code="upstream_unreachable", type="server_error")


def status_error(status: int, body: bytes) -> GatewayError:
    """Map an upstream error status to what the client should see.

    The client's own mistakes (400/404/422 and the like) keep their status and the upstream's
    OpenAI error body; an upstream 401/403 is our credential's problem, not the caller's, and
    5xx are upstream failures: both become 502. Upstream rate limiting stays a 429.
    """
    if status == 429:
        return GatewayError(
            429,
            "The model is rate limited upstream; retry shortly.",
            code="upstream_rate_limited",
            type="rate_limit_error",
            headers=[(b"retry-after", b"1")],
        )
    if 400 <= status < 500 and status not in (401, 403, 407):
        message = "The model rejected the request."
        try:
            detail = orjson.loads(body).get("error", {})
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                message = detail["message"][:500]
        except (orjson.JSONDecodeError, AttributeError):
            pass
        return GatewayError(status, message, code="upstream_rejected")
    return GatewayError(502, f"The model answered with an error (HTTP {status}).", code="upstream_error", type="server_error")


@dataclass(slots=True)
class StreamState:
    """What has gone through a streamed response so far, for metering."""

    usage: dict | None = None
    delivered_chars: int = 0
    delivered_chunks: int = 0
    saw_done: bool = False
    first_chunk_at: float | None = None


class SseRelay:
    """Splits the upstream byte stream into SSE events and decides what the client gets.

    Usage chunks are remembered (and dropped unless the client asked for usage); the model name
    is rewritten to the one the client called when the upstream uses another; `[DONE]` is held
    back so the gateway can write the usage event before the stream completes.
    """

    def __init__(self, *, client_model: str, upstream_model: str, client_wants_usage: bool):
        self.buffer = b""
        self.state = StreamState()
        self.rewrite = client_model != upstream_model
        self.client_model = client_model
        self.client_wants_usage = client_wants_usage

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\n\n")
            if end < 0:
                # Tolerate CRLF framing too.
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                event, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            else:
                event, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            forwarded = self._event(event.strip())
            if forwarded:
                out.append(forwarded)
        return b"".join(out)

    def _event(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data:"):
            return event + b"\n\n" if event and not event.startswith(b":") else None
        data = event[5:].strip()
        if data == b"[DONE]":
            self.state.saw_done = True
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict):
            return None
        changed = False
        usage = chunk.get("usage")
        if usage:
            self.state.usage = usage
            if not self.client_wants_usage:
                if not chunk.get("choices"):
                    return None
                chunk["usage"] = None
                changed = True
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if delta is None and isinstance(choice, dict) and choice.get("text"):  # a /v1/completions chunk
                self.state.delivered_chars += len(choice["text"])
                self.state.delivered_chunks += 1
            elif isinstance(delta, dict):
                content = delta.get("content")
                if content:
                    self.state.delivered_chars += len(content)
                    self.state.delivered_chunks += 1
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict):
                        self.state.delivered_chars += len(function.get("arguments") or "") + len(function.get("name") or "")
                        self.state.delivered_chunks += 1
        if self.rewrite and "model" in chunk:
            chunk["model"] = self.client_model
            changed = True
        if changed:
            data = orjson.dumps(chunk)
        return b"data: " + data + b"\n\n"

    def opening(self) -> bytes:
        """What the client gets before the first upstream event (translated shapes open with an event of their own)."""
        return b""

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        """The stream's last bytes, sent after the usage event is written: [DONE], or the error that ended it.
        `usage` is what was metered (translated shapes report it in their closing event)."""
        return b"data: " + error.body() + b"\n\n" if error is not None else b"data: [DONE]\n\n"

    def estimated_completion_tokens(self) -> int:
        # Never a silent zero: at least one token per content chunk delivered, or ~4 chars a token.
        return max(self.state.delivered_chunks, -(-self.state.delivered_chars // 4))
