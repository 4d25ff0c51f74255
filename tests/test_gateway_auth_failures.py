"""Forged keys cost (almost) nothing: a negative cache of unknown digests and a per-client-IP limit
on failed authentications (live gateway processes, PostgreSQL, Redis)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from django.conf import settings

from keys import tokens
from keys.models import ApiKey, ApiKeySecret
from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, db_queries, run_async, start_gateway, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
demo = gateway_support.demo
LIMIT = 20


@pytest.fixture
def strict_gateway(django_db_setup):
    """A gateway whose clients may send 20 unknown credentials a minute (the others allow plenty)."""
    redis_client().delete("gatehouse:authfail:127.0.0.1")
    server = start_gateway("gateway-strict", GATEWAY_AUTH_FAILURES_PER_MINUTE=str(LIMIT))
    yield server
    server.stop()
    redis_client().delete("gatehouse:authfail:127.0.0.1")


async def _forge(server, n: int) -> list[httpx.Response]:
    limit = asyncio.Semaphore(32)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:

        async def one():
            async with limit:
                return await client.post(
                    server.url + "/v1/chat/completions", json=chat_body("m"), headers={"authorization": f"Bearer {tokens.generate()}"}
                )

        return await asyncio.gather(*(one() for _ in range(n)))


def test_10000_forged_well_formed_keys_cost_at_most_the_limit_in_lookups(world, demo, strict_gateway):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    _, plaintext = make_key(world.org, all_models=True)
    ok = httpx.post(
        strict_gateway.url + "/v1/chat/completions",
        json=chat_body(deployment.model_id, max_tokens=5),
        headers={"authorization": f"Bearer {plaintext}"},
        timeout=30,
    )
    assert ok.status_code == 200  # cached now
    before = db_queries(strict_gateway)

    responses = run_async(_forge(strict_gateway, 10_000))

    statuses = [r.status_code for r in responses]
    assert statuses.count(401) == LIMIT and statuses.count(429) == 10_000 - LIMIT
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_auth_failures" and 1 <= int(refused.headers["retry-after"]) <= 60
    lookups = db_queries(strict_gateway) - before
    print(f"\n10,000 forged keys: {lookups:.0f} database queries")
    assert lookups <= LIMIT + 2  # one lookup per admitted unknown key (+ a last-used stamp at most)

    # The key this client already uses keeps working from the same address.
    again = httpx.post(
        strict_gateway.url + "/v1/chat/completions",
        json=chat_body(deployment.model_id, max_tokens=5),
        headers={"authorization": f"Bearer {plaintext}"},
        timeout=30,
    )
    assert again.status_code == 200


def test_an_unknown_digest_is_remembered_only_briefly(world, demo, strict_gateway):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    plaintext = tokens.generate()
    body = chat_body(deployment.model_id, max_tokens=5)

    def call() -> int:
        headers = {"authorization": f"Bearer {plaintext}"}
        return httpx.post(strict_gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30).status_code

    before = db_queries(strict_gateway)
    assert [call() for _ in range(5)] == [401] * 5
    assert db_queries(strict_gateway) - before == 1  # the negative cache answered the other four

    # The key is created a moment later (as the console would, with that secret).
    key = ApiKey.objects.create(workspace=world.org, name="late", hint=tokens.display_hint(plaintext), all_models=True)
    ApiKeySecret.objects.create(api_key=key, digest=tokens.digest(plaintext, settings.API_KEY_PEPPER), hint=tokens.display_hint(plaintext))
    assert wait_for(lambda: call() == 200, timeout=4)  # the negative entry lives 2 s


def test_a_burst_for_a_key_the_process_has_not_loaded_is_one_lookup_not_a_refusal(world, demo, strict_gateway):
    # 3 x LIMIT connections at once with one valid key this process has never seen: they join the
    # first request's lookup instead of each claiming a failed-authentication slot.
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    _, plaintext = make_key(world.org, all_models=True)
    body = chat_body(deployment.model_id, max_tokens=5)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=3 * LIMIT)) as client:
            responses = await asyncio.gather(
                *(
                    client.post(strict_gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plaintext}"})
                    for _ in range(3 * LIMIT)
                )
            )
        return [r.status_code for r in responses]

    assert run_async(burst()) == [200] * (3 * LIMIT)
    # Nothing was left on the client's failed-authentication counter.
    assert wait_for(lambda: int(redis_client().get("gatehouse:authfail:127.0.0.1") or 0) == 0)
