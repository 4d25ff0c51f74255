"""Key changes during a Redis outage: the change is committed, the page shows what it must (the new
secret), and the fan-out to the gateways is retried on the worker instead of failing the request.

Transactional tests: the fan-out runs after commit (transaction.on_commit), as in production.
"""

from __future__ import annotations

import re

import httpx
import pytest
from django.test import Client
from django.urls import reverse

from keys import tasks
from keys.changes import GENERATION_KEY
from keys.models import ApiKey, ApiKeySecret
from lib.redis import redis_client
from tests import gateway_support, outages
from tests.conftest import record_sign_in
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, wait_for

pytestmark = pytest.mark.django_db(transaction=True)
redis_down = outages.redis_down  # fixture
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures
KEY_RE = re.compile(r'data-testid="new-key">(gh_live_\w+)<')


@pytest.fixture
def enqueued(monkeypatch):
    return outages.capture_enqueued(monkeypatch, tasks.keys_announce)


def console(user) -> Client:
    client = Client(raise_request_exception=False)  # a failure is a 500 page, as a person would see it
    client.force_login(user)
    record_sign_in(client, user)  # key changes need a recent sign-in
    return client


def url(name: str, **kwargs) -> str:
    return reverse(name, kwargs={"ws": "acme", **kwargs})


def generation(api_key_id: int) -> int:
    return int(redis_client().hget(GENERATION_KEY, str(api_key_id)) or 0)


def test_rotation_without_grace_during_a_redis_outage_shows_the_new_secret(world, redis_down, enqueued):
    key, old = make_key(world.org, name="billing", all_models=True)

    response = console(world.developer).post(
        url("api_key_rotate", key=key.public_id), {"grace": "none", "expected_hint": key.hint}, follow=True
    )

    assert response.status_code == 200
    new = KEY_RE.search(response.content.decode()).group(1)
    assert new != old
    assert ApiKeySecret.objects.filter(api_key=key).count() == 2  # committed: the old secret ends now, the new one works
    assert enqueued == [([key.id],)]  # the fan-out is retried on the worker, by id only


def test_create_and_revoke_during_a_redis_outage_succeed_and_queue_the_fanout(world, redis_down, enqueued):
    client = console(world.developer)

    created = client.post(url("api_key_create"), {"name": "ci", "all_models": "on"}, follow=True)
    assert created.status_code == 200
    assert KEY_RE.search(created.content.decode())
    key = ApiKey.objects.get(name="ci")

    revoked = client.post(url("api_key_revoke", key=key.public_id))
    assert revoked.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert enqueued == [([key.id],), ([key.id],)]


def test_nothing_is_queued_when_redis_answers(world, enqueued):
    key, _ = make_key(world.org, name="billing", all_models=True)
    before = generation(key.id)
    response = console(world.developer).post(url("api_key_revoke", key=key.public_id))
    assert response.status_code == 302
    assert generation(key.id) == before + 1
    assert enqueued == []


def test_the_worker_retry_reaches_the_gateways_that_cached_the_old_secret(world, demo, gateway, settings):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    key, old = make_key(world.org, name="billing", all_models=True)

    def call(secret: str) -> int:
        body = chat_body(deployment.model_id, "hi", max_tokens=5)
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {secret}"}).status_code

    assert call(old) == 200  # the gateway has the old secret cached (its TTL here is 10 minutes)

    real = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{gateway_support.free_port()}/0"
    redis_client.cache_clear()
    sent: list = []
    original = tasks.keys_announce.apply_async
    tasks.keys_announce.apply_async = lambda args, **options: sent.append(args)
    try:
        response = console(world.developer).post(
            url("api_key_rotate", key=key.public_id), {"grace": "none", "expected_hint": key.hint}, follow=True
        )
        assert response.status_code == 200
        new = KEY_RE.search(response.content.decode()).group(1)
    finally:
        tasks.keys_announce.apply_async = original
        settings.REDIS_URL = real
        redis_client.cache_clear()

    assert call(old) == 200  # nobody told this gateway yet: the window the retry closes
    assert sent == [([key.id],)]
    tasks.keys_announce.run(*sent[0])  # what the worker runs once Redis answers again
    assert wait_for(lambda: call(old) == 401)
    assert call(new) == 200


def test_the_retry_task_is_bounded_and_retries_only_redis_failures():
    task = tasks.keys_announce
    from redis.exceptions import RedisError

    assert RedisError in task.autoretry_for
    assert 1 <= task.max_retries <= 10
    assert task.acks_late
