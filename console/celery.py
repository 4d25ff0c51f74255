from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("gatehouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The whole periodic schedule, in one place. Each entry expires before its next run, so a worker
# that was down does not replay a backlog of identical runs when it comes back.
app.conf.beat_schedule = {
    "usage-rollup": {
        "task": "usage.tasks.usage_rollup",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    "usage-reconcile-recent": {
        "task": "usage.tasks.usage_reconcile",
        "schedule": crontab(minute="7,22,37,52"),
        "options": {"expires": 600},
    },
    "usage-reconcile-all": {
        "task": "usage.tasks.usage_reconcile",
        "schedule": crontab(hour=3, minute=17),
        "kwargs": {"days": 0},
        "options": {"expires": 3600},
    },
    "deployments-health": {
        "task": "deployments.tasks.deployments_probe_all",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Fails test calls no worker picked up within two minutes (deployments.console_calls.QUEUED_TOO_LONG).
    "test-calls-sweep": {
        "task": "deployments.tasks.sweep_test_calls",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
}
