"""Request validation for chat completions, per the OpenAI-compatible parameter table.

Unknown OpenAI fields pass through to the upstream untouched; fields that would let a caller
steer where or how we call the upstream are refused.
"""

from __future__ import annotations

import re

from gateway.errors import bad_request

# Fields some SDKs/proxies honour to redirect a call or add credentials: never from a client.
REFUSED_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "headers",
        "extra_headers",
        "custom_llm_provider",
        "organization",
        "user_api_key",
        "upstream_url",
        "endpoint",
        "proxy",
        "extra_query",
    }
)
TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# OpenAI's own limits for function tools: 128 functions, 5,000 schema properties, nesting depth 10
# (we allow more depth: the limit is there to stop pathological schemas, not to mirror one vendor).
MAX_TOOLS = 128
MAX_SCHEMA_PROPERTIES = 5_000
MAX_SCHEMA_DEPTH = 32


def _check_schema_size(schema: dict, param: str) -> None:
    """Refuse a tool schema with more properties or nesting than any model can use (iterative:
    a deeply nested body cannot exhaust the stack)."""
    properties, stack = 0, [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise bad_request(f"The schema in {param} is nested deeper than {MAX_SCHEMA_DEPTH} levels.", param=param)
        if isinstance(node, dict):
            fields = node.get("properties")
            if isinstance(fields, dict):
                properties += len(fields)
                if properties > MAX_SCHEMA_PROPERTIES:
                    raise bad_request(
                        f"The schema in {param} has more than {MAX_SCHEMA_PROPERTIES} properties; simplify the tool.", param=param
                    )
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_chat(body: object, *, model_required: bool = True) -> dict:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    for name in REFUSED_FIELDS.intersection(body):
        raise bad_request(f"The field `{name}` is not accepted by this gateway.", param=name, code="unsupported_parameter")

    model = body.get("model")
    if model_required or model is not None:
        if not isinstance(model, str) or not model.strip():
            raise bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("`messages` must be a non-empty array of message objects.", param="messages", code="missing_required_parameter")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string `role`.", param=f"messages.[{i}]")

    value = body.get("temperature")
    if value is not None and not (_number(value) and 0 <= value < 2):
        raise bad_request("`temperature` must be a number in [0, 2).", param="temperature")
    value = body.get("top_p")
    if value is not None and not (_number(value) and 0 < value <= 1):
        raise bad_request("`top_p` must be a number in (0, 1].", param="top_p")
    for name in ("presence_penalty", "frequency_penalty"):
        value = body.get(name)
        if value is not None and not (_number(value) and -2 <= value <= 2):
            raise bad_request(f"`{name}` must be a number in [-2, 2].", param=name)
    value = body.get("n")
    if value is not None and not (_integer(value) and 1 <= value <= 4):
        raise bad_request("`n` must be an integer from 1 to 4.", param="n")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not (_integer(value) and value > 0):
            raise bad_request(f"`{name}` must be a positive integer.", param=name)
    value = body.get("seed")
    if value is not None and not _integer(value):
        raise bad_request("`seed` must be an integer.", param="seed")
    value = body.get("stop")
    if value is not None and not (
        isinstance(value, str)
        or (isinstance(value, list) and len(value) <= 4 and (all(isinstance(v, str) for v in value) or all(_integer(v) for v in value)))
    ):
        raise bad_request("`stop` must be a string or an array of up to 4 strings (or token ids).", param="stop")
    value = body.get("stream")
    if value is not None and not isinstance(value, bool):
        raise bad_request("`stream` must be a boolean.", param="stream")
    value = body.get("stream_options")
    if value is not None:
        if not isinstance(value, dict):
            raise bad_request("`stream_options` must be an object.", param="stream_options")
        if not body.get("stream"):
            raise bad_request("`stream_options` is only allowed when `stream` is true.", param="stream_options")
        if "include_usage" in value and not isinstance(value["include_usage"], bool):
            raise bad_request("`stream_options.include_usage` must be a boolean.", param="stream_options.include_usage")
    value = body.get("tools")
    if value is not None:
        if not isinstance(value, list):
            raise bad_request("`tools` must be an array.", param="tools")
        if len(value) > MAX_TOOLS:
            raise bad_request(f"`tools` may list at most {MAX_TOOLS} functions; this request has {len(value)}.", param="tools")
        for i, tool in enumerate(value):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or tool.get("type") != "function":
                raise bad_request(f'tools[{i}] must be {{"type": "function", "function": {{...}}}}.', param=f"tools.[{i}]")
            if not isinstance(function.get("name"), str) or not TOOL_NAME.match(function["name"]):
                raise bad_request(
                    f"tools[{i}].function.name must be 1-64 letters, digits, underscores or hyphens.", param=f"tools.[{i}].function.name"
                )
            if "parameters" in function and not isinstance(function["parameters"], dict):
                raise bad_request(f"tools[{i}].function.parameters must be a JSON Schema object.", param=f"tools.[{i}].function.parameters")
            if "parameters" in function:
                _check_schema_size(function["parameters"], f"tools.[{i}].function.parameters")
    return body
