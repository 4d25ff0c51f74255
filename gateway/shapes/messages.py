"""Anthropic Messages (`POST /v1/messages`) translated to chat completions on the upstream.

Credentials: `x-api-key` (what the anthropic SDK and Claude Code send by default) or
`Authorization: Bearer` (ANTHROPIC_AUTH_TOKEN). `anthropic-version` is accepted as sent.

Request: `max_tokens` (required) → `max_tokens`; `system` (string or text blocks) → a system
message; content blocks: text, image (base64 or url) → parts, `tool_use` → assistant tool_calls,
`tool_result` → tool messages; `tools` (`input_schema`) → function tools; `tool_choice`
auto/any/tool/none; `stop_sequences` → `stop`; `temperature`, `top_p`, `top_k`, `metadata.user_id`.
`thinking` blocks from earlier turns are dropped (chat completions have no place for them).

Answer: a Message (`content` text / tool_use blocks, `stop_reason`, `usage.input_tokens` /
`output_tokens`); streamed, the gateway writes message_start, content_block_start/delta/stop,
message_delta (stop_reason and the metered usage) and message_stop. Errors use Anthropic's body
`{"type": "error", "error": {"type", "message"}}` with the status codes its SDK maps to
AuthenticationError, PermissionDeniedError, NotFoundError, RateLimitError, ...
"""

from __future__ import annotations

import orjson

from gateway.credentials import parse_bearer
from gateway.errors import GatewayError, bad_request
from gateway.limits import estimate_prompt_tokens
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import boolean, integer, json_object, model, number, positive_int
from gateway.shapes.streaming import TranslatingRelay
from gateway.tokenizer import count_chat
from gateway.validation import TOOL_NAME

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def credential(headers: dict[bytes, bytes], on_deployment_path: bool) -> str:
    if b"x-api-key" in headers:
        return parse_bearer(headers[b"x-api-key"], "x-api-key")
    if b"authorization" in headers:
        return parse_bearer(headers[b"authorization"], "Authorization")
    return parse_bearer(None, "x-api-key")


def _blocks(content, where: str) -> list:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array of content blocks.", param=f"{where}.content")
    return content


def _image(block: dict, where: str) -> dict:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise bad_request(f"{where}: an image needs a base64 or url source.", param=where)
    return {"type": "image_url", "image_url": {"url": url}}


def _result_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text")
    raise bad_request(f"{where}.content must be a string or text blocks.", param=where)


