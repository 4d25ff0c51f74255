"""Celery tasks for deployments: health probes and console test calls. Schedule: console/celery.py."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError
from redis.exceptions import RedisError

from deployments import console_calls, health
from deployments.changes import deployment_changes_announce

TRANSIENT = (OperationalError, InterfaceError)
# A probe older than this is superseded by the next round; never let a backlog pile up.
PROBE_EXPIRES_SECONDS = 120


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def deployments_probe_all() -> int:
    """One probe task per replica (deployments without replica rows: one per deployment)."""
    replica_ids = health.replicas_due_for_probe()
    for replica_id in replica_ids:
        replica_probe.apply_async(args=(replica_id,), expires=PROBE_EXPIRES_SECONDS)
    bare = health.deployments_without_replicas_due_for_probe()
    for deployment_id in bare:
        deployment_probe.apply_async(args=(deployment_id,), expires=PROBE_EXPIRES_SECONDS)
    return len(replica_ids) + len(bare)


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def replica_probe(replica_id: int) -> str | None:
    replica = health.replica_health_check(replica_id=replica_id)
    return None if replica is None else replica.status


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def deployment_probe(deployment_id: int) -> str | None:
    deployment = health.deployment_health_check(deployment_id=deployment_id)
    return None if deployment is None else deployment.status


@shared_task(acks_late=True)
def run_test_call(test_call_id: int) -> str | None:
    """Not retried: a redelivery finds the call already claimed; the sweep fails it if the worker died."""
    call = console_calls.execute_test_call(test_call_id)
    return None if call is None else call.status


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def sweep_test_calls() -> int:
    return console_calls.sweep_test_calls()


# Bounded like keys.tasks.keys_announce: ~15 s of retries; after that every gateway has reloaded the
# deployment with its keys (GATEWAY_KEY_CACHE_TTL), so retrying longer buys nothing.
@shared_task(acks_late=True, autoretry_for=(RedisError, OSError), retry_backoff=1, retry_backoff_max=8, retry_jitter=False, max_retries=4)
def deployments_announce(deployment_ids: list[int]) -> None:
    deployment_changes_announce(deployment_ids=deployment_ids)
