"""OpenAI Responses (`POST /v1/responses`) translated to chat completions on the upstream.

Request: `instructions` → a system message; `input` as a string (one user message) or items
(messages with text/image parts, `function_call`, `function_call_output`); function `tools` and
`tool_choice`; `max_output_tokens` → `max_tokens`; `text.format` → `response_format`;
`temperature`, `top_p`, `parallel_tool_calls`, `metadata`, `user` as they are.
`previous_response_id` (and `background`, `conversation`) need stored responses, which this
gateway does not keep: a clear 400. Built-in tools (web search, file search, ...) are refused.

Answer: a Response object (`output` message / function_call items, `usage` with input/output
tokens); streamed, the gateway writes the Responses event stream itself: response.created,
response.in_progress, output_item.added, content_part.added, output_text.delta, ..., and
response.completed carrying the usage that was metered.

A deployment whose upstream serves /v1/responses itself (`responses_passthrough`) gets the body
unchanged through PASSTHROUGH instead.
"""

from __future__ import annotations

import time

import orjson

from gateway.errors import GatewayError, bad_request
from gateway.proxy import SseRelay
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import boolean, json_object, model, number, positive_int
from gateway.shapes.streaming import TranslatingRelay
from gateway.tokenizer import count_chat_async, estimate_prompt_tokens
from gateway.validation import TOOL_NAME

STORED_ONLY = {
    "previous_response_id": "`previous_response_id` is not supported: this gateway does not store responses. "
    "Send the whole conversation in `input` instead.",
    "conversation": "`conversation` is not supported: this gateway does not store conversations. Send the whole conversation in `input`.",
    "background": "Background responses are not supported by this gateway; call without `background`.",
}
PASSED = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "seed", "stop")


def _text_of(content, where: str) -> str | list:
    """Message content: a string, or parts (input_text/output_text → text, input_image → image_url)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where}.content must be a string or an array of content parts.", param=f"{where}.content")
    parts, images = [], False
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}})
            images = True
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            parts.append({"type": "text", "text": part["refusal"]})
        else:
            raise bad_request(
                f"{where}.content[{j}] has an unsupported type {str(kind)[:40]!r} (input_text, output_text and input_image are supported).",
                param=f"{where}.content.[{j}]",
            )
    return parts if images else "".join(p["text"] for p in parts)


def input_messages(value) -> list[dict]:
    """Responses `input` → chat messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("`input` must be a string or a non-empty array of input items.", param="input", code="missing_required_parameter")
    messages: list[dict] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad_request(f"{where} must be an object.", param=f"input.[{i}]")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad_request(f"{where}.role must be user, assistant, system or developer.", param=f"input.[{i}].role")
            messages.append({"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)})
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise bad_request(f"{where} (function_call) needs string `call_id`, `name` and `arguments`.", param=f"input.[{i}]")
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") is not None and not last.get("content"):
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str):
                raise bad_request(f"{where} (function_call_output) needs a string `call_id`.", param=f"input.[{i}].call_id")
            text = output if isinstance(output, str) else _text_of(output, where) if isinstance(output, list) else None
            if not isinstance(text, str):
                raise bad_request(f"{where}.output must be a string or text parts.", param=f"input.[{i}].output")
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        elif kind == "reasoning":
            continue  # a model's earlier reasoning: chat completions have no place for it
        else:
            raise bad_request(f"{where} has an unsupported type {str(kind)[:40]!r}.", param=f"input.[{i}].type")
    return messages


def chat_tools(tools) -> list[dict]:
    if not isinstance(tools, list):
        raise bad_request("`tools` must be an array.", param="tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise bad_request(
                f"tools[{i}]: only function tools are supported by this gateway (got {str(kind)[:40]!r}).", param=f"tools.[{i}]"
            )
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            raise bad_request(f"tools[{i}].name must be 1-64 letters, digits, underscores or hyphens.", param=f"tools.[{i}].name")
        function = {"name": tool["name"]}
        for field in ("description", "parameters", "strict"):
            if tool.get(field) is not None:
                function[field] = tool[field]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice):
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad_request('`tool_choice` must be "auto", "none", "required" or {"type": "function", "name": ...}.', param="tool_choice")


def response_format(text) -> dict | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None or not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise bad_request("`text.format` must be text, json_object or json_schema (with a `schema`).", param="text.format")


