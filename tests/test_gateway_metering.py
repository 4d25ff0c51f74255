"""Exactly one usage event per admitted request: success, upstream failure, timeout, abort."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import openai
import pytest

from gateway.metering import UsageWriter
from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, demo_stats, run_async, wait_for
from tests.usage_writer_support import row
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures


def deployment_for(world, demo, upstream_model: str = "gatehouse-demo", **fields):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model=upstream_model, **fields)


def limited_key(world):
    return make_key(world.org, all_models=True, tpm_limit=100_000, yearly_token_limit=10**9)


def reserved(key) -> tuple[int, int]:
    """(tokens in the key's TPM window, tokens on its yearly counter) as Redis holds them."""
    window = redis_client().hgetall(f"gatehouse:tpm:{key.public_id}")
    yearly = redis_client().get(f"gatehouse:yearly:{key.public_id}:{datetime.now(UTC).year}")
    return sum(int(v) for v in window.values()), int(yearly or 0)


def sdk(gateway, plaintext):
    return openai.OpenAI(api_key=plaintext, base_url=gateway.url + "/v1", max_retries=0, timeout=30)


def test_upstream_500_writes_one_event_and_releases_the_reservation(world, demo, gateway):
    deployment = deployment_for(world, demo, "gatehouse-demo+fail=500")
    key, plaintext = limited_key(world)
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(gateway, plaintext).chat.completions.create(
                model=deployment.model_id, messages=[{"role": "user", "content": "hi"}], stream=stream
            )
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_error"

    events = list(UsageEvent.objects.filter(api_key=key))
    assert [(e.status_code, e.error_code, e.total_tokens) for e in events] == [(502, "upstream_error", 0)] * 2
    assert wait_for(lambda: reserved(key) == (0, 0))


def test_upstream_timeout_is_504_with_one_event_and_the_reservation_released(world, demo, gateway):
    deployment = deployment_for(world, demo, "gatehouse-demo+latency_ms=5000", timeout_seconds=1)
    key, plaintext = limited_key(world)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, plaintext).chat.completions.create(model=deployment.model_id, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 504
    event = UsageEvent.objects.get(api_key=key)
    assert (event.status_code, event.error_code, event.total_tokens) == (504, "upstream_timeout", 0)
    assert wait_for(lambda: reserved(key) == (0, 0))


def test_client_disconnect_mid_stream_cancels_upstream_and_writes_one_flagged_event(world, demo, gateway):
    deployment = deployment_for(world, demo)
    key, plaintext = limited_key(world)
    cancelled_before = demo_stats(demo).get("cancelled", 0)
    body = chat_body(deployment.model_id, "hi", stream=True, metadata={"demo_reply_tokens": "200", "demo_chunk_delay_ms": "50"})

    received = 0
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plaintext}"}
        ) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received += 1
                if received == 5:  # the role chunk and four content chunks
                    break

    event = wait_for(lambda: UsageEvent.objects.filter(api_key=key).first())
    assert event is not None
    assert (event.status_code, event.aborted, event.estimated, event.streamed) == (499, True, True, True)
    assert 4 <= event.completion_tokens < 200  # what was delivered, not zero and not the whole answer
    assert event.prompt_tokens > 0
    assert wait_for(lambda: demo_stats(demo).get("cancelled", 0) == cancelled_before + 1)
    assert UsageEvent.objects.filter(api_key=key).count() == 1
    assert wait_for(lambda: reserved(key) == (event.total_tokens, event.total_tokens))  # settled to what was counted


def test_client_disconnect_while_waiting_for_a_non_streamed_answer_cancels_upstream(world, demo, gateway):
    deployment = deployment_for(world, demo, "gatehouse-demo+latency_ms=3000")
    key, plaintext = limited_key(world)
    cancelled_before = demo_stats(demo).get("cancelled", 0)

    with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):  # the caller gives up after 0.5 s
        client.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(deployment.model_id, "hi"),
            headers={"authorization": f"Bearer {plaintext}"},
        )

    # The upstream call is stopped (the demo counts it cancelled only if it went before its 3 s answer).
    assert wait_for(lambda: demo_stats(demo).get("cancelled", 0) == cancelled_before + 1)
    event = wait_for(lambda: UsageEvent.objects.filter(api_key=key).first())
    assert (event.status_code, event.error_code, event.aborted, event.estimated) == (499, "client_disconnected", True, True)
    assert event.prompt_tokens > 0 and event.completion_tokens == 0
    assert wait_for(lambda: reserved(key) == (event.total_tokens, event.total_tokens))
    assert UsageEvent.objects.filter(api_key=key).count() == 1


