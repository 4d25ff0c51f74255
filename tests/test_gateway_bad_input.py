"""Bad input gets the OpenAI error body with the right status and changes no counter: not the TPM
window, not the yearly counter, not the tokens on record (live gateway processes, PostgreSQL, Redis).
Refusals are on record as zero-token usage events (issue 12); nothing else is."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, start_gateway, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

ONE_MB_PROMPT = ("The quick brown fox jumps over the lazy dog. 東京 def f(x): return x\n" * 16_000)[: 1024 * 1024]
HUGE_SCHEMA = {"type": "object", "properties": {f"field_{i}": {"type": "string"} for i in range(10_000)}}


@pytest.fixture(scope="module")
def roomy_gateway(django_db_setup, django_db_blocker):
    """A gateway with the default 4 MB body limit, so a 1 MB prompt reaches admission."""
    server = start_gateway("gateway-roomy", GATEWAY_MAX_BODY_BYTES=str(4 * 1024 * 1024))
    yield server
    server.stop()


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def post(server, key: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=60)


def counters(key) -> tuple[int, int, int]:
    """(TPM window, yearly counter, tokens on record) for a key."""
    tpm = sum(int(v) for v in redis_client().hgetall(f"gatehouse:tpm:{key.public_id}").values())
    yearly = int(redis_client().get(f"gatehouse:yearly:{key.public_id}:{datetime.now(UTC).year}") or 0)
    recorded = sum(e.total_tokens for e in UsageEvent.objects.filter(api_key=key))
    return tpm, yearly, recorded


def limited_key(world, server, deployment):
    """A key with both limits and one answered call, so both counters exist and hold tokens."""
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=20_000, yearly_token_limit=20_000)
    assert post(server, plaintext, chat_body(deployment.model_id, max_tokens=5)).status_code == 200
    used = UsageEvent.objects.get(api_key=key).total_tokens
    assert wait_for(lambda: counters(key) == (used, used, used))
    return key, plaintext


def refusals_since(key, before: int) -> list[tuple[int, str, int]]:
    """(status, error code, tokens) of the key's usage events after the first `before` ones."""
    events = UsageEvent.objects.filter(api_key=key).order_by("id")[before:]
    return [(e.status_code, e.error_code, e.total_tokens + e.prompt_tokens + e.completion_tokens) for e in events]


def assert_openai_error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    ("field", "value"), [("max_tokens", 0), ("max_tokens", -5), ("max_completion_tokens", 0), ("max_completion_tokens", -1)]
)
def test_zero_or_negative_max_tokens_is_a_400_and_changes_no_counter(world, deployment, gateway, field, value):
    key, plaintext = limited_key(world, gateway, deployment)
    before = counters(key)
    error = assert_openai_error(post(gateway, plaintext, chat_body(deployment.model_id, **{field: value})), 400, "invalid_value", field)
    assert "positive integer" in error["message"]
    assert counters(key) == before
    assert wait_for(lambda: refusals_since(key, 1) == [(400, "invalid_value", 0)])  # on record as a refusal, zero tokens


def test_a_1_mb_prompt_is_refused_by_the_limit_it_can_never_fit_and_changes_no_counter(world, deployment, roomy_gateway):
    key, plaintext = limited_key(world, roomy_gateway, deployment)
    before = counters(key)
    body = chat_body(deployment.model_id, ONE_MB_PROMPT)
    error = assert_openai_error(post(roomy_gateway, plaintext, body), 429, "insufficient_quota")
    assert "yearly token limit is 20000 tokens" in error["message"] and "prompt tokens" in error["message"]
    assert counters(key) == before
    assert wait_for(lambda: refusals_since(key, 1) == [(429, "insufficient_quota", 0)])

    tpm_only, tpm_plaintext = make_key(world.org, all_models=True, tpm_limit=20_000)
    response = post(roomy_gateway, tpm_plaintext, body)
    error = assert_openai_error(response, 429, "rate_limit_exceeded")
    assert "more than this key's limit of 20000 tokens per minute" in error["message"]
    assert counters(tpm_only) == (0, 0, 0)
    assert wait_for(lambda: refusals_since(tpm_only, 0) == [(429, "rate_limit_exceeded", 0)])


def test_a_1_mb_prompt_over_the_body_limit_is_a_413(world, deployment, gateway):
    key, plaintext = limited_key(world, gateway, deployment)  # this gateway takes 64 KB bodies
    before = counters(key)
    assert_openai_error(post(gateway, plaintext, chat_body(deployment.model_id, ONE_MB_PROMPT)), 413, "request_too_large")
    assert counters(key) == before
    assert wait_for(lambda: refusals_since(key, 1) == [(413, "request_too_large", 0)])


def test_a_tool_schema_of_10000_fields_is_a_400_and_changes_no_counter(world, deployment, roomy_gateway):
    key, plaintext = limited_key(world, roomy_gateway, deployment)
    before = counters(key)
    tools = [{"type": "function", "function": {"name": "register", "parameters": HUGE_SCHEMA}}]
    error = assert_openai_error(
        post(roomy_gateway, plaintext, chat_body(deployment.model_id, tools=tools)), 400, "invalid_value", "tools.[0].function.parameters"
    )
    assert "more than 5000 properties" in error["message"]
    assert counters(key) == before
    assert wait_for(lambda: refusals_since(key, 1) == [(400, "invalid_value", 0)])
