"""The completion cap on every API shape that generates text, streamed and not: a limited key's
request is held to what admission reserved through the shape's own cap field (chat and completions
`max_tokens`, Responses `max_output_tokens`, Messages `max_tokens`, DashScope `parameters.max_tokens`),
said in `x-gatehouse-max-tokens-capped`, against an upstream that writes 1,500 tokens unless capped
(live gateway, demo model, PostgreSQL, Redis)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from tests.test_gateway_shapes_limits import request
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

CAPPED = "x-gatehouse-max-tokens-capped"
LIMIT = 200
ASKED = 1000


def output_tokens(shape: str, stream: bool, response: httpx.Response) -> int:
    """Completion tokens as the client was told them, in that API's own usage fields."""
    if not stream:
        usage = response.json()["usage"]
        return usage["completion_tokens"] if shape in ("chat", "completions") else usage["output_tokens"]
    datas = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    if shape in ("chat", "completions"):
        return next(d["usage"] for d in reversed(datas) if d.get("usage"))["completion_tokens"]
    if shape == "responses":
        # Stopped by the cap, a Responses stream ends with response.incomplete, as OpenAI's does.
        return next(d["response"]["usage"] for d in datas if d["type"] in ("response.completed", "response.incomplete"))["output_tokens"]
    if shape == "messages":
        return next(d["usage"] for d in datas if d["type"] == "message_delta")["output_tokens"]
    return datas[-1]["usage"]["output_tokens"]


def ask_for(shape: str, body: dict, tokens: int) -> dict:
    if shape == "responses":
        body["max_output_tokens"] = tokens
    elif shape == "dashscope":
        body["parameters"]["max_tokens"] = tokens
    else:
        body["max_tokens"] = tokens
    return body


CASES = [(shape, stream) for shape in ("chat", "completions", "responses", "messages", "dashscope") for stream in (False, True)]


@pytest.mark.parametrize("shape, stream", CASES, ids=[f"{s}-{'stream' if t else 'once'}" for s, t in CASES])
def test_each_shape_is_capped_to_what_the_key_has_left(world, demo, gateway, shape, stream):
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo+reply_tokens=1500"
    )
    key, plaintext = make_key(world.org, deployments=[deployment], yearly_token_limit=LIMIT)
    auth = {"x-api-key": plaintext} if shape == "messages" else {"authorization": f"Bearer {plaintext}"}
    path, body, headers = request(shape, deployment.model_id, "Write a long story.", stream)

    response = httpx.post(gateway.url + path, json=ask_for(shape, body, ASKED), headers={**auth, **headers}, timeout=30)

    assert response.status_code == 200, response.text[:500]
    cap = int(response.headers[CAPPED])
    assert 0 < cap < LIMIT
    assert output_tokens(shape, stream, response) == cap  # the upstream stopped at the cap, not at 1,500
    [event] = UsageEvent.objects.filter(api_key=key)
    assert (event.completion_tokens, event.streamed) == (cap, stream)
    assert event.total_tokens <= LIMIT


def test_a_request_that_fits_keeps_its_own_cap_on_every_shape(world, demo, gateway):
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo+reply_tokens=1500"
    )
    _, plaintext = make_key(world.org, deployments=[deployment], yearly_token_limit=100_000)
    for shape in ("chat", "completions", "responses", "messages", "dashscope"):
        auth = {"x-api-key": plaintext} if shape == "messages" else {"authorization": f"Bearer {plaintext}"}
        path, body, headers = request(shape, deployment.model_id, "Write a long story.", False)
        response = httpx.post(gateway.url + path, json=ask_for(shape, body, 30), headers={**auth, **headers}, timeout=30)
        assert response.status_code == 200, (shape, response.text[:300])
        assert CAPPED not in response.headers
        assert output_tokens(shape, False, response) == 30, shape