def test_upstream_dying_mid_stream_is_metered_as_estimated_and_reported_to_the_client(world, demo, gateway):
    deployment = deployment_for(world, demo, "gatehouse-demo+stop_after=6")
    key, plaintext = limited_key(world)
    stream = sdk(gateway, plaintext).chat.completions.create(
        model=deployment.model_id, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    event = UsageEvent.objects.get(api_key=key)
    assert (event.status_code, event.error_code, event.estimated) == (502, "upstream_incomplete", True)
    assert event.completion_tokens >= 5


def test_upstream_without_usage_is_metered_as_estimated_never_zero(world, demo, gateway):
    deployment = deployment_for(world, demo, "gatehouse-demo+no_usage=1")
    key, plaintext = limited_key(world)
    sdk(gateway, plaintext).chat.completions.create(model=deployment.model_id, messages=[{"role": "user", "content": "hi"}])
    list(
        sdk(gateway, plaintext).chat.completions.create(
            model=deployment.model_id, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
    )
    events = list(UsageEvent.objects.filter(api_key=key))
    assert len(events) == 2
    assert all(e.estimated and e.prompt_tokens > 0 and e.completion_tokens > 0 for e in events)


def test_upstream_addresses_are_checked_when_connecting(world, gateway):
    # Saved without the form's validation (as if DNS had changed since): the gateway still refuses
    # to connect to a cloud metadata address, and meters the refused call.
    metadata = make_deployment(world.org, base_url="http://169.254.169.254/v1", upstream_model="gatehouse-demo")
    key, plaintext = limited_key(world)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, plaintext).chat.completions.create(model=metadata.model_id, messages=[{"role": "user", "content": "hi"}])
    assert (caught.value.status_code, caught.value.code) == (502, "upstream_forbidden")
    event = UsageEvent.objects.get(api_key=key)
    assert (event.status_code, event.error_code, event.total_tokens) == (502, "upstream_forbidden", 0)
    assert wait_for(lambda: reserved(key) == (0, 0))


def test_upstream_key_is_decrypted_and_sent_and_a_wrong_one_is_a_502(world, demo, gateway):
    wrong = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key="not-the-key", upstream_model="gatehouse-demo")
    _, plaintext = make_key(world.org, all_models=True)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway, plaintext).chat.completions.create(model=wrong.model_id, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502  # the caller's key is fine: not a 401
    assert "not-the-key" not in json.dumps(caught.value.body)


def test_usage_writer_reconnects_when_its_database_connection_is_killed(world, demo, gateway):
    from django.db import connection

    from gateway.metering import APPLICATION_NAME

    deployment = deployment_for(world, demo)
    key, plaintext = limited_key(world)
    client = sdk(gateway, plaintext)
    client.chat.completions.create(model=deployment.model_id, messages=[{"role": "user", "content": "hi"}])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            [APPLICATION_NAME, connection.settings_dict["NAME"]],
        )
        assert cursor.rowcount >= 1

    client.chat.completions.create(model=deployment.model_id, messages=[{"role": "user", "content": "hi"}])
    assert UsageEvent.objects.filter(api_key=key).count() == 2


def _row(world, key, request_id: str, prompt: int) -> dict:
    return row(world, key, request_id, prompt=prompt, completion=10, streamed=False, client_ip="127.0.0.1", age=0)


def _closing(fn, *args):
    from django.db import connection

    try:
        return fn(*args)
    finally:
        connection.close()  # a worker thread's connection would outlive the test database


@pytest.mark.parametrize("backend", ["psycopg", "orm"])
def test_a_duplicate_request_id_is_one_row(world, backend):
    key, _ = make_key(world.org)

    async def write_twice():
        writer = UsageWriter(run_db=lambda fn, *args: asyncio.to_thread(_closing, fn, *args))
        writer.use_psycopg = backend == "psycopg"
        writer.start()
        # Same batch, then a later batch: the conflict clause makes both repeats no-ops.
        await asyncio.gather(writer.write(_row(world, key, "req_dup", 5)), writer.write(_row(world, key, "req_dup", 6)))
        await writer.write(_row(world, key, "req_dup", 7))
        await writer.write(_row(world, key, "req_other", 8))
        await writer.stop()

    run_async(write_twice())
    assert UsageEvent.objects.filter(request_id="req_dup").count() == 1
    event = UsageEvent.objects.get(request_id="req_dup")
    assert event.prompt_tokens in (5, 6)
    assert (str(event.cost), event.currency) == ("0.000050000", "EUR")  # (5 × 2 + 10 × 4) / 1e6 when 5 won
    assert UsageEvent.objects.count() == 2
