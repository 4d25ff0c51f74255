"""API shapes: one request flow (auth → scope → admission → proxy → meter), many client-facing APIs.

Each shape is a small module of pure functions (no I/O) that the flow in gateway/app.py calls:

- `credential(headers, on_deployment_path)`: the key from the headers this API uses;
- `parse(payload, model_required)` → `Call`: validate the client's body and translate it to the
  upstream request (an OpenAI chat-completions body for the translated shapes);
- `respond(data, call, model, request_id)`: the upstream's JSON answer → the client's body;
- `usage(data)`: (prompt, completion) tokens from the upstream's answer, None when it has none;
- `relay(call, route, request_id)`: a streaming translator (see gateway.proxy.SseRelay) that turns
  the upstream's SSE events into the client's, with `opening()` / `closing(error)`;
- `error_body(error, request_id)` → (status, body): the API's own error shape;
- `count(call, counter)` (optional, async): the prompt's tokens with the route's tokenizer.

The shape also names the usage event's `endpoint`, the upstream path, and the upstream body field
that caps the completion (`cap_param`, None when the call generates nothing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import GatewayError

KIND_PATHS = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings", "rerank": "/v1/rerank"}


def wrong_kind(model: str, kind: str, endpoint: str) -> GatewayError:
    """A model called through an API its kind does not serve (an embedding model on chat, say)."""
    return GatewayError(
        400,
        f"The model `{model[:200]}` is a {kind} model and does not serve {endpoint}; call POST {KIND_PATHS.get(kind, '/v1/chat/completions')}.",
        code="unsupported_model",
        param="model",
    )


@dataclass(slots=True)
class Call:
    """A client request as the flow needs it: what to send upstream and what to reserve."""

    body: dict  # the upstream request body (the model and stream_options are set by gateway.proxy)
    model: str | None  # the model the client named (None on the V1 deployment path)
    stream: bool = False
    wants_usage: bool = False  # the client asked to see the usage chunk (chat streaming)
    prompt_estimate: int = 0
    completion_budget: int | None = None  # the caller's cap; None: the gateway's default; 0: generates nothing
    choices: int = 1
    extra: dict | None = None  # request details the response translation needs


@dataclass(frozen=True, slots=True)
class Shape:
    endpoint: str  # UsageEvent.endpoint, metrics and the access log
    upstream_path: str  # appended to the route's base URL (which ends in /v1)
    credential: Callable
    parse: Callable
    respond: Callable
    usage: Callable
    estimate_completion: Callable
    relay: Callable
    error_body: Callable
    cap_param: str | None = "max_tokens"
    model_kind: str = "chat"  # the deployment kind this shape calls (deployments.models.DeploymentKind)
    stream_usage_option: bool = True  # ask a streaming chat/completions upstream for its usage chunk
    passthrough: Shape | None = None  # used instead for a deployment whose upstream serves this API itself
    stream_header: bytes | None = None  # a request header that asks for a stream (DashScope's X-DashScope-SSE: enable)
    stream_headers: tuple = ()  # extra response headers on a stream
    # async (call, counter) -> prompt tokens, counted with the route's tokenizer once the route is
    # known (gateway.tokenizer; counter None = the default). Shapes without it estimate in parse.
    count: Callable | None = None
