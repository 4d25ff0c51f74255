"""Celery tasks for accounting: thin, idempotent, retried only on transient database errors.

The periodic schedule is in console/celery.py.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from celery import shared_task
from django.db import InterfaceError, OperationalError

from usage import services

logger = logging.getLogger(__name__)

# OperationalError covers lost connections, lock timeouts and serialization failures; anything
# else is a bug and must fail loudly instead of being retried.
TRANSIENT = (OperationalError, InterfaceError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 2, "retry_backoff_max": 60, "retry_jitter": True, "max_retries": 5}


@shared_task(acks_late=True, **RETRY)
def usage_rollup() -> dict:
    report = services.usage_rollup()
    if report.events_seen or report.day_buckets or report.hour_buckets or report.rezoned_workspaces:
        logger.info("usage rollup: %s", report)
    return asdict(report)


@shared_task(acks_late=True, **RETRY)
def usage_reconcile(days: int | None = None) -> dict:
    report = services.usage_reconcile(days=days)
    if report.healing:
        usage_rollup.delay()  # the drifting days are dirty again: recompute them now, not on the next schedule
    logger.info(
        "usage reconcile since %s: %d checked, %d in flight, %d drifts, %d resolved",
        report.since,
        report.checked,
        report.in_flight,
        len(report.drifts),
        report.resolved,
    )
    return {"checked": report.checked, "drifts": len(report.drifts), "resolved": report.resolved, "healing": report.healing}
