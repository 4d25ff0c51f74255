"""Deployment changes during a Redis outage: the change is committed, the console answers as usual
(never a 500 after commit), and the fan-out to the gateways is retried on the worker, as for keys
(tests/test_keys_fanout.py).

Transactional tests: the fan-out runs after commit (transaction.on_commit), as in production.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from redis.exceptions import RedisError

from deployments import changes, tasks
from deployments.models import Deployment, DeploymentStatus, ModelGrant
from lib.redis import redis_client
from tests import outages
from tests.factories import make_deployment

pytestmark = pytest.mark.django_db(transaction=True)
redis_down = outages.redis_down  # fixture


@pytest.fixture
def enqueued(monkeypatch):
    return outages.capture_enqueued(monkeypatch, tasks.deployments_announce)


def console(user) -> Client:
    client = Client(raise_request_exception=False)  # a failure is a 500 page, as a person would see it
    client.force_login(user)
    return client


def url(name: str, deployment: Deployment) -> str:
    return reverse(name, kwargs={"ws": "acme", "deployment": deployment.public_id})


def generation(deployment_id: int) -> int:
    return int(redis_client().hget(changes.GENERATION_KEY, str(deployment_id)) or 0)


def test_stop_and_start_during_a_redis_outage_commit_and_queue_the_fanout(world, redis_down, enqueued):
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1")
    client = console(world.owner)

    stopped = client.post(url("deployment_stop", deployment))
    assert stopped.status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.STOPPED

    started = client.post(url("deployment_start", deployment))
    assert started.status_code == 302
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.RUNNING
    assert enqueued == [([deployment.id],), ([deployment.id],)]  # by id only, once per change


def test_a_grant_during_a_redis_outage_commits_and_queues_the_fanout(world, redis_down, enqueued):
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1")
    response = console(world.owner).post(
        reverse("grants_save", kwargs={"ws": "acme", "deployment": deployment.public_id}), {"workspaces": [world.sub.slug]}
    )
    assert response.status_code == 302
    assert ModelGrant.objects.filter(deployment=deployment, workspace=world.sub).exists()
    assert enqueued and all(args == ([deployment.id],) for args in enqueued)


def test_nothing_is_queued_when_redis_answers(world, enqueued):
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1")
    before = generation(deployment.id)
    assert console(world.owner).post(url("deployment_stop", deployment)).status_code == 302
    assert generation(deployment.id) == before + 1
    assert enqueued == []


def test_the_worker_retry_bumps_the_generation_gateways_compare(world, redis_down, enqueued, settings):
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1")
    assert console(world.owner).post(url("deployment_stop", deployment)).status_code == 302
    assert enqueued == [([deployment.id],)]

    with pytest.raises(RedisError):  # still down: the task raises, so Celery retries it
        tasks.deployments_announce.run(*enqueued[0])

    settings.REDIS_URL = redis_down
    redis_client.cache_clear()
    before = generation(deployment.id)
    tasks.deployments_announce.run(*enqueued[0])  # what the worker runs once Redis answers again
    assert generation(deployment.id) == before + 1


def test_the_retry_task_is_bounded_and_retries_only_redis_failures():
    task = tasks.deployments_announce
    assert RedisError in task.autoretry_for
    assert 1 <= task.max_retries <= 10
    assert task.acks_late