def validate(body: dict) -> None:
    for name, message in STORED_ONLY.items():
        if body.get(name):
            raise bad_request(message, param=name, code="unsupported_parameter")
    if "input" not in body:
        raise bad_request("You must provide `input`.", param="input", code="missing_required_parameter")
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise bad_request("`instructions` must be a string.", param="instructions")
    value = body.get("temperature")
    if value is not None and not (number(value) and 0 <= value <= 2):
        raise bad_request("`temperature` must be a number in [0, 2].", param="temperature")
    value = body.get("top_p")
    if value is not None and not (number(value) and 0 <= value <= 1):
        raise bad_request("`top_p` must be a number in [0, 1].", param="top_p")
    positive_int(body, "max_output_tokens")
    boolean(body, "stream")


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    validate(body)
    messages = input_messages(body["input"])
    if body.get("instructions"):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    upstream: dict = {"messages": messages}
    for field in PASSED:
        if body.get(field) is not None:
            upstream[field] = body[field]
    if body.get("tools"):
        upstream["tools"] = chat_tools(body["tools"])
    if body.get("tool_choice") is not None:
        upstream["tool_choice"] = chat_tool_choice(body["tool_choice"])
    fmt = response_format(body.get("text"))
    if fmt is not None:
        upstream["response_format"] = fmt
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort:
        upstream["reasoning_effort"] = effort
    if body.get("max_output_tokens"):
        upstream["max_tokens"] = body["max_output_tokens"]
    stream = bool(body.get("stream"))
    if stream:
        upstream["stream"] = True
    return Call(
        body=upstream,
        model=name,
        stream=stream,
        prompt_estimate=estimate_prompt_tokens(messages),
        completion_budget=body.get("max_output_tokens"),
        extra={"request": body},
    )


# ---- answers ---------------------------------------------------------------------------------


