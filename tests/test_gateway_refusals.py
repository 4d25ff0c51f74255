"""Refusals on the record: every request a known key makes that the gateway refuses is a usage event
(its status and reason, zero tokens, zero cost); unknown keys are only counted in /metrics.

Real gateway processes, the demo model server, PostgreSQL and Redis.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.utils import timezone

from keys.tokens import generate
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import MAX_BODY, UPSTREAM_KEY, chat_body, metric, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def post(server, key: str, body: dict | None = None, *, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=30, **kwargs)


# A prompt far larger than the small limits below: refused outright, not capped.
HUGE = "The quick brown fox jumps over the lazy dog. " * 300


def events_of(key) -> list[tuple]:
    return [
        (e.status_code, e.error_code, e.total_tokens, e.cost, e.client_ip)
        for e in UsageEvent.objects.filter(api_key=key).order_by("created_at", "id")
    ]


def refused(status: int, code: str) -> tuple:
    return (status, code, 0, Decimal(0), "127.0.0.1")


def test_each_refusal_of_a_known_key_is_a_usage_event_with_its_status_and_reason(world, deployment, gateway):
    _, blocked_ip = make_key(world.org, all_models=True, ip_allowlist=["10.0.0.0/8"])
    small_tpm_key, small_tpm = make_key(world.org, all_models=True, tpm_limit=100)
    small_year_key, small_year = make_key(world.org, all_models=True, yearly_token_limit=100)
    key, plaintext = make_key(world.org, deployments=[deployment])

    assert post(gateway, blocked_ip, chat_body(deployment.model_id)).status_code == 403
    tpm = post(gateway, small_tpm, chat_body(deployment.model_id, HUGE))
    assert (tpm.status_code, tpm.json()["error"]["code"]) == (429, "rate_limit_exceeded")
    yearly = post(gateway, small_year, chat_body(deployment.model_id, HUGE))
    assert (yearly.status_code, yearly.json()["error"]["code"]) == (429, "insufficient_quota")
    assert post(gateway, plaintext, chat_body(deployment.model_id, temperature=7)).status_code == 400
    assert post(gateway, plaintext, content=b"{not json", path="/v1/chat/completions").status_code == 400
    assert post(gateway, plaintext, chat_body("no-such-model")).status_code == 404
    too_big = post(gateway, plaintext, chat_body(deployment.model_id, "x" * (MAX_BODY + 10)))
    assert too_big.status_code == 413
    answered = post(gateway, plaintext, chat_body(deployment.model_id, max_tokens=5))
    assert answered.status_code == 200

    ip_key = UsageEvent.objects.get(status_code=403).api_key
    assert events_of(ip_key) == [refused(403, "ip_not_allowed")]
    assert events_of(small_tpm_key) == [refused(429, "rate_limit_exceeded")]
    assert events_of(small_year_key) == [refused(429, "insufficient_quota")]
    recorded = events_of(key)
    assert recorded[:4] == [
        refused(400, "invalid_value"),
        refused(400, "invalid_json"),
        refused(404, "model_not_found"),
        refused(413, "request_too_large"),
    ]
    assert recorded[4][0] == 200 and recorded[4][2] > 0  # the answered request, metered as before

    # What the request was for, as far as the gateway got: the deployment once the model resolved,
    # else the model name the client asked for.
    by_code = {e.error_code: e for e in UsageEvent.objects.exclude(status_code=200)}
    assert by_code["rate_limit_exceeded"].deployment_id == deployment.id
    assert by_code["rate_limit_exceeded"].model == deployment.model_id
    assert (by_code["model_not_found"].deployment_id, by_code["model_not_found"].model) == (None, "no-such-model")
    assert by_code["ip_not_allowed"].workspace_id == world.org.id
    # Each refusal's event carries the request id the client was given.
    assert UsageEvent.objects.filter(request_id=tpm.headers["x-request-id"], status_code=429).exists()


def test_refusals_reach_no_limit_counter(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=1000, yearly_token_limit=10_000)
    assert post(gateway, plaintext, chat_body(deployment.model_id, temperature=7)).status_code == 400
    assert post(gateway, plaintext, chat_body(deployment.model_id, HUGE)).status_code == 429
    assert [e[:3] for e in events_of(key)] == [(400, "invalid_value", 0), (429, "rate_limit_exceeded", 0)]
    from lib.redis import redis_client

    assert sum(int(v) for v in redis_client().hgetall(f"gatehouse:tpm:{key.public_id}").values()) == 0


def test_unusable_keys_get_one_answer_but_their_record_says_why(world, deployment, gateway):
    expired_key, expired = make_key(world.org, all_models=True, expires_at=timezone.now() - timedelta(seconds=1))
    revoked_key, revoked = make_key(world.org, all_models=True, revoked_at=timezone.now())
    bodies = {post(gateway, plaintext, chat_body(deployment.model_id)).text for plaintext in (expired, revoked, generate())}
    assert len(bodies) == 1  # the client learns nothing about which it was
    assert events_of(expired_key) == [refused(401, "key_expired")]
    assert events_of(revoked_key) == [refused(401, "key_revoked")]
    assert UsageEvent.objects.count() == 2  # the unknown key has no record


def test_unknown_keys_are_counted_in_metrics_only(world, deployment, gateway):
    before = metric(gateway, "gatehouse_gateway_refused_total", status="401", code="invalid_api_key", key="unknown")
    for _ in range(3):
        assert post(gateway, generate(), chat_body(deployment.model_id)).status_code == 401
    assert metric(gateway, "gatehouse_gateway_refused_total", status="401", code="invalid_api_key", key="unknown") == before + 3
    assert UsageEvent.objects.count() == 0


def test_models_list_refused_by_the_allowlist_is_on_the_record(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, ip_allowlist=["10.0.0.0/8"])
    response = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {plaintext}"}, timeout=10)
    assert response.status_code == 403
    event = wait_for(lambda: UsageEvent.objects.filter(api_key=key).first())
    assert (event.endpoint, event.status_code, event.error_code, event.model) == ("models", 403, "ip_not_allowed", "")


# ---- on the console: rollups, the Usage page and its CSV, reconciliation, the key's page --------


def test_refusals_are_counted_by_rollups_the_usage_page_the_csv_and_the_key_page(world, deployment, gateway, client_for):
    import csv
    import io

    from usage.models import UsageDaily, UsageErrorDaily
    from usage.reconcile import reconcile
    from usage.services import usage_rollup

    key, plaintext = make_key(world.org, name="billing", deployments=[deployment], tpm_limit=200, ip_allowlist=["127.0.0.0/8"])
    blocked, blocked_plaintext = make_key(world.org, name="office-only", all_models=True, ip_allowlist=["10.0.0.0/8"])
    for _ in range(3):
        assert post(gateway, plaintext, chat_body(deployment.model_id, HUGE)).status_code == 429
    assert post(gateway, plaintext, chat_body("no-such-model")).status_code == 404
    assert post(gateway, plaintext, chat_body(deployment.model_id, max_tokens=5)).status_code == 200
    for _ in range(2):
        assert post(gateway, blocked_plaintext, chat_body(deployment.model_id)).status_code == 403

    usage_rollup()
    daily = UsageDaily.objects.filter(workspace=world.org)
    assert sum(r.requests for r in daily) == 7 and sum(r.errors for r in daily) == 6
    by_reason = {(r.status_code, r.error_code): r.requests for r in UsageErrorDaily.objects.filter(workspace=world.org)}
    assert by_reason == {(429, "rate_limit_exceeded"): 3, (404, "model_not_found"): 1, (403, "ip_not_allowed"): 2}
    assert reconcile(since=None).ok  # requests = answered + refused on both sides

    client = client_for(world.owner)
    page = client.get("/w/acme/usage/")
    report = page.context["report"]
    assert (report.totals["requests"], report.totals["errors"], report.answered) == (7, 6, 1)
    assert [(e.status_code, e.error_code, e.requests) for e in report.errors_by_reason] == [
        (429, "rate_limit_exceeded", 3),
        (403, "ip_not_allowed", 2),
        (404, "model_not_found", 1),
    ]
    assert report.errors_by_reason[0].top_keys == [(str(key.public_id), "billing", 3)]
    body = page.content.decode()
    assert 'data-testid="errors-by-reason"' in body and "Tokens-per-minute limit reached" in body
    assert {r["api_key__name"]: r["errors"] for r in report.by_key} == {"billing": 4, "office-only": 2}

    rows = list(csv.reader(io.StringIO(client.get("/w/acme/usage/export.csv").content.decode())))
    header = next(r for r in rows if r and r[0] == "day")
    total = next(r for r in rows if r and r[0] == "total")
    assert header[1:4] == ["requests", "answered", "refused"] and total[1:4] == ["7", "1", "6"]
    reasons = rows[rows.index(["refused by reason", "status", "error_code", "requests"]) + 1 :]
    assert reasons[:3] == [
        ["Tokens-per-minute limit reached", "429", "rate_limit_exceeded", "3"],
        ["Client IP not in the key's allowlist", "403", "ip_not_allowed", "2"],
        ["Model not in the key's scope", "404", "model_not_found", "1"],
    ]

    detail = client.get(f"/w/acme/secrets/{blocked.public_id}/")
    assert detail.status_code == 200
    refusals = detail.context["refusals"]
    assert (refusals.last.status_code, refusals.last.error_code, refusals.last.client_ip) == (403, "ip_not_allowed", "127.0.0.1")
    assert refusals.recent == [{"status_code": 403, "error_code": "ip_not_allowed", "text": "Client IP not in the key's allowlist", "n": 2}]
    html = detail.content.decode()
    assert "Client IP not in the key&#x27;s allowlist" in html and "127.0.0.1" in html
    never = client.get(f"/w/acme/secrets/{make_key(world.org, name='fresh', all_models=True)[0].public_id}/")
    assert never.context["refusals"].last is None
