"""Admission at the edge: credentials, client address, body size, query strings, /metrics."""

from __future__ import annotations

import httpx
import pytest

from keys import tokens
from keys.models import ApiKey
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import MAX_BODY, METRICS_TOKEN, UPSTREAM_KEY, chat_body, db_queries, metric, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def post(server, headers: dict, body: dict | None = None, path: str = "/v1/chat/completions", **kwargs) -> httpx.Response:
    return httpx.post(server.url + path, json=body if body is not None else chat_body("m"), headers=headers, timeout=10, **kwargs)


def bad_checksum() -> str:
    key = tokens.generate()
    return key[:-1] + ("A" if key[-1] != "A" else "B")


MALFORMED = {
    "sql in bearer": "Bearer ' OR '1'='1' --",
    "sql shaped like a key": "Bearer gh_live_'; DROP TABLE keys_apikey; --",
    "10 KB header": "Bearer gh_live_" + "A" * 10_240,
    "bad checksum": None,  # filled per test run
    "basic scheme": "Basic dXNlcjpwYXNz",
    "empty bearer": "Bearer",
    "bearer twice": None,
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_bearers_are_401_without_a_single_query(gateway, case):
    value = MALFORMED[case] or ("Bearer " + bad_checksum())
    headers = {"authorization": value}
    if case == "bearer twice":
        headers = [("authorization", "Bearer " + tokens.generate()), ("authorization", "Bearer " + tokens.generate())]
    before = db_queries(gateway)

    response = httpx.post(gateway.url + "/v1/chat/completions", json=chat_body("m"), headers=headers, timeout=10)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-request-id"].startswith("req_")
    assert db_queries(gateway) == before


def test_a_cached_key_costs_no_database_read(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=100_000, yearly_token_limit=10**9, ip_allowlist=["127.0.0.1/32"])
    headers = {"authorization": f"Bearer {plaintext}"}
    assert post(gateway, headers, chat_body(deployment.model_id, max_tokens=5)).status_code == 200
    # The first use also stamps last_used_at (once a minute, off the hot path): let it land first.
    assert wait_for(lambda: ApiKey.objects.get(pk=key.pk).last_used_at is not None)
    reads_before = metric(gateway, "gatehouse_gateway_db_queries_total", kind="orm")
    inserts_before = metric(gateway, "gatehouse_gateway_db_queries_total", kind="usage_insert")

    for _ in range(5):
        assert post(gateway, headers, chat_body(deployment.model_id, max_tokens=5)).status_code == 200

    assert metric(gateway, "gatehouse_gateway_db_queries_total", kind="orm") == reads_before
    assert metric(gateway, "gatehouse_gateway_db_queries_total", kind="usage_insert") == inserts_before + 5


def test_missing_key_is_401(gateway):
    response = post(gateway, {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_keys_in_the_query_string_are_refused_even_when_the_header_is_valid(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    for query in (f"?api_key={plaintext}", f"?key={plaintext}", f"?x={plaintext}"):
        response = post(
            gateway, {"authorization": f"Bearer {plaintext}"}, chat_body(deployment.model_id), path="/v1/chat/completions" + query
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "key_in_query"
        assert plaintext not in response.text
    assert UsageEvent.objects.count() == 0


def test_forged_x_forwarded_for_does_not_choose_the_checked_address(world, deployment, gateways):
    direct, behind_proxy = gateways  # B trusts 127.0.0.1 as its proxy; A trusts no proxy
    _, plaintext = make_key(world.org, all_models=True, ip_allowlist=["203.0.113.0/24"])
    body = chat_body(deployment.model_id, max_tokens=5)
    auth = {"authorization": f"Bearer {plaintext}"}

    # A: the socket peer (127.0.0.1) is checked, whatever the header claims.
    assert post(direct, {**auth, "x-forwarded-for": "203.0.113.7"}, body).status_code == 403
    # B: the trusted proxy's header is read right to left; the first untrusted hop is the client.
    assert post(behind_proxy, {**auth, "x-forwarded-for": "203.0.113.7"}, body).status_code == 200
    # A client forging the left part of the chain gains nothing: the hop the proxy saw is 198.51.100.9.
    assert post(behind_proxy, {**auth, "x-forwarded-for": "203.0.113.7, 198.51.100.9"}, body).status_code == 403
    event = UsageEvent.objects.get(status_code=200)
    assert event.client_ip == "203.0.113.7"
    # The refusals are on the record with the address that was checked.
    assert sorted(UsageEvent.objects.filter(status_code=403).values_list("client_ip", flat=True)) == ["127.0.0.1", "198.51.100.9"]


def test_allowlisted_loopback_is_admitted(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True, ip_allowlist=["127.0.0.0/8", "2001:db8::/32"])
    assert post(gateway, {"authorization": f"Bearer {plaintext}"}, chat_body(deployment.model_id, max_tokens=5)).status_code == 200


def test_oversized_bodies_are_refused_with_413(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    auth = {"authorization": f"Bearer {plaintext}", "content-type": "application/json"}
    big = chat_body(deployment.model_id, "x" * (MAX_BODY + 10))

    declared = post(gateway, auth, big)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunked():  # no content-length: the limit is enforced while reading
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}]}'

    streamed = httpx.post(gateway.url + "/v1/chat/completions", content=chunked(), headers=auth, timeout=10)
    assert streamed.status_code == 413
    # Refused, on the key's record, with nothing counted.
    assert list(UsageEvent.objects.values_list("status_code", "error_code", "total_tokens")) == [(413, "request_too_large", 0)] * 2


def test_invalid_json_is_a_400(world, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    response = httpx.post(
        gateway.url + "/v1/chat/completions", content=b"{not json", timeout=10, headers={"authorization": f"Bearer {plaintext}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_every_response_has_a_request_id_and_unknown_paths_are_openai_404s(gateway):
    response = httpx.get(gateway.url + "/v1/nothing-here", timeout=10)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"]
    assert httpx.get(gateway.url + "/v1/chat/completions", timeout=10).status_code == 405


def test_metrics_need_the_configured_token(world, deployment, gateway):
    assert httpx.get(gateway.url + "/metrics", timeout=10).status_code == 401
    assert httpx.get(gateway.url + "/metrics", headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
    _, plaintext = make_key(world.org, all_models=True, tpm_limit=10)
    post(gateway, {"authorization": f"Bearer {plaintext}"}, chat_body(deployment.model_id, max_tokens=50))

    response = httpx.get(gateway.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10)
    assert response.status_code == 200
    for name in (
        "gatehouse_gateway_requests_total",
        "gatehouse_gateway_request_seconds_bucket",
        "gatehouse_gateway_ttft_seconds",
        "gatehouse_gateway_limiter_refusals_total",
        "gatehouse_gateway_upstream_errors",
    ):
        assert name in response.text
    assert metric(gateway, "gatehouse_gateway_limiter_refusals_total", reason="tpm") >= 1
    assert plaintext not in response.text


def test_access_log_has_no_secrets(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    post(gateway, {"authorization": f"Bearer {plaintext}"}, chat_body(deployment.model_id, max_tokens=5))
    post(gateway, {"authorization": f"Bearer {plaintext}"}, path=f"/v1/chat/completions?api_key={plaintext}")
    log = gateway.log.read_text()
    assert '"path":"/v1/chat/completions","status":400' in log  # the access log is on, and saw both
    assert plaintext not in log and plaintext[-12:] not in log
    assert UPSTREAM_KEY not in log


def test_an_unreachable_key_store_is_a_503_not_a_500(world, django_db_setup):
    from tests.gateway_support import database_url, start_gateway

    server = start_gateway("gateway-no-db", DATABASE_URL=database_url() + "_does_not_exist")
    try:
        _, plaintext = make_key(world.org, all_models=True)
        response = post(server, {"authorization": f"Bearer {plaintext}"}, chat_body("m"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "auth_unavailable"
    finally:
        server.stop()
