"""DashScope native text generation (`POST /api/v1/services/aigc/text-generation/generation`)
translated to chat completions on the upstream.

Request: `model`, `input.messages` (or `input.prompt`), `parameters` (`result_format` message or
text, `incremental_output`, and the sampling parameters, which pass on as chat parameters);
streamed when the client sends `X-DashScope-SSE: enable` (what the `dashscope` SDK does for
stream=True). Answer: `{"output": {"choices": [{"message", "finish_reason"}]}` (or
`{"text", "finish_reason"}` for result_format text), `usage.input_tokens/output_tokens` and
`request_id`; streamed as `id:/event:result/data:` events, the last one carrying the finish reason
and the metered usage. Errors: `{"code", "message", "request_id"}` with DashScope's codes
(InvalidApiKey, InvalidParameter, Model.AccessDenied, Throttling.RateQuota, ...), so the SDK's
`status_code` / `code` say what happened.
"""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError, bad_request
from gateway.limits import estimate_prompt_tokens
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import json_object, model
from gateway.shapes.streaming import TranslatingRelay
from gateway.validation import validate_chat

# DashScope-only parameters that mean nothing to a chat-completions upstream.
DROPPED = frozenset({"result_format", "incremental_output", "user_agent", "enable_search", "search_options", "stream", "output_format"})
CODES = {
    "invalid_api_key": "InvalidApiKey",
    "missing_api_key": "InvalidApiKey",
    "model_not_found": "Model.AccessDenied",
    "ip_not_allowed": "AccessDenied",
    "rate_limit_exceeded": "Throttling.RateQuota",
    "insufficient_quota": "Throttling.AllocationQuota",
    "upstream_rate_limited": "Throttling",
    "request_too_large": "InvalidParameter.DataInspection",
}
STATUS_CODES = {400: "InvalidParameter", 401: "InvalidApiKey", 403: "AccessDenied", 404: "NotFound", 429: "Throttling"}


def _messages(data: dict) -> list[dict]:
    messages = data.get("messages")
    if messages is None and isinstance(data.get("prompt"), str):
        messages = [{"role": "user", "content": data["prompt"]}]
    if not isinstance(messages, list) or not messages:
        raise bad_request("input.messages must be a non-empty array (or give input.prompt).", param="input.messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise bad_request(f"input.messages[{i}].role must be system, user, assistant or tool.", param=f"input.messages.[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # multimodal-style parts: [{"text": ...}, {"image": url}]
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append({"type": "text", "text": part["text"]})
                elif isinstance(part, dict) and isinstance(part.get("image"), str):
                    parts.append({"type": "image_url", "image_url": {"url": part["image"]}})
            message = {**message, "content": parts if any(p["type"] != "text" for p in parts) else "".join(p["text"] for p in parts)}
        out.append(message)
    return out


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    data = body.get("input")
    if not isinstance(data, dict):
        raise bad_request("`input` must be an object with `messages`.", param="input", code="missing_required_parameter")
    messages = _messages(data)
    parameters = body.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad_request("`parameters` must be an object.", param="parameters")
    upstream: dict = {k: v for k, v in parameters.items() if k not in DROPPED}
    upstream["messages"] = messages
    result_format = parameters.get("result_format") or "text"
    if result_format not in ("text", "message"):
        raise bad_request("parameters.result_format must be `text` or `message`.", param="parameters.result_format")
    # Checked like a chat body: one set of ranges for every shape.
    validate_chat({**upstream, "model": name})
    stream = bool(body.get("stream"))  # set by the flow from the X-DashScope-SSE header
    if stream:
        upstream["stream"] = True
    return Call(
        body=upstream,
        model=name,
        stream=stream,
        prompt_estimate=estimate_prompt_tokens(messages),
        completion_budget=upstream.get("max_tokens"),
        extra={"format": result_format, "incremental": bool(parameters.get("incremental_output"))},
    )


def _usage(prompt: int, completion: int) -> dict:
    return {"input_tokens": prompt, "output_tokens": completion, "total_tokens": prompt + completion}


def _output(result_format: str, content: str, finish: str, tool_calls: list | None = None) -> dict:
    if result_format == "text":
        return {"text": content, "finish_reason": finish}
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"choices": [{"finish_reason": finish, "message": message}]}


def respond(data: dict, call: Call, model: str, request_id: str) -> bytes:
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    counted = chat.usage(data)
    prompt, completion = counted if counted is not None else (call.prompt_estimate, chat.estimate_completion(data))
    output = _output(call.extra["format"], message.get("content") or "", choice.get("finish_reason") or "stop", message.get("tool_calls"))
    return orjson.dumps({"output": output, "usage": _usage(prompt, completion), "request_id": request_id})


def error_payload(error: GatewayError, request_id: str) -> dict:
    code = CODES.get(error.code) or STATUS_CODES.get(error.status) or "InternalError"
    return {"code": code, "message": error.message, "request_id": request_id}


def error_body(error: GatewayError, request_id: str) -> tuple[int, bytes]:
    status = 403 if error.code == "model_not_found" else error.status
    return status, orjson.dumps(error_payload(error, request_id))


class DashScopeRelay(TranslatingRelay):
    """Chat-completion chunks → DashScope SSE events (`id:n`, `event:result`, `data:{...}`)."""

    def __init__(self, call: Call, route, request_id: str):
        super().__init__(client_model=route.name, upstream_model=route.upstream_model)
        self.request_id = request_id
        self.format = call.extra["format"]
        self.incremental = call.extra["incremental"]
        self.prompt_estimate = call.prompt_estimate
        self.text_so_far = ""
        self.sequence = 0
        self.tool_calls: dict[int, dict] = {}

    def event(self, content: str, finish: str, usage: dict, kind: bytes = b"result", tool_calls: list | None = None) -> bytes:
        self.sequence += 1
        payload = {"output": _output(self.format, content, finish, tool_calls), "usage": usage, "request_id": self.request_id}
        return b"id:%d\nevent:%s\n:HTTP_STATUS/200\ndata:%s\n\n" % (self.sequence, kind, orjson.dumps(payload))

    def text(self, delta: str) -> bytes:
        self.text_so_far += delta
        running = _usage(self.prompt_estimate, self.state.delivered_chunks)
        return self.event(delta if self.incremental else self.text_so_far, "null", running)

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        call = self.tool_calls.setdefault(
            index, {"index": index, "id": call_id or "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call_id:
            call["id"] = call_id
        if name:
            call["function"]["name"] = name
        call["function"]["arguments"] += arguments
        return b""  # sent whole with the last event

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        if error is not None:
            payload = error_payload(error, self.request_id)
            return b"id:%d\nevent:error\nstatus:%d\ndata:%s\n\n" % (self.sequence + 1, error.status, orjson.dumps(payload))
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)] or None
        content = "" if self.incremental else self.text_so_far
        return self.event(content, self.finish_reason or "stop", _usage(*usage), tool_calls=calls)


def relay(call: Call, route, request_id: str) -> DashScopeRelay:
    return DashScopeRelay(call, route, request_id)


SHAPE = Shape(
    endpoint="dashscope.generation",
    upstream_path="/chat/completions",
    credential=chat.credential,
    parse=parse,
    respond=respond,
    usage=chat.usage,
    estimate_completion=chat.estimate_completion,
    relay=relay,
    error_body=error_body,
    stream_header=b"x-dashscope-sse",
    count=chat.count,  # the translated body is a chat body: counted like one, with the route's tokenizer
)
