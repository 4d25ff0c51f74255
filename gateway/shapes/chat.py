"""OpenAI chat completions: the native shape. The body passes through (validated); answers and
stream events pass through with the model name the client called."""

from __future__ import annotations

import orjson

from gateway.credentials import parse_bearer
from gateway.errors import GatewayError
from gateway.proxy import SseRelay
from gateway.shapes import Call, Shape
from gateway.tokenizer import count_chat_async
from gateway.validation import validate_chat


def credential(headers: dict[bytes, bytes], on_deployment_path: bool) -> str:
    if on_deployment_path and b"x-apig-appcode" in headers:
        return parse_bearer(headers[b"x-apig-appcode"], "X-Apig-AppCode")
    return parse_bearer(headers.get(b"authorization"), "Authorization")


def parse(payload: object, model_required: bool) -> Call:
    validate_chat(payload, model_required=model_required)
    stream = bool(payload.get("stream"))
    return Call(
        body=payload,
        model=payload.get("model"),
        stream=stream,
        wants_usage=stream and bool((payload.get("stream_options") or {}).get("include_usage")),
        # Both given: the smaller binds (the gateway may lower it, never raise it).
        completion_budget=min((payload[f] for f in ("max_tokens", "max_completion_tokens") if payload.get(f) is not None), default=None),
        choices=payload.get("n") or 1,
    )


def respond(data: dict, call: Call, model: str, request_id: str) -> bytes:
    if data.get("model") != model:
        data["model"] = model
    return orjson.dumps(data)


def usage(data: dict) -> tuple[int, int] | None:
    """prompt/completion tokens from an OpenAI usage block (chat or completions), None when invalid."""
    block = data.get("usage")
    if isinstance(block, dict) and isinstance(block.get("prompt_tokens"), int) and isinstance(block.get("completion_tokens"), int):
        return block["prompt_tokens"], block["completion_tokens"]
    return None


def estimate_completion(data: dict) -> int:
    # The upstream did the work but did not count it: about 4 characters a token, never zero.
    text = "".join(str((c.get("message") or {}).get("content") or "") for c in data.get("choices") or () if isinstance(c, dict))
    return max(1, -(-len(text) // 4))


def relay(call: Call, route, request_id: str) -> SseRelay:
    return SseRelay(client_model=route.name, upstream_model=route.upstream_model, client_wants_usage=call.wants_usage)


async def count(call: Call, counter) -> int:
    return await count_chat_async(call.body, counter)


def error_body(error: GatewayError, request_id: str) -> tuple[int, bytes]:
    return error.status, error.body()


SHAPE = Shape(
    endpoint="chat.completions",
    upstream_path="/chat/completions",
    credential=credential,
    parse=parse,
    respond=respond,
    usage=usage,
    estimate_completion=estimate_completion,
    relay=relay,
    error_body=error_body,
    count=count,
)