def chat_messages(messages, system) -> list[dict]:
    out: list[dict] = []
    if system is not None:
        if isinstance(system, list):
            system = "".join(b.get("text") or "" for b in system if isinstance(b, dict) and b.get("type") == "text")
        if not isinstance(system, str):
            raise bad_request("`system` must be a string or an array of text blocks.", param="system")
        if system:
            out.append({"role": "system", "content": system})
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty array.", param="messages")
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be `user` or `assistant`.", param=f"{where}.role")
        parts: list[dict] = []
        calls: list[dict] = []
        images = False
        for j, block in enumerate(_blocks(message.get("content"), where)):
            at = f"{where}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image":
                parts.append(_image(block, at))
                images = True
            elif kind == "tool_use" and message["role"] == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise bad_request(f"{at}: tool_use needs a string `id` and `name`.", param=at)
                arguments = orjson.dumps(block.get("input") or {}).decode()
                calls.append({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}})
            elif kind == "tool_result" and message["role"] == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise bad_request(f"{at}: tool_result needs a string `tool_use_id`.", param=at)
                text = _result_text(block.get("content"), at)
                if block.get("is_error"):
                    text = "Error: " + text
                out.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise bad_request(f"{at}: unsupported content block type {str(kind)[:40]!r} for a {message['role']} message.", param=at)
        if not parts and not calls:
            continue  # a user turn of tool results only
        content: object = parts if images else "".join(p["text"] for p in parts)
        if message["role"] == "assistant":
            turn: dict = {"role": "assistant", "content": content or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        else:
            out.append({"role": "user", "content": content})
    return out


def chat_tools(tools) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("`tools` must be an array.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise bad_request(f"tools.{i}: server tools ({str(kind)[:40]!r}) are not supported by this gateway.", param=f"tools.{i}")
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            raise bad_request(f"tools.{i}.name must be 1-64 letters, digits, underscores or hyphens.", param=f"tools.{i}.name")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"tools.{i}.input_schema must be a JSON Schema object.", param=f"tools.{i}.input_schema")
        function = {"name": tool["name"], "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        out.append({"type": "function", "function": function})
    return out


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    if body.get("max_tokens") is None:
        raise bad_request("max_tokens: Field required", param="max_tokens", code="missing_required_parameter")
    budget = positive_int(body, "max_tokens")
    messages = chat_messages(body.get("messages"), body.get("system"))
    upstream: dict = {"messages": messages, "max_tokens": budget}
    value = body.get("temperature")
    if value is not None:
        if not (number(value) and 0 <= value <= 1):
            raise bad_request("temperature: must be a number from 0 to 1.", param="temperature")
        upstream["temperature"] = value
    value = body.get("top_p")
    if value is not None:
        if not (number(value) and 0 <= value <= 1):
            raise bad_request("top_p: must be a number from 0 to 1.", param="top_p")
        upstream["top_p"] = value
    value = body.get("top_k")
    if value is not None:
        if not (integer(value) and value >= 0):
            raise bad_request("top_k: must be a non-negative integer.", param="top_k")
        upstream["top_k"] = value
    stops = body.get("stop_sequences")
    if stops is not None:
        if not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
            raise bad_request("stop_sequences: must be an array of strings.", param="stop_sequences")
        if stops:
            upstream["stop"] = stops
    if body.get("tools"):
        upstream["tools"] = chat_tools(body["tools"])
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind == "auto":
            upstream["tool_choice"] = "auto"
        elif kind == "any":
            upstream["tool_choice"] = "required"
        elif kind == "none":
            upstream["tool_choice"] = "none"
        elif kind == "tool" and isinstance(choice.get("name"), str):
            upstream["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        else:
            raise bad_request("tool_choice: must be auto, any, none or {type: tool, name}.", param="tool_choice")
        if choice.get("disable_parallel_tool_use"):
            upstream["parallel_tool_calls"] = False
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        upstream["user"] = metadata["user_id"]
    stream = boolean(body, "stream")
    if stream:
        upstream["stream"] = True
    return Call(
        body=upstream,
        model=name,
        stream=stream,
        prompt_estimate=estimate_prompt_tokens(messages),
        completion_budget=budget,
    )


def count_model(payload: object) -> str:
    """The model a /v1/messages/count_tokens body names (validated like a Messages body)."""
    return model(json_object(payload))


def count_tokens(payload: dict, counter=None) -> int:
    """/v1/messages/count_tokens: what admission counts for the request, tools included, with the
    route's tokenizer (None: the default)."""
    body = {"messages": chat_messages(payload.get("messages"), payload.get("system"))}
    if payload.get("tools"):
        body["tools"] = chat_tools(payload["tools"])
    return count_chat(body, counter)


def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req_")


def _input(arguments: str) -> dict:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def respond(data: dict, call: Call, model: str, request_id: str) -> bytes:
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for tool_call in message.get("tool_calls") or ():
        function = tool_call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": tool_call.get("id") or "toolu_gh",
                "name": function.get("name") or "",
                "input": _input(function.get("arguments")),
            }
        )
    counted = chat.usage(data)
    prompt, completion = counted if counted is not None else (call.prompt_estimate, chat.estimate_completion(data))
    return orjson.dumps(
        {
            "id": message_id(request_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
            "stop_sequence": None,
            "usage": usage_block(prompt, completion),
        }
    )


def usage_block(prompt: int, completion: int) -> dict:
    return {"input_tokens": prompt, "output_tokens": completion, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def error_payload(error: GatewayError, request_id: str) -> dict:
    kind = ERROR_TYPES.get(error.status) or ("overloaded_error" if error.status == 529 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}, "request_id": request_id}


def error_body(error: GatewayError, request_id: str) -> tuple[int, bytes]:
    return error.status, orjson.dumps(error_payload(error, request_id))


def _sse(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessagesRelay(TranslatingRelay):
    """Chat-completion chunks → Anthropic message stream events."""

    def __init__(self, call: Call, route, request_id: str):
        super().__init__(client_model=route.name, upstream_model=route.upstream_model)
        self.request_id = request_id
        self.prompt_estimate = call.prompt_estimate
        self.block: int | None = None  # index of the open content block
        self.block_kind = ""
        self.blocks = 0
        self.calls: dict[int, int] = {}  # upstream tool-call index → content block index

    def opening(self) -> bytes:
        message = {
            "id": message_id(self.request_id),
            "type": "message",
            "role": "assistant",
            "model": self.client_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_block(self.prompt_estimate, 0),
        }
        return _sse("message_start", {"type": "message_start", "message": message}) + _sse("ping", {"type": "ping"})

    def _open(self, block: dict, kind: str) -> bytes:
        out = self._close()
        self.block, self.block_kind = self.blocks, kind
        self.blocks += 1
        return out + _sse("content_block_start", {"type": "content_block_start", "index": self.block, "content_block": block})

    def _close(self) -> bytes:
        if self.block is None:
            return b""
        out = _sse("content_block_stop", {"type": "content_block_stop", "index": self.block})
        self.block = None
        return out

    def text(self, delta: str) -> bytes:
        out = b"" if self.block_kind == "text" and self.block is not None else self._open({"type": "text", "text": ""}, "text")
        return out + _sse(
            "content_block_delta", {"type": "content_block_delta", "index": self.block, "delta": {"type": "text_delta", "text": delta}}
        )

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        if index not in self.calls:
            block = {"type": "tool_use", "id": call_id or f"toolu_{self.request_id[4:]}_{index}", "name": name or "", "input": {}}
            out = self._open(block, "tool_use")
            self.calls[index] = self.block
        position = self.calls[index]
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out += _sse("content_block_delta", {"type": "content_block_delta", "index": position, "delta": delta})
        return out

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        if error is not None:
            return self._close() + _sse("error", error_payload(error, self.request_id))
        delta = {"stop_reason": STOP_REASONS.get(self.finish_reason or "stop", "end_turn"), "stop_sequence": None}
        return (
            self._close()
            + _sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage_block(*usage)})
            + _sse("message_stop", {"type": "message_stop"})
        )


def relay(call: Call, route, request_id: str) -> MessagesRelay:
    return MessagesRelay(call, route, request_id)


SHAPE = Shape(
    endpoint="messages",
    upstream_path="/chat/completions",
    credential=credential,
    parse=parse,
    respond=respond,
    usage=chat.usage,
    estimate_completion=chat.estimate_completion,
    relay=relay,
    error_body=error_body,
    count=chat.count,  # the translated body is a chat body: counted like one, with the route's tokenizer
)
