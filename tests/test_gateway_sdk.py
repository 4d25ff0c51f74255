"""The official openai SDK, unchanged, against a live gateway, demo model, PostgreSQL and Redis."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import httpx
import openai
import pytest
from django.utils import timezone

from deployments.models import DeploymentStatus, ModelGrant
from keys.models import ApiKey, ByokCredential, RouterProvider, RouterProviderGrant
from lib.crypto import encrypt
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, metric, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

QUESTION = "What is the capital of France?"
ANSWER = "Hello! I am the Gatehouse demo model. You said: What is the capital of France?"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.url + "/v1", max_retries=0, timeout=20)


def ask(client: openai.OpenAI, model: str, **kwargs):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": QUESTION}], **kwargs)


def test_non_streaming_call_returns_the_answer_and_writes_one_priced_usage_event(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True)
    raw = sdk(gateway, plaintext).chat.completions.with_raw_response.create(
        model=deployment.model_id, messages=[{"role": "user", "content": QUESTION}]
    )
    completion = raw.parse()

    assert completion.choices[0].message.content == ANSWER
    assert completion.model == deployment.model_id  # the name the client called, not the upstream's
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 19)
    request_id = raw.headers["x-request-id"]
    event = UsageEvent.objects.get()
    assert event.request_id == request_id
    assert (event.workspace_id, event.api_key_id, event.deployment_id) == (world.org.id, key.id, deployment.id)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (7, 19, 26)
    assert (event.status_code, event.estimated, event.streamed, event.aborted) == (200, False, False, False)
    # 7 × 0.50 + 19 × 1.50 per million
    assert event.cost == Decimal("0.000032000")
    assert str(event.input_price_per_million) == "0.500000"
    assert wait_for(lambda: ApiKey.objects.get(pk=key.pk).last_used_ip == "127.0.0.1")  # stamped off the hot path


def test_a_key_made_in_the_console_works_with_the_sdk_and_its_limits_apply(world, deployment, gateway, client_for):
    import re

    from django.urls import reverse

    page = client_for(world.developer).post(
        reverse("api_key_create", kwargs={"ws": "acme"}),
        {
            "name": "console-made",
            "deployments": [deployment.public_id],
            "tpm_limit": "100",
            "ip_allowlist": "127.0.0.0/8",
        },
        follow=True,
    )
    assert page.status_code == 200
    plaintext = re.search(r'data-testid="new-key">(gh_live_\w+)<', page.content.decode()).group(1)

    assert ask(sdk(gateway, plaintext), deployment.model_id, max_tokens=20).choices[0].message.content.startswith("Hello!")
    # More than its 100 tokens a minute allow: capped to what the minute has left, not refused...
    long = {"demo_reply_tokens": "500"}
    capped = ask(sdk(gateway, plaintext), deployment.model_id, max_tokens=500, metadata=long)
    assert capped.choices[0].finish_reason == "length"
    assert UsageEvent.objects.filter(api_key__name="console-made").count() == 2
    assert sum(e.total_tokens for e in UsageEvent.objects.all()) <= 100
    # ...and refused once less than the floor (16 completion tokens) is left.
    with pytest.raises(openai.RateLimitError):
        ask(sdk(gateway, plaintext), deployment.model_id, max_tokens=500, metadata=long)
    assert UsageEvent.objects.get(status_code=429).error_code == "rate_limit_exceeded"  # the refusal, on record


def test_streaming_with_usage_delivers_chunks_and_a_final_usage_chunk(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True)
    chunks = list(ask(sdk(gateway, plaintext), deployment.model_id, stream=True, stream_options={"include_usage": True}))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert len(chunks) > 10  # really streamed piecewise
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 26
    event = UsageEvent.objects.get(api_key=key)
    assert (event.total_tokens, event.streamed, event.estimated) == (26, True, False)
    assert event.ttft_ms is not None


def test_streaming_without_usage_hides_the_usage_chunk_but_still_meters_exactly(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True)
    chunks = list(ask(sdk(gateway, plaintext), deployment.model_id, stream=True))

    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    event = UsageEvent.objects.get(api_key=key)
    assert (event.prompt_tokens, event.completion_tokens, event.estimated) == (7, 19, False)


def test_tool_call_reply_reaches_the_sdk(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True)
    completion = ask(sdk(gateway, plaintext), deployment.model_id, tools=[WEATHER_TOOL])

    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    stream = ask(sdk(gateway, plaintext), deployment.model_id, tools=[WEATHER_TOOL], stream=True)
    names = [tc.function.name for c in stream for tc in (c.choices[0].delta.tool_calls or []) if c.choices]
    assert names == ["get_current_weather"]


def test_models_lists_exactly_what_the_key_may_call(world, deployment, gateway, demo):
    other = make_deployment(world.org, base_url=demo.url + "/v1", upstream_model="gatehouse-demo")
    outsiders = make_deployment(world.other_org, base_url=demo.url + "/v1")
    router = RouterProvider.objects.create(
        slug="demo-router",
        name="Demo router",
        base_url=demo.url + "/v1",
        api_key_encrypted=encrypt(UPSTREAM_KEY),
        model_names=["gatehouse-demo"],
    )
    ByokCredential.objects.create(
        workspace=world.org,
        name="mine",
        provider="demo",
        base_url=demo.url + "/v1",
        api_key_encrypted=encrypt(UPSTREAM_KEY),
        api_key_last4="1234",
        model_names=["gatehouse-demo"],
    )
    _, only_one = make_key(world.org, deployments=[deployment])
    everything_key, everything = make_key(world.org, all_models=True, all_byok=True)
    RouterProviderGrant.objects.create(provider=router, workspace=world.org)
    everything_key.router_providers.set([router])

    assert [m.id for m in sdk(gateway, only_one).models.list()] == [deployment.model_id]
    listed = {m.id for m in sdk(gateway, everything).models.list()}
    assert listed == {deployment.model_id, other.model_id, "demo-router/gatehouse-demo", "byok/mine/gatehouse-demo"}
    assert outsiders.model_id not in listed
    for name in ("demo-router/gatehouse-demo", "byok/mine/gatehouse-demo"):
        assert ask(sdk(gateway, everything), name).choices[0].message.content == ANSWER
        with pytest.raises(openai.NotFoundError):
            ask(sdk(gateway, only_one), name)


def test_byok_credential_without_model_list_accepts_any_model_under_its_name(world, gateway, demo):
    ByokCredential.objects.create(
        workspace=world.org,
        name="open",
        provider="demo",
        base_url=demo.url + "/v1",
        api_key_encrypted=encrypt(UPSTREAM_KEY),
        api_key_last4="1234",
    )
    _, plaintext = make_key(world.org, all_byok=True)
    assert ask(sdk(gateway, plaintext), "byok/open/gatehouse-demo").model == "byok/open/gatehouse-demo"
    # Open-ended names share one metrics series: callers cannot mint label values.
    assert metric(gateway, "gatehouse_gateway_requests_total", model="byok/open/*", status="200") >= 1
    assert metric(gateway, "gatehouse_gateway_requests_total", model="byok/open/gatehouse-demo") == 0
    with pytest.raises(openai.NotFoundError):
        ask(sdk(gateway, plaintext), "byok/absent/gatehouse-demo")


def test_sub_workspace_key_reaches_only_granted_deployments(world, deployment, gateway, demo):
    ungranted = make_deployment(world.org, base_url=demo.url + "/v1", upstream_model="gatehouse-demo")
    ModelGrant.objects.create(deployment=deployment, workspace=world.sub)
    _, plaintext = make_key(world.sub, all_models=True)

    assert ask(sdk(gateway, plaintext), deployment.model_id).choices[0].message.content == ANSWER
    with pytest.raises(openai.NotFoundError):
        ask(sdk(gateway, plaintext), ungranted.model_id)


def test_v1_deployment_path_with_app_code_and_v2_path_with_bearer(world, deployment, gateway):
    _, plaintext = make_key(world.org, deployments=[deployment])
    v1 = f"{gateway.url}/v1/{world.org.public_id}/deployments/{deployment.public_id}/chat/completions"
    response = httpx.post(v1, headers={"X-Apig-AppCode": plaintext}, json=chat_body(None, QUESTION), timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER

    wrong_project = v1.replace(str(world.org.public_id), str(world.other_org.public_id))
    assert httpx.post(wrong_project, headers={"X-Apig-AppCode": plaintext}, json=chat_body(None), timeout=10).status_code == 404

    v2 = openai.OpenAI(api_key=plaintext, base_url=gateway.url + "/api/v2", max_retries=0)
    assert ask(v2, deployment.model_id).choices[0].message.content == ANSWER
    assert sorted(UsageEvent.objects.values_list("status_code", flat=True)) == [200, 200, 404]


# ---- each error as the SDK's exception class -----------------------------------------------


def test_unknown_expired_and_revoked_keys_are_authentication_errors_with_one_message(world, deployment, gateway):
    from keys.tokens import generate

    _, expired = make_key(world.org, all_models=True, expires_at=timezone.now() - timedelta(seconds=1))
    _, revoked = make_key(world.org, all_models=True, revoked_at=timezone.now())
    messages = set()
    for plaintext in (generate(), expired, revoked):
        with pytest.raises(openai.AuthenticationError) as caught:
            ask(sdk(gateway, plaintext), deployment.model_id)
        assert caught.value.code == "invalid_api_key"
        messages.add(caught.value.message)
    assert len(messages) == 1  # no hint whether a key exists
    # The known keys' records say why (tests/test_gateway_refusals.py); the unknown one has none.
    assert sorted(UsageEvent.objects.values_list("error_code", flat=True)) == ["key_expired", "key_revoked"]


def test_ip_outside_the_allowlist_is_permission_denied(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True, ip_allowlist=["10.0.0.0/8"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        ask(sdk(gateway, plaintext), deployment.model_id)
    assert caught.value.code == "ip_not_allowed"


def test_unknown_and_unpermitted_models_get_the_same_not_found(world, deployment, gateway, demo):
    foreign = make_deployment(world.other_org, base_url=demo.url + "/v1")
    _, plaintext = make_key(world.org, all_models=True)
    bodies = []
    for model in ("no-such-model", foreign.model_id):
        with pytest.raises(openai.NotFoundError) as caught:
            ask(sdk(gateway, plaintext), model)
        bodies.append(caught.value.body["message"].replace(model, "M"))
        assert caught.value.code == "model_not_found"
    assert bodies[0] == bodies[1]


def test_tpm_and_yearly_limits_are_rate_limit_errors(world, deployment, gateway):
    long = {"demo_reply_tokens": "500"}
    _, small_tpm = make_key(world.org, all_models=True, tpm_limit=100)
    # The first call is capped to what the minute has left; the next finds less than the floor.
    assert ask(sdk(gateway, small_tpm), deployment.model_id, max_tokens=500, metadata=long).choices[0].finish_reason == "length"
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk(gateway, small_tpm), deployment.model_id, max_tokens=500)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1

    _, small_year = make_key(world.org, all_models=True, yearly_token_limit=100)
    assert ask(sdk(gateway, small_year), deployment.model_id, metadata=long).choices[0].finish_reason == "length"
    with pytest.raises(openai.RateLimitError) as caught:
        ask(sdk(gateway, small_year), deployment.model_id, max_tokens=500)
    assert caught.value.code == "insufficient_quota"
    assert caught.value.type == "insufficient_quota"


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"temperature": 2}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"n": 5}, "n"),
        ({"n": 0}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"seed": "x"}, "seed"),
        ({"stop": 5}, "stop"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.[0].function.name"),
    ],
)
def test_out_of_range_parameters_are_bad_requests(world, deployment, gateway, extra, param):
    key, plaintext = make_key(world.org, all_models=True)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(sdk(gateway, plaintext), deployment.model_id, extra_body=extra)
    assert caught.value.param == param
    assert list(UsageEvent.objects.values_list("status_code", "total_tokens")) == [(400, 0)]  # refused: on record, nothing counted


@pytest.mark.parametrize("field", ["api_base", "base_url", "extra_headers", "headers", "api_key"])
def test_fields_that_steer_the_upstream_are_refused(world, deployment, gateway, field):
    _, plaintext = make_key(world.org, all_models=True)
    with pytest.raises(openai.BadRequestError) as caught:
        ask(sdk(gateway, plaintext), deployment.model_id, extra_body={field: "http://169.254.169.254/"})
    assert caught.value.param == field


def test_unknown_openai_fields_pass_through(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    completion = ask(
        sdk(gateway, plaintext), deployment.model_id, user="someone", logprobs=False, extra_body={"metadata": {"demo_reply_tokens": "3"}}
    )
    assert completion.usage.completion_tokens == 3  # the demo model saw the metadata


def test_stopped_deployment_is_a_503(world, gateway, demo):
    stopped = make_deployment(world.org, base_url=demo.url + "/v1", status=DeploymentStatus.STOPPED)
    _, plaintext = make_key(world.org, all_models=True)
    with pytest.raises(openai.InternalServerError) as caught:
        ask(sdk(gateway, plaintext), stopped.model_id)
    assert caught.value.status_code == 503
    assert caught.value.code == "deployment_unavailable"
