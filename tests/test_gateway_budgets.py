"""A blocking budget refuses requests at 100 % on every gateway process (live processes, PostgreSQL,
Redis, the demo model, the official openai SDK), and lifting it lets them through again."""

from __future__ import annotations

from decimal import Decimal

import httpx
import openai
import pytest

from console.audit import Actor
from deployments.models import ModelGrant
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, wait_for
from usage.models import Budget, UsageEvent
from usage.services import budget_set, usage_rollup

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways = gateway_support.demo, gateway_support.gateways  # live-process fixtures


@pytest.fixture
def priced(world, demo):
    # 0.10 per token: any answer costs more than a dollar.
    return make_deployment(
        world.org,
        base_url=demo.url + "/v1",
        upstream_api_key=UPSTREAM_KEY,
        upstream_model="gatehouse-demo",
        input_price="100000",
        output_price="100000",
    )


def _set(world, amount: str, *, block: bool) -> Budget:
    return budget_set(workspace=world.org, amount=Decimal(amount), currency="USD", block_requests=block, actor=Actor.system("tests"))


def _post(server, key: str, model: str) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json=chat_body(model, "hi", max_tokens=20),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def _sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0, timeout=20)


def test_blocking_budget_refuses_with_429_insufficient_quota_until_lifted(world, priced, gateways):
    a, b = gateways
    _, plaintext = make_key(world.org, all_models=True)
    ModelGrant.objects.create(deployment=priced, workspace=world.sub)
    _, sub_plaintext = make_key(world.sub, all_models=True)  # the organisation's budget covers sub-workspaces
    _set(world, "1.00", block=True)

    answer = _sdk(a, plaintext).chat.completions.create(model=priced.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=20)
    assert answer.choices[0].message.content
    assert wait_for(lambda: UsageEvent.objects.count() == 1)
    # Warm both processes' caches while unblocked, so the block must reach them as a change.
    assert _post(b, sub_plaintext, priced.model_id).status_code == 200
    assert wait_for(lambda: UsageEvent.objects.count() == 2)

    usage_rollup()  # the worker's pass finds the budget used up
    budget = Budget.objects.get()
    assert budget.spent >= budget.amount

    for server, key in ((a, plaintext), (b, plaintext), (a, sub_plaintext), (b, sub_plaintext)):
        refused = _post(server, key, priced.model_id)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert (error["type"], error["code"], error["param"]) == ("insufficient_quota", "insufficient_quota", None)
        assert "monthly budget" in error["message"]
    with pytest.raises(openai.RateLimitError) as caught:
        _sdk(b, plaintext).chat.completions.create(model=priced.model_id, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "insufficient_quota"
    # Refused requests reach no model and cost nothing, and are on the record.
    refusals = UsageEvent.objects.filter(status_code=429)
    # On record as the budget (the client's code, insufficient_quota, is shared with the yearly limit).
    assert list(refusals.values_list("error_code", "total_tokens", "cost").distinct()) == [("budget_exhausted", 0, 0)]
    assert (refusals.count(), UsageEvent.objects.count()) == (5, 7)

    _set(world, "1000", block=True)  # raising the amount unblocks at once
    assert _post(a, plaintext, priced.model_id).status_code == 200
    assert _post(b, sub_plaintext, priced.model_id).status_code == 200


def test_warning_only_budget_lets_requests_through_and_ticking_block_stops_them(world, priced, gateways):
    a, b = gateways
    _, plaintext = make_key(world.org, all_models=True)
    _set(world, "0.50", block=False)
    assert _post(a, plaintext, priced.model_id).status_code == 200
    assert wait_for(lambda: UsageEvent.objects.count() == 1)
    usage_rollup()
    assert Budget.objects.get().spent >= Decimal("0.50")
    assert _post(a, plaintext, priced.model_id).status_code == 200  # over budget, but the budget only warns
    assert _post(b, plaintext, priced.model_id).status_code == 200

    _set(world, "0.50", block=True)
    assert _post(a, plaintext, priced.model_id).status_code == 429
    assert _post(b, plaintext, priced.model_id).status_code == 429
    _set(world, "0.50", block=False)  # unticking "block" unblocks
    assert _post(a, plaintext, priced.model_id).status_code == 200


def test_a_blocking_budget_caps_completions_for_keys_without_token_limits(world, priced, gateways):
    a, _ = gateways
    _set(world, "1000.00", block=True)  # not used up: requests pass, but no answer may run away
    _, plaintext = make_key(world.org, all_models=True)  # no TPM, no yearly limit
    body = chat_body(priced.model_id, "hi", metadata={"demo_reply_tokens": "1500"})
    response = httpx.post(a.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plaintext}"}, timeout=30)
    assert response.status_code == 200
    assert response.headers["x-gatehouse-max-tokens-capped"] == "1024"  # GATEWAY_DEFAULT_MAX_TOKENS
    assert response.json()["usage"]["completion_tokens"] == 1024

    _set(world, "1000.00", block=False)  # a budget that only alerts forces no cap
    response = httpx.post(a.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plaintext}"}, timeout=30)
    assert "x-gatehouse-max-tokens-capped" not in response.headers
    assert response.json()["usage"]["completion_tokens"] == 1500
