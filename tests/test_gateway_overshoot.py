"""The overshoot bound, proven under real traffic: 50 concurrent requests without max_tokens, long
mixed prompts (prose, code, CJK), an upstream that writes 1,500 tokens unless capped, three gateway
processes on PostgreSQL and Redis. Recorded tokens stay within limit × 1.05, for a TPM limit and a
yearly limit alike, streamed and not."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx
import pytest

from tests.factories import make_deployment, make_key
from tests.gateway_support import Server, free_port, run_async, start_gateway
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 20_000
CODE = "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n    return out + a + b\n"
CJK = "東京は日本の首都であり、人口は約一千四百万人です。大阪は商業の中心地として知られています。"
PROSE = "The committee reviewed the quarterly figures and asked for a plain summary of the risks. "


def prompt(i: int) -> str:
    # Different sizes and mixes per request: ~250 to ~900 tokens each.
    n = 4 + i % 7
    return f"Request {i}. " + [PROSE * n * 2, CODE * n, CJK * n * 2][i % 3] + CJK * (i % 2) + CODE * (i % 5 == 0)


@pytest.fixture(scope="module")
def long_upstream():
    port = free_port()
    server = Server("long-upstream", [sys.executable, "-m", "tests.long_upstream", "--port", str(port)], dict(os.environ), port, "/healthz")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def three_gateways(django_db_setup, django_db_blocker):
    servers = []
    try:
        for name in ("gateway-x", "gateway-y", "gateway-z"):
            servers.append(start_gateway(name))
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _burst(gateways, key: str, model: str) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=100)) as client:
        calls = []
        for i in range(50):
            body = {"model": model, "messages": [{"role": "user", "content": prompt(i)}]}  # no max_tokens
            if i % 4 == 1:  # every gateway gets streams and plain calls
                body["stream"] = True
            calls.append(client.post(gateways[i % 3].url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}))
        return await asyncio.gather(*calls)


@pytest.mark.parametrize("limit", ["tpm_limit", "yearly_token_limit"])
def test_50_concurrent_uncapped_requests_stay_within_the_limit(world, long_upstream, three_gateways, limit):
    deployment = make_deployment(world.org, base_url=long_upstream.url + "/v1", upstream_model="long")
    key, plaintext = make_key(world.org, all_models=True, **{limit: LIMIT})

    responses = run_async(_burst(three_gateways, plaintext, deployment.model_id))

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, [r.text[:200] for r in responses if r.status_code not in (200, 429)]
    answered = UsageEvent.objects.filter(api_key=key, status_code=200)
    recorded = sum(e.total_tokens for e in answered)
    streamed = answered.filter(streamed=True).count()
    capped = sum(1 for r in responses if "x-gatehouse-max-tokens-capped" in r.headers)
    print(
        f"\n{limit}={LIMIT}: {statuses.count(200)} answered ({streamed} streamed, {capped} capped), "
        f"{statuses.count(429)} refused; recorded {recorded} tokens = {recorded / LIMIT:.3f} × limit"
    )
    assert answered.count() == statuses.count(200)
    assert recorded <= LIMIT * 1.05
    # The limit was used, not dodged by refusing everything, and it did bind.
    assert recorded >= LIMIT * 0.8 and statuses.count(429) > 0 and streamed > 0
