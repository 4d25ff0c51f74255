"""Limits and key changes across several gateway processes (live processes, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from django.db import transaction
from django.utils import timezone

from keys.changes import key_changed
from keys.models import ApiKey
from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, run_async, start_gateway, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways = gateway_support.demo, gateway_support.gateways  # live-process fixtures

# "hi" counts 9 prompt tokens for the gateway (1 + the role and the chat template's markers; the
# demo model counts 1); with max_tokens 91 every request reserves exactly 100. The demo model
# answers 91 tokens after 2 s, so every request is still in flight (its tokens reserved) when the
# last one is admitted.
SLOW_100 = chat_body(None, "hi", max_tokens=91, metadata={"demo_latency_ms": "2000", "demo_reply_tokens": "91"})


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def post(server, key: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}", **headers}, timeout=30)


async def _burst(targets: list, key: str, body: dict) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        calls = [
            client.post(server.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}) for server in targets
        ]
        return await asyncio.gather(*calls)


def burst(targets: list, key: str, body: dict) -> list[httpx.Response]:
    return run_async(_burst(targets, key, body))


def test_tpm_is_exact_across_two_gateway_processes_under_concurrency(world, deployment, gateways):
    a, b = gateways
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=1000)
    body = {**SLOW_100, "model": deployment.model_id}

    responses = burst([a, b] * 15, plaintext, body)

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 10 + [429] * 20
    refused = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1 for r in refused)
    events = UsageEvent.objects.filter(api_key=key, status_code=200)
    assert events.count() == 10
    assert UsageEvent.objects.filter(api_key=key, status_code=429, total_tokens=0).count() == 20  # the refusals, on record
    assert sum(e.total_tokens for e in events) == 920 <= 1000
    # Settled to the real usage (settlements are sent without waiting, so allow them a moment).
    assert wait_for(lambda: sum(int(v) for v in redis_client().hgetall(f"gatehouse:tpm:{key.public_id}").values()) == 920)


def test_yearly_limit_reserves_so_that_20_concurrent_requests_with_budget_for_10_admit_10(world, deployment, gateways):
    a, b = gateways
    key, plaintext = make_key(world.org, all_models=True, yearly_token_limit=1500)
    # Usage already recorded this year counts: the Redis counter is seeded from the events.
    UsageEvent.objects.create(
        request_id="earlier",
        created_at=timezone.now(),
        workspace=world.org,
        api_key=key,
        model="m",
        prompt_tokens=200,
        completion_tokens=300,
        total_tokens=500,
        status_code=200,
    )
    body = {**SLOW_100, "model": deployment.model_id}

    responses = burst([a, b] * 10, plaintext, body)

    assert sorted(r.status_code for r in responses) == [200] * 10 + [429] * 10
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"insufficient_quota"}
    year = datetime.now(UTC).year  # the org's time zone is UTC
    assert wait_for(lambda: int(redis_client().get(f"gatehouse:yearly:{key.public_id}:{year}")) == 500 + 10 * 92)
    assert UsageEvent.objects.filter(api_key=key, total_tokens__gt=0).count() == 11
    assert UsageEvent.objects.filter(api_key=key, status_code=429, error_code="insufficient_quota", total_tokens=0).count() == 10


def test_yearly_counter_lost_from_redis_is_rebuilt_from_usage_events(world, deployment, gateways):
    a, _ = gateways
    key, plaintext = make_key(world.org, all_models=True, yearly_token_limit=1000)
    assert post(a, plaintext, chat_body(deployment.model_id, max_tokens=10)).status_code == 200
    used = UsageEvent.objects.get(api_key=key).total_tokens
    counter = f"gatehouse:yearly:{key.public_id}:{datetime.now(UTC).year}"
    assert wait_for(lambda: int(redis_client().get(counter)) == used)
    redis_client().delete(counter)

    assert post(a, plaintext, chat_body(deployment.model_id, max_tokens=10)).status_code == 200
    assert wait_for(lambda: int(redis_client().get(counter)) == used * 2)


def test_revocation_reaches_every_process_before_its_next_request(world, deployment, gateways):
    key, plaintext = make_key(world.org, all_models=True)
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]  # cached in both

    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        key_changed(key.id)

    # No waiting: the admission call itself compares the key's generation.
    assert [post(server, plaintext, body).status_code for server in gateways] == [401, 401]


def test_key_edits_reach_refusing_processes_within_a_second(world, deployment, gateways):
    key, plaintext = make_key(world.org, all_models=True, ip_allowlist=["10.0.0.0/8"])
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [403, 403]

    with transaction.atomic():
        ApiKey.objects.filter(pk=key.pk).update(ip_allowlist=["127.0.0.0/8"])
        key_changed(key.id)
    changed_at = time.monotonic()

    assert wait_for(lambda: all(post(server, plaintext, body).status_code == 200 for server in gateways), timeout=5)
    assert time.monotonic() - changed_at < 1.0


def test_stopping_a_deployment_reaches_every_process_before_its_next_request(world, deployment, gateways):
    from console.audit import Actor
    from deployments.services import deployment_start, deployment_stop

    _, plaintext = make_key(world.org, all_models=True)
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]  # cached in both

    deployment_stop(deployment=deployment, actor=Actor.system("tests"))
    stopped = [post(server, plaintext, body) for server in gateways]
    assert [r.status_code for r in stopped] == [503, 503]
    assert {r.json()["error"]["code"] for r in stopped} == {"deployment_unavailable"}

    deployment_start(deployment=deployment, actor=Actor.system("tests"))
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]


def test_revocation_through_the_keys_service_reaches_every_process(world, deployment, gateways):
    from console.audit import Actor
    from keys.services import api_key_revoke

    key, plaintext = make_key(world.org, all_models=True)
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]
    api_key_revoke(api_key=key, actor=Actor.system("tests"))
    assert [post(server, plaintext, body).status_code for server in gateways] == [401, 401]


def test_expiry_applies_at_the_second(world, deployment, gateways):
    expires = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    _, plaintext = make_key(world.org, all_models=True, expires_at=expires)
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]

    time.sleep(max(0.0, (expires - timezone.now()).total_seconds()))
    assert [post(server, plaintext, body).status_code for server in gateways] == [401, 401]


def test_quota_checks_fail_closed_when_redis_is_unreachable(world, deployment, django_db_setup):
    closed_port = gateway_support.free_port()
    server = start_gateway("gateway-no-redis", REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    try:
        _, plaintext = make_key(world.org, all_models=True, tpm_limit=1000)
        response = post(server, plaintext, chat_body(deployment.model_id))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limiter_unavailable"
        assert "Redis" in response.json()["error"]["message"]
    finally:
        server.stop()
    assert list(UsageEvent.objects.values_list("status_code", "error_code", "total_tokens")) == [(503, "limiter_unavailable", 0)]
