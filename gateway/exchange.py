"""One request/response on the ASGI connection: what has been answered, the headers every answer
carries (x-request-id, Server-Timing), and reading the request (headers, a bounded body, the
client leaving while the model works)."""

from __future__ import annotations

import asyncio
import time

import orjson
from django.conf import settings

from gateway import errors
from gateway.errors import GatewayError
from gateway.routes import KeyEntry, Route
from gateway.shapes import Shape
from gateway.shapes import chat as chat_shape
from gateway.timing import Timing

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


class ClientGone(Exception):
    pass


class Exchange:
    """One request/response: tracks whether the response started, for errors and the access log."""

    __slots__ = (
        "send",
        "request_id",
        "status",
        "started",
        "model",
        "metric_model",
        "entry",
        "client_ip",
        "tokens",
        "response_started",
        "shape",
        "headers",
        "route",
        "asked_model",
        "endpoint",
        "refusal_reason",
        "metered",
        "timing",
        "pending_usage",
    )

    def __init__(self, send, request_id: str, timing: Timing):
        self.timing = timing
        self.send = send
        self.request_id = request_id
        self.status = 0
        self.started = time.time()
        self.model = ""
        self.metric_model = ""
        self.entry: KeyEntry | None = None
        self.client_ip: str | None = None
        self.tokens = 0
        self.response_started = False
        self.shape: Shape = chat_shape.SHAPE  # whose error body a failure gets
        self.headers: list[tuple[bytes, bytes]] = []  # added to every response (e.g. the cap header)
        # For the usage event of a refusal: what the request was for, as far as it got.
        self.route: Route | None = None
        self.asked_model = ""
        self.endpoint = ""  # when not the shape's (the models list)
        self.refusal_reason = ""  # recorded instead of the public error code (e.g. why a 401)
        self.metered = False  # a usage event was written (or attempted) for this request
        self.pending_usage: asyncio.Future | None = None  # its commit, when awaited after the answer

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, *self.headers, (b"x-request-id", self.request_id.encode()), self.timing.header()],
            }
        )

    async def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        await self.send({"type": "http.response.body", "body": body})
        self.timing.finished = self.timing.mark("send")


async def unless_client_leaves(receive, work):
    """Await `work`, but raise ClientGone (cancelling it) if the client disconnects first.

    The request body has been read, so the next ASGI message can only be http.disconnect. One
    watcher task and a done-callback: cheaper than asyncio.wait over two tasks on the hot path."""
    task = asyncio.current_task()
    gone = finished = False

    def on_message(watcher: asyncio.Future) -> None:
        nonlocal gone
        # A done-callback already scheduled when `work` finished still runs: it must not cancel
        # the request after this (e.g. while its usage event is committed after the answer).
        if finished:
            return
        if not watcher.cancelled() and watcher.exception() is None and watcher.result()["type"] == "http.disconnect":
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        finished = True
        watcher.remove_done_callback(on_message)
        watcher.cancel()


def parse_json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None


def require_method(method: str, expected: str) -> None:
    if method != expected:
        raise GatewayError(405, f"Use {expected} for this endpoint.", code="method_not_allowed")


def request_headers(scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in headers:
            if name == b"x-forwarded-for":
                headers[name] += b"," + value
            elif name in (b"authorization", b"x-apig-appcode", b"x-api-key"):
                # Two credentials in one request: ambiguous, refuse rather than pick one.
                headers[name] = b"\x00"
            continue
        headers[name] = value
    return headers


def header_value(scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


def client_peer(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def too_large() -> GatewayError:
    return GatewayError(413, f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.", code="request_too_large")


async def read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large()
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
