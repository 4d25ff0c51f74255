"""What admission counts as a request's prompt, seen through the live gateway on every shape: tool
definitions, tool calls and results and the text parts beside an image count, with the real
tokenizer (cl100k), not a characters-per-token guess.

The gateway says what it counted in a refusal ("… (N prompt tokens + …)"), so each request is sent
with a key allowed 1 token a minute: refused at admission, before any upstream, and N is read back.
A request with the tools, results and parts is compared with the same request without them.
"""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.tokenizer import default_counter
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

DASHSCOPE = "/api/v1/services/aigc/text-generation/generation"
QUESTION = "What should I pack for the trip?"
TOOL_DESCRIPTION = "Look up today's weather forecast for a city, with temperature and rain. " * 12
RESULT = "Sunny, 22 degrees Celsius, light wind from the west, no rain expected. " * 12
PART = "This photo shows the harbour of Lisbon at noon; the lighthouse is on the left. " * 12
ARGUMENTS = '{"city": "Lisbon"}'
IMAGE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
COUNTED = re.compile(r"\((\d+) prompt tokens")


def chat(model: str, full: bool) -> tuple[str, dict, dict]:
    if not full:
        return "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": QUESTION}]}, {}
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "text", "text": PART},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + IMAGE}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": RESULT},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": TOOL_DESCRIPTION, "parameters": SCHEMA}}]
    return "/v1/chat/completions", {"model": model, "messages": messages, "tools": tools}, {}


def responses(model: str, full: bool) -> tuple[str, dict, dict]:
    if not full:
        return "/v1/responses", {"model": model, "input": QUESTION}, {}
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": QUESTION},
                {"type": "input_text", "text": PART},
                {"type": "input_image", "image_url": "data:image/png;base64," + IMAGE},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": ARGUMENTS},
        {"type": "function_call_output", "call_id": "c1", "output": RESULT},
    ]
    tools = [{"type": "function", "name": "get_weather", "description": TOOL_DESCRIPTION, "parameters": SCHEMA}]
    return "/v1/responses", {"model": model, "input": items, "tools": tools}, {}


def messages(model: str, full: bool) -> tuple[str, dict, dict]:
    headers = {"anthropic-version": "2023-06-01"}
    if not full:
        return "/v1/messages", {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": QUESTION}]}, headers
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": QUESTION},
                {"type": "text", "text": PART},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": IMAGE}},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "c1", "name": "get_weather", "input": {"city": "Lisbon"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1", "content": [{"type": "text", "text": RESULT}]}]},
    ]
    tools = [{"name": "get_weather", "description": TOOL_DESCRIPTION, "input_schema": SCHEMA}]
    return "/v1/messages", {"model": model, "max_tokens": 100, "messages": history, "tools": tools}, headers


def dashscope(model: str, full: bool) -> tuple[str, dict, dict]:
    if not full:
        return (
            DASHSCOPE,
            {"model": model, "input": {"messages": [{"role": "user", "content": QUESTION}]}, "parameters": {"result_format": "message"}},
            {},
        )
    history = [
        {"role": "user", "content": [{"text": QUESTION}, {"text": PART}, {"image": "data:image/png;base64," + IMAGE}]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": RESULT},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": TOOL_DESCRIPTION, "parameters": SCHEMA}}]
    return DASHSCOPE, {"model": model, "input": {"messages": history}, "parameters": {"result_format": "message", "tools": tools}}, {}


def refusal_message(shape: str, response: httpx.Response) -> str:
    body = response.json()
    return body["message"] if shape == "dashscope" else body["error"]["message"]


@pytest.fixture
def counted(world, demo, gateway):
    """Send a request with a key allowed 1 token a minute; return the prompt tokens admission counted."""
    deployments = {}

    def send(shape: str, path: str, body: dict, headers: dict, kind: str = "chat") -> int:
        if kind not in deployments:
            deployments[kind] = make_deployment(
                world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind=kind
            )
        body = {**body, "model": deployments[kind].model_id}
        _, plaintext = make_key(world.org, deployments=[deployments[kind]], tpm_limit=1)
        auth = {"x-api-key": plaintext} if shape == "messages" else {"authorization": f"Bearer {plaintext}"}
        response = httpx.post(gateway.url + path, json=body, headers={**auth, **headers}, timeout=30)
        assert response.status_code == 429, response.text[:500]
        return int(COUNTED.search(refusal_message(shape, response)).group(1))

    return send


@pytest.mark.parametrize("shape, build", [("chat", chat), ("responses", responses), ("messages", messages), ("dashscope", dashscope)])
def test_tools_tool_results_and_text_parts_count_on_every_chat_shape(counted, shape, build):
    tokens = default_counter().count
    plain = counted(shape, *build("m", False))
    full = counted(shape, *build("m", True))

    assert plain >= tokens(QUESTION)
    # What the full request adds, at least: the tool's description, the tool's result, the text part
    # beside the image and the call's arguments, each as the tokenizer counts them.
    added = tokens(TOOL_DESCRIPTION) + tokens(RESULT) + tokens(PART) + tokens(ARGUMENTS)
    assert full - plain >= added, (plain, full, added)
    # Not a guess by characters: the base64 image is one fixed allowance, not its length in tokens.
    assert full - plain < added + tokens(IMAGE) + 200


CJK = "東京は日本の首都で、人口は約千四百万人です。" * 40  # far more tokens than 3 characters a token would say


@pytest.mark.parametrize(
    "shape, path, body, kind",
    [
        ("embeddings", "/v1/embeddings", {"input": [CJK, "def f(x):\n    return {'a': [x, x]}\n" * 20]}, "embedding"),
        ("completions", "/v1/completions", {"prompt": CJK, "max_tokens": 10}, "chat"),
        ("rerank", "/v1/rerank", {"query": CJK, "documents": ["Tokyo", {"text": CJK}]}, "rerank"),
    ],
)
def test_input_only_shapes_count_with_the_tokenizer(counted, shape, path, body, kind):
    tokens = default_counter().count
    got = counted(shape, path, body, {}, kind)
    if shape == "embeddings":
        assert got == sum(tokens(text) for text in body["input"])
    elif shape == "completions":
        assert got == tokens(CJK)
    else:  # the query beside each document, a separator per pair
        assert got == 2 * tokens(CJK) + tokens("Tokyo") + tokens(CJK) + 2
    assert got > len(CJK) // 3


def test_token_id_inputs_count_as_themselves(counted):
    assert counted("embeddings", "/v1/embeddings", {"input": [[1, 2, 3], [4, 5]]}, {}, "embedding") == 5
    assert counted("completions", "/v1/completions", {"prompt": [11, 12, 13, 14], "max_tokens": 10}, {}, "chat") == 4


def test_messages_count_tokens_answers_what_admission_counts(world, demo, gateway, counted):
    path, body, headers = messages("m", True)
    admitted = counted("messages", path, body, headers)
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    _, plaintext = make_key(world.org, deployments=[deployment])
    answer = httpx.post(
        gateway.url + "/v1/messages/count_tokens",
        json={**body, "model": deployment.model_id},
        headers={"x-api-key": plaintext, **headers},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"input_tokens": admitted}
