"""Celery tasks for deployments: health probes (test calls come later). Schedule: console/celery.py."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from deployments import health

TRANSIENT = (OperationalError, InterfaceError)
# A probe older than this is superseded by the next round; never let a backlog pile up.
PROBE_EXPIRES_SECONDS = 120


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def deployments_probe_all() -> int:
    ids = health.deployments_due_for_probe()
    for deployment_id in ids:
        deployment_probe.apply_async(args=(deployment_id,), expires=PROBE_EXPIRES_SECONDS)
    return len(ids)


@shared_task(acks_late=True, autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=3)
def deployment_probe(deployment_id: int) -> str | None:
    deployment = health.deployment_health_check(deployment_id=deployment_id)
    return None if deployment is None else deployment.status
