"""Anthropic Messages through the live gateway with the real anthropic SDK: translated to chat
completions (plain, streamed, tools), Anthropic errors mapped to the SDK's exceptions, limits and
metering as for chat completions."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from gateway.errors import GatewayError
from gateway.shapes import Call, messages
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

ANSWER = "Hello! I am the Gatehouse demo model. You said: Say hi"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def client(gateway, key: str, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=key, base_url=gateway.url, max_retries=0, timeout=20, **kwargs)


def test_plain_and_streamed_messages_are_metered_as_the_client_saw(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment])
    claude = client(gateway, plaintext)

    plain = claude.messages.create(
        model=deployment.model_id, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Say hi"}]
    )
    assert plain.content[0].text == ANSWER and plain.stop_reason == "end_turn" and plain.model == deployment.model_id
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (5, 14)

    with claude.messages.stream(
        model=deployment.model_id, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Say hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER and final.content[0].text == ANSWER
    assert (final.usage.input_tokens, final.usage.output_tokens) == (5, 14)

    # A bearer token (ANTHROPIC_AUTH_TOKEN) works as well as x-api-key.
    bearer = anthropic.Anthropic(auth_token=plaintext, base_url=gateway.url, max_retries=0)
    assert bearer.messages.create(model=deployment.model_id, max_tokens=20, messages=[{"role": "user", "content": "Say hi"}]).content

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.streamed, e.estimated, e.prompt_tokens, e.completion_tokens) for e in events] == [
        ("messages", False, False, 5, 14),
        ("messages", True, False, 5, 14),
        ("messages", False, False, 2, 14),
    ]


def test_tool_use_round_trip(world, deployment, gateway):
    _, plaintext = make_key(world.org, deployments=[deployment])
    claude = client(gateway, plaintext)
    question = {"role": "user", "content": "Weather in Paris?"}
    first = claude.messages.create(model=deployment.model_id, max_tokens=100, tools=[WEATHER], messages=[question])
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    assert (use.name, use.input) == ("get_weather", {"city": "Paris"})

    second = claude.messages.create(
        model=deployment.model_id,
        max_tokens=100,
        tools=[WEATHER],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]},
        ],
    )
    assert second.content[0].text.startswith("The tool returned: sunny")

    with claude.messages.stream(model=deployment.model_id, max_tokens=100, tools=[WEATHER], messages=[question]) as stream:
        streamed = stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in streamed.content] == [("tool_use", "get_weather", {"city": "Paris"})]
    assert streamed.stop_reason == "tool_use"


def test_errors_map_to_the_anthropic_sdk_exceptions(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment], tpm_limit=40)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client(gateway, "gh_live_" + "x" * 40).messages.create(
            model=deployment.model_id, max_tokens=10, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error" and caught.value.body["type"] == "error"
    claude = client(gateway, plaintext)
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(
            model=deployment.model_id, max_tokens=10, messages=[{"role": "user", "content": "x"}], extra_body={"temperature": 1.5}
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    # The TPM limit: 40 a minute; ~35 tokens of prompt leaves no room for an answer.
    with pytest.raises(anthropic.RateLimitError) as caught:
        claude.messages.create(model=deployment.model_id, max_tokens=10, messages=[{"role": "user", "content": "y" * 90}])
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    missing = httpx.post(gateway.url + "/v1/messages", json={"model": deployment.model_id, "max_tokens": 5, "messages": []})
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]["message"]
    no_max = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": deployment.model_id, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": plaintext, "anthropic-version": "2023-06-01"},
    )
    assert no_max.status_code == 400 and "max_tokens" in no_max.json()["error"]["message"]
    assert not UsageEvent.objects.filter(api_key=key, status_code=200).exists()


def test_yearly_limit_holds_for_streamed_messages(world, deployment, gateway):
    # "Say hi" counts 10 prompt tokens at admission (the chat template included); each call uses ~16.
    key, plaintext = make_key(world.org, deployments=[deployment], yearly_token_limit=50)
    claude = client(gateway, plaintext)
    seen = 0
    for _ in range(2):
        with claude.messages.stream(model=deployment.model_id, max_tokens=20, messages=[{"role": "user", "content": "Say hi"}]) as stream:
            usage = stream.get_final_message().usage
        seen += usage.input_tokens + usage.output_tokens
    with pytest.raises(anthropic.RateLimitError):
        with claude.messages.stream(model=deployment.model_id, max_tokens=20, messages=[{"role": "user", "content": "Say hi"}]) as stream:
            stream.get_final_message()
    assert sum(e.total_tokens for e in UsageEvent.objects.filter(api_key=key)) == seen <= 50


# ---- translation tables (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, expected",
    [
        (
            {"system": "S", "messages": [{"role": "user", "content": "hi"}]},
            [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}],
        ),
        (
            {
                "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}],
            },
            [{"role": "system", "content": "AB"}, {"role": "user", "content": "q"}],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "w?"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "text", "text": "Let me look."},
                            {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}},
                        ],
                    },
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "ok"}]},
                            {"type": "text", "text": "thanks"},
                        ],
                    },
                ]
            },
            [
                {"role": "user", "content": "w?"},
                {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
                },
                {"role": "tool", "tool_call_id": "t1", "content": "ok"},
                {"role": "user", "content": "thanks"},
            ],
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}],
                    }
                ]
            },
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAA"}}]}],
        ),
    ],
)
def test_messages_become_chat_messages(body, expected):
    assert messages.SHAPE.parse({"model": "m", "max_tokens": 5, **body}, True).body["messages"] == expected


def test_request_fields_map_to_chat_fields():
    call = messages.SHAPE.parse(
        {
            "model": "m",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "x"}],
            "stop_sequences": ["END"],
            "tools": [WEATHER],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "metadata": {"user_id": "u1"},
            "stream": True,
        },
        True,
    )
    assert call.body["max_tokens"] == 64 and call.completion_budget == 64 and call.stream and call.body["stop"] == ["END"]
    assert call.body["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "parameters": WEATHER["input_schema"], "description": "Weather in a city."},
        }
    ]
    assert (call.body["tool_choice"], call.body["parallel_tool_calls"], call.body["user"]) == ("required", False, "u1")


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]}, "messages.0.content.0"),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search_20250305", "name": "w"}],
            },
            "tools.0",
        ),
    ],
)
def test_bad_bodies_name_the_parameter(body, param):
    with pytest.raises(GatewayError) as caught:
        messages.SHAPE.parse(body, True)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    "status, kind",
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (502, "api_error"),
    ],
)
def test_error_bodies_use_anthropic_types(status, kind):
    code, body = messages.SHAPE.error_body(GatewayError(status, "m", code="c"), "req_1")
    assert code == status and json.loads(body) == {"type": "error", "error": {"type": kind, "message": "m"}, "request_id": "req_1"}


def test_chat_answer_becomes_a_message():
    data = {
        "choices": [
            {
                "message": {"content": None, "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": '{"x": 2}'}}]},
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 3},
    }
    out = json.loads(messages.SHAPE.respond(data, Call(body={}, model="m"), "client", "req_9"))
    assert out["id"] == "msg_9" and out["stop_reason"] == "tool_use" and out["model"] == "client"
    assert out["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {"x": 2}}]
    assert (out["usage"]["input_tokens"], out["usage"]["output_tokens"]) == (4, 3)


def test_count_tokens_answers_for_a_model_in_scope_and_meters_nothing(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment])
    claude = client(gateway, plaintext)
    counted = claude.messages.count_tokens(model=deployment.model_id, system="Be brief.", messages=[{"role": "user", "content": "Say hi"}])
    expected = messages.SHAPE.parse(
        {"model": "m", "max_tokens": 1, "system": "Be brief.", "messages": [{"role": "user", "content": "Say hi"}]}, True
    ).prompt_estimate
    assert counted.input_tokens == expected  # what admission would reserve for the prompt
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="someone-elses-model", messages=[{"role": "user", "content": "x"}])
    assert not UsageEvent.objects.filter(api_key=key, status_code=200).exists()
