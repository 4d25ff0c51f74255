"""The Responses API through the live gateway with the real openai SDK: translated to chat
completions (plain, streamed, tools), passed through for upstreams that serve it, limited and
metered like chat completions."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from gateway.errors import GatewayError
from gateway.shapes import Call, responses
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

ANSWER = "Hello! I am the Gatehouse demo model. You said: Say hi"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.url + "/v1", max_retries=0, timeout=20)


def test_plain_and_streamed_responses_match_and_are_metered_as_the_client_saw(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment])
    client = sdk(gateway, plaintext)

    plain = client.responses.create(model=deployment.model_id, instructions="Be brief.", input="Say hi", max_output_tokens=100)
    assert plain.output_text == ANSWER
    assert plain.status == "completed" and plain.model == deployment.model_id and plain.id.startswith("resp_")
    # "Be brief." + "Say hi", and the 14-token reply, by the demo tokenizer
    assert (plain.usage.input_tokens, plain.usage.output_tokens) == (5, 14)

    kinds, text, final = [], "", None
    for event in client.responses.create(model=deployment.model_id, instructions="Be brief.", input="Say hi", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and text == ANSWER
    assert final.output_text == ANSWER and final.usage.total_tokens == plain.usage.total_tokens

    # The SDK's stream helper rebuilds the response from the events: they must be consistent.
    with client.responses.stream(model=deployment.model_id, input="Say hi") as stream:
        helped = stream.get_final_response()
    assert helped.output_text == ANSWER

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.streamed, e.estimated, e.status_code) for e in events] == [
        ("responses", False, False, 200),
        ("responses", True, False, 200),
        ("responses", True, False, 200),
    ]
    assert (events[0].prompt_tokens, events[0].completion_tokens) == (5, 14)
    assert events[1].total_tokens == final.usage.total_tokens
    assert events[2].total_tokens == helped.usage.total_tokens


def test_function_calls_round_trip_through_responses(world, deployment, gateway):
    _, plaintext = make_key(world.org, deployments=[deployment])
    client = sdk(gateway, plaintext)
    first = client.responses.create(model=deployment.model_id, input="Weather in Paris?", tools=[WEATHER])
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}

    second = client.responses.create(
        model=deployment.model_id,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    assert second.output_text.startswith("The tool returned: sunny")

    streamed = []
    for event in client.responses.create(model=deployment.model_id, input="Weather in Paris?", tools=[WEATHER], stream=True):
        if event.type == "response.output_item.done":
            streamed.append(event.item)
    assert [(i.type, i.name, json.loads(i.arguments)) for i in streamed] == [("function_call", "get_weather", {"city": "Paris"})]


def test_previous_response_id_and_builtin_tools_get_a_clear_400(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment])
    client = sdk(gateway, plaintext)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=deployment.model_id, input="more", previous_response_id="resp_123")
    assert caught.value.code == "unsupported_parameter" and "does not store responses" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=deployment.model_id, input="x", tools=[{"type": "web_search"}])
    assert "only function tools" in caught.value.message
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, "gh_live_" + "x" * 40).responses.create(model=deployment.model_id, input="x")
    # Refusals are on the record for the key, under the endpoint that was called, with no tokens.
    refused = UsageEvent.objects.filter(api_key=key)
    assert [(e.endpoint, e.status_code, e.total_tokens) for e in refused] == [("responses", 400, 0)] * 2


def test_responses_respect_the_tpm_limit(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment], tpm_limit=60)
    client = sdk(gateway, plaintext)
    client.responses.create(model=deployment.model_id, input="Say hi", max_output_tokens=40)  # settles to 17 of 60
    # What is left of the minute caps the answer (sent upstream as max_tokens) instead of refusing it.
    raw = client.responses.with_raw_response.create(model=deployment.model_id, input="Say hi", max_output_tokens=50)
    assert int(raw.headers["x-gatehouse-max-tokens-capped"]) < 50
    assert raw.parse().output_text == ANSWER
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=deployment.model_id, input="x" * 78)  # ~31 prompt tokens: no room left for an answer
    assert UsageEvent.objects.filter(api_key=key, status_code=200, endpoint="responses").count() == 2


def test_passthrough_deployment_sends_responses_to_the_upstream_unchanged(world, demo, gateway):
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", responses_passthrough=True
    )
    key, plaintext = make_key(world.org, deployments=[deployment])
    client = sdk(gateway, plaintext)
    plain = client.responses.create(model=deployment.model_id, input="Say hi")
    assert plain.output_text == ANSWER and plain.model == deployment.model_id
    assert plain.id.startswith("resp_demo")  # the upstream's own id: nothing was translated

    text, final = "", None
    for event in client.responses.create(model=deployment.model_id, input="Say hi", stream=True):
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    assert text == ANSWER and final.model == deployment.model_id
    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.estimated, e.total_tokens) for e in events] == [
        ("responses", False, plain.usage.total_tokens),
        ("responses", False, final.usage.total_tokens),
    ]


def test_raw_event_stream_is_server_sent_events_with_names(world, deployment, gateway):
    _, plaintext = make_key(world.org, deployments=[deployment])
    with httpx.stream(
        "POST",
        gateway.url + "/v1/responses",
        json={"model": deployment.model_id, "input": "Say hi", "stream": True},
        headers={"authorization": f"Bearer {plaintext}"},
    ) as response:
        body = response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert "[DONE]" not in body


# ---- translation tables (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "body, messages",
    [
        ({"model": "m", "input": "hi"}, [{"role": "user", "content": "hi"}]),
        (
            {"model": "m", "input": "hi", "instructions": "Be brief."},
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        ),
        (
            {
                "model": "m",
                "input": [{"role": "developer", "content": [{"type": "input_text", "text": "rules"}]}, {"role": "user", "content": "q"}],
            },
            [{"role": "system", "content": "rules"}, {"role": "user", "content": "q"}],
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:x"}]}]},
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:x", "detail": "auto"}}]}],
        ),
        (
            {
                "model": "m",
                "input": [
                    {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                    {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "ok"},
                ],
            },
            [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
        ),
    ],
)
def test_input_becomes_chat_messages(body, messages):
    assert responses.SHAPE.parse(body, True).body["messages"] == messages


def test_request_fields_map_to_chat_fields():
    call = responses.SHAPE.parse(
        {
            "model": "m",
            "input": "x",
            "max_output_tokens": 64,
            "temperature": 0.5,
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True}},
            "stream": True,
        },
        True,
    )
    assert call.body["max_tokens"] == 64 and call.completion_budget == 64 and call.stream
    assert call.body["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters")}}]
    assert call.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert call.body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "m", "input": "x", "background": True}, "background"),
        ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "input": "x", "tools": [{"type": "file_search"}]}, "tools.[0]"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input.[0].role"),
        ({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}, "input.[0].type"),
    ],
)
def test_bad_bodies_name_the_parameter(body, param):
    with pytest.raises(GatewayError) as caught:
        responses.SHAPE.parse(body, True)
    assert (caught.value.status, caught.value.param) == (400, param)


def test_chat_answer_becomes_a_response_object():
    call = Call(body={}, model="m", prompt_estimate=3, extra={"request": {"model": "m", "input": "x"}})
    data = {
        "created": 1700000000,
        "choices": [
            {
                "message": {"content": "Hi", "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}]},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }
    out = json.loads(responses.SHAPE.respond(data, call, "client-model", "req_abc"))
    assert out["id"] == "resp_abc" and out["model"] == "client-model" and out["status"] == "incomplete"
    assert [i["type"] for i in out["output"]] == ["message", "function_call"]
    assert out["output"][0]["content"][0]["text"] == "Hi" and out["output"][1]["call_id"] == "call_1"
    assert (out["usage"]["input_tokens"], out["usage"]["output_tokens"], out["usage"]["total_tokens"]) == (4, 2, 6)
