"""OpenAI legacy completions (`POST /v1/completions`) → the upstream's /v1/completions, passed
through like chat completions (stream and not; usage always asked for upstream)."""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.proxy import SseRelay
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import boolean, integer, json_object, model, number, positive_int, text_or_tokens
from gateway.tokenizer import count_texts_async, input_texts


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    if "prompt" not in body:
        raise bad_request("You must provide `prompt`.", param="prompt", code="missing_required_parameter")
    estimate = text_or_tokens(body["prompt"], "prompt")
    stream = boolean(body, "stream")
    value = body.get("temperature")
    if value is not None and not (number(value) and 0 <= value <= 2):
        raise bad_request("`temperature` must be a number in [0, 2].", param="temperature")
    value = body.get("top_p")
    if value is not None and not (number(value) and 0 < value <= 1):
        raise bad_request("`top_p` must be a number in (0, 1].", param="top_p")
    budget = positive_int(body, "max_tokens")
    value = body.get("n")
    if value is not None and not (integer(value) and 1 <= value <= 128):
        raise bad_request("`n` must be an integer from 1 to 128.", param="n")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise bad_request("`stream_options` must be an object, and only with `stream: true`.", param="stream_options")
    return Call(
        body=body,
        model=name,
        stream=stream,
        wants_usage=stream and bool((options or {}).get("include_usage")),
        prompt_estimate=estimate,
        completion_budget=budget,
        choices=value or 1,
    )


def estimate_completion(data: dict) -> int:
    text = "".join(str(c.get("text") or "") for c in data.get("choices") or () if isinstance(c, dict))
    return max(1, -(-len(text) // 4))


def relay(call: Call, route, request_id: str) -> SseRelay:
    return SseRelay(client_model=route.name, upstream_model=route.upstream_model, client_wants_usage=call.wants_usage)


async def count(call: Call, counter) -> int:
    """The `prompt`'s tokens with the route's tokenizer (token ids count as themselves)."""
    return await count_texts_async(*input_texts(call.body.get("prompt")), counter)


SHAPE = Shape(
    endpoint="completions",
    upstream_path="/completions",
    credential=chat.credential,
    parse=parse,
    respond=chat.respond,
    usage=chat.usage,
    estimate_completion=estimate_completion,
    relay=relay,
    error_body=chat.error_body,
    count=count,
)