def usage_block(prompt: int, completion: int) -> dict:
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(request: dict, *, response_id: str, model: str, created: float, status: str, output: list, usage: dict | None) -> dict:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(created),
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(call_id: str, name: str, arguments: str, status: str = "completed") -> dict:
    return {
        "type": "function_call",
        "id": "fc_" + call_id.removeprefix("call_"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def ids(request_id: str) -> tuple[str, str]:
    suffix = request_id.removeprefix("req_")
    return "resp_" + suffix, "msg_" + suffix


def respond(data: dict, call: Call, model: str, request_id: str) -> bytes:
    response_id, message_id = ids(request_id)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    output = []
    if message.get("content"):
        output.append(message_item(message_id, message["content"]))
    for tool_call in message.get("tool_calls") or ():
        function = tool_call.get("function") or {}
        output.append(
            call_item(tool_call.get("id") or "call_" + response_id[5:], function.get("name") or "", function.get("arguments") or "")
        )
    counted = chat.usage(data)
    prompt, completion = counted if counted is not None else (call.prompt_estimate, chat.estimate_completion(data))
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    return orjson.dumps(
        response_object(
            call.extra["request"],
            response_id=response_id,
            model=model,
            created=data.get("created") or time.time(),
            status=status,
            output=output,
            usage=usage_block(prompt, completion),
        )
    )


def error_event(error: GatewayError, sequence: int) -> bytes:
    return _sse("error", {"type": "error", "code": error.code, "message": error.message, "param": error.param, "sequence_number": sequence})


def _sse(kind: str, payload: dict) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class ResponsesRelay(TranslatingRelay):
    """Chat-completion chunks → the Responses event stream."""

    def __init__(self, call: Call, route, request_id: str):
        super().__init__(client_model=route.name, upstream_model=route.upstream_model)
        self.request = call.extra["request"]
        self.response_id, self.message_id = ids(request_id)
        self.created = time.time()
        self.sequence = 0
        self.output: list[dict] = []  # items in output order (message text and calls accumulate here)
        self.message_index: int | None = None
        self.calls: dict[int, int] = {}  # upstream tool-call index → output index

    def event(self, kind: str, **payload) -> bytes:
        out = _sse(kind, {"type": kind, **payload, "sequence_number": self.sequence})
        self.sequence += 1
        return out

    def snapshot(self, status: str, usage: dict | None = None) -> dict:
        return response_object(
            self.request,
            response_id=self.response_id,
            model=self.client_model,
            created=self.created,
            status=status,
            output=self.output,
            usage=usage,
        )

    def opening(self) -> bytes:
        return self.event("response.created", response=self.snapshot("in_progress")) + self.event(
            "response.in_progress", response=self.snapshot("in_progress")
        )

    def text(self, delta: str) -> bytes:
        out = b""
        if self.message_index is None:
            self.message_index = len(self.output)
            item = message_item(self.message_id, "", "in_progress")
            item["content"] = []
            out += self.event("response.output_item.added", output_index=self.message_index, item=dict(item, content=[]))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            self.output.append(item)
            out += self.event(
                "response.content_part.added", item_id=self.message_id, output_index=self.message_index, content_index=0, part=part
            )
        self.output[self.message_index]["content"][0]["text"] += delta
        return out + self.event(
            "response.output_text.delta",
            item_id=self.message_id,
            output_index=self.message_index,
            content_index=0,
            delta=delta,
            logprobs=[],
        )

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        out = b""
        position = self.calls.get(index)
        if position is None:
            position = self.calls[index] = len(self.output)
            item = call_item(call_id or f"call_{self.response_id[5:]}_{index}", name or "", "", "in_progress")
            self.output.append(item)
            out += self.event("response.output_item.added", output_index=position, item=dict(item))
        item = self.output[position]
        if arguments:
            item["arguments"] += arguments
            out += self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=position, delta=arguments)
        return out

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        if error is not None:
            failed = self.snapshot("failed")
            failed["error"] = {"code": error.code, "message": error.message}
            return error_event(error, self.sequence) + self._bump() + self.event("response.failed", response=failed)
        out = []
        for position, item in enumerate(self.output):
            if item["type"] == "message":
                part = item["content"][0]
                out.append(
                    self.event(
                        "response.output_text.done",
                        item_id=item["id"],
                        output_index=position,
                        content_index=0,
                        text=part["text"],
                        logprobs=[],
                    )
                )
                out.append(self.event("response.content_part.done", item_id=item["id"], output_index=position, content_index=0, part=part))
            else:
                out.append(
                    self.event(
                        "response.function_call_arguments.done",
                        item_id=item["id"],
                        output_index=position,
                        name=item["name"],
                        arguments=item["arguments"],
                    )
                )
            item["status"] = "completed"
            out.append(self.event("response.output_item.done", output_index=position, item=item))
        status = "incomplete" if self.finish_reason == "length" else "completed"
        final = self.snapshot(status, usage_block(*usage))
        out.append(self.event("response.incomplete" if status == "incomplete" else "response.completed", response=final))
        return b"".join(out)

    def _bump(self) -> bytes:
        self.sequence += 1
        return b""


def relay(call: Call, route, request_id: str) -> ResponsesRelay:
    return ResponsesRelay(call, route, request_id)


def error_body(error: GatewayError, request_id: str) -> tuple[int, bytes]:
    return error.status, error.body()


# ---- pass-through to an upstream that serves /v1/responses --------------------------------------


def passthrough_parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    validate(body)
    messages = input_messages(body["input"])
    if body.get("instructions"):
        messages.insert(0, {"role": "system", "content": body["instructions"]})
    return Call(
        body=body,
        model=name,
        stream=bool(body.get("stream")),
        prompt_estimate=estimate_prompt_tokens(messages),
        completion_budget=body.get("max_output_tokens"),
        extra={"request": body, "messages": messages},
    )


async def passthrough_count(call: Call, counter) -> int:
    """Counted like the chat body it would translate to: the input items and the tool definitions."""
    return await count_chat_async({"messages": call.extra["messages"], "tools": call.body.get("tools")}, counter)


def passthrough_usage(data: dict) -> tuple[int, int] | None:
    block = data.get("usage")
    if isinstance(block, dict) and isinstance(block.get("input_tokens"), int) and isinstance(block.get("output_tokens"), int):
        return block["input_tokens"], block["output_tokens"]
    return None


def passthrough_estimate(data: dict) -> int:
    text = "".join(
        part.get("text") or ""
        for item in data.get("output") or ()
        if isinstance(item, dict)
        for part in item.get("content") or ()
        if isinstance(part, dict)
    )
    return max(1, -(-len(text) // 4))


class PassthroughRelay(SseRelay):
    """Responses events from the upstream, passed on; usage read from the final response, model renamed."""

    TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")

    def _event(self, event: bytes) -> bytes | None:
        data = None
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:].strip()
        if data is None:
            return None
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        kind = str(payload.get("type") or "").encode()
        if kind == b"response.output_text.delta" and isinstance(payload.get("delta"), str):
            self.state.delivered_chars += len(payload["delta"])
            self.state.delivered_chunks += 1
        response = payload.get("response")
        if isinstance(response, dict):
            if kind in self.TERMINAL:
                self.state.saw_done = True
                usage = passthrough_usage(response)
                if usage is not None:
                    self.state.usage = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
            if self.rewrite and "model" in response:
                response["model"] = self.client_model
                return b"event: " + kind + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
        return event + b"\n\n"

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        return error_event(error, 0) if error is not None else b""


def passthrough_relay(call: Call, route, request_id: str) -> PassthroughRelay:
    return PassthroughRelay(client_model=route.name, upstream_model=route.upstream_model, client_wants_usage=True)


PASSTHROUGH = Shape(
    endpoint="responses",
    upstream_path="/responses",
    credential=chat.credential,
    parse=passthrough_parse,
    respond=chat.respond,
    usage=passthrough_usage,
    estimate_completion=passthrough_estimate,
    relay=passthrough_relay,
    error_body=error_body,
    cap_param="max_output_tokens",
    stream_usage_option=False,
    count=passthrough_count,
)

SHAPE = Shape(
    endpoint="responses",
    upstream_path="/chat/completions",
    credential=chat.credential,
    parse=parse,
    respond=respond,
    usage=chat.usage,
    estimate_completion=chat.estimate_completion,
    relay=relay,
    error_body=error_body,
    passthrough=PASSTHROUGH,
    count=chat.count,  # the translated body is a chat body: counted like one, with the route's tokenizer
)
