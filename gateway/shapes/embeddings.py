"""OpenAI embeddings (`POST /v1/embeddings`) → the upstream's /v1/embeddings, passed through.

`input` is a string, strings, token ids or token-id arrays; `encoding_format` float or base64
(the OpenAI SDKs ask for base64 by default and decode it themselves); `dimensions` for models
that can shorten their vectors. Only input tokens are metered.
"""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import json_object, model, positive_int, text_or_tokens
from gateway.tokenizer import count_texts_async, input_texts

MAX_INPUTS = 2048  # the OpenAI limit on inputs per request


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    if "input" not in body:
        raise bad_request("You must provide `input`.", param="input", code="missing_required_parameter")
    value = body["input"]
    if isinstance(value, list) and len(value) > MAX_INPUTS:
        raise bad_request(f"`input` may hold at most {MAX_INPUTS} items.", param="input")
    estimate = text_or_tokens(value, "input")
    fmt = body.get("encoding_format")
    if fmt is not None and fmt not in ("float", "base64"):
        raise bad_request("`encoding_format` must be `float` or `base64`.", param="encoding_format")
    positive_int(body, "dimensions")
    if body.get("stream"):
        raise bad_request("Embeddings cannot be streamed.", param="stream")
    return Call(body=body, model=name, prompt_estimate=estimate, completion_budget=0)


def usage(data: dict) -> tuple[int, int] | None:
    block = data.get("usage")
    if isinstance(block, dict):
        tokens = block.get("prompt_tokens", block.get("total_tokens"))
        if isinstance(tokens, int):
            return tokens, 0
    return None


def estimate_completion(data: dict) -> int:
    return 0


def relay(call: Call, route, request_id: str):
    raise AssertionError("embeddings are never streamed")  # parse refuses stream=true


async def count(call: Call, counter) -> int:
    """The `input`'s tokens with the route's tokenizer (token ids count as themselves)."""
    return await count_texts_async(*input_texts(call.body.get("input")), counter)


SHAPE = Shape(
    endpoint="embeddings",
    upstream_path="/embeddings",
    credential=chat.credential,
    parse=parse,
    respond=chat.respond,
    usage=usage,
    estimate_completion=estimate_completion,
    relay=relay,
    error_body=chat.error_body,
    count=count,
    cap_param=None,
    model_kind="embedding",
)

__all__ = ["SHAPE"]
