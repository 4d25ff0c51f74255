"""SIGTERM to a worker started the production way (scripts/entrypoint.sh worker: prefork pool,
Redis broker) while a long task runs: the worker stops within compose.yaml's grace period, and the
task is not lost: its message goes back to the queue and the next worker finishes the job."""

from __future__ import annotations

import uuid

import pytest
import yaml
from django.conf import settings

from usage.models import UsageDayBucket
from usage.tasks import usage_rollup as usage_rollup_task

from .prod_support import ROOT, Process, database_url, free_port, production_env
from .test_worker_celery import calls, traffic  # noqa: F401  (the fixture world with usage)
from .usage_factory import event_totals, rollup_totals
from .worker_processes import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def start_worker(tmp_path, queue: str, name: str, **extra: str) -> Process:
    env = production_env(tmp_path, database_url=database_url(), redis_url=settings.REDIS_URL, port=free_port(), **extra)
    env["DB_CONN_MAX_AGE"] = "0"
    worker = Process(
        "worker", env, tmp_path / f"{name}.log", argv=[str(ROOT / "scripts" / "entrypoint.sh"), "worker", "-Q", queue, "-n", f"{name}@%h"]
    )
    worker.wait_output("ready.", timeout=90)
    return worker


def test_sigterm_mid_task_stops_within_the_grace_period_and_the_task_is_requeued(traffic, tmp_path):  # noqa: F811
    calls(traffic, 300, days=8)
    queue = f"shutdown-{uuid.uuid4().hex[:8]}"
    grace = int(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["worker"]["stop_grace_period"].removesuffix("s"))
    # One bucket per transaction with a pause in each: the rollup runs for minutes, far past the grace period.
    slow = {"USAGE_ROLLUP_BATCH_SIZE": "1", "USAGE_ROLLUP_TEST_PAUSE_MS": "700", "CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": "3"}
    first = start_worker(tmp_path, queue, "first", **slow)
    try:
        usage_rollup_task.apply_async(queue=queue)
        wait_for(lambda: UsageDayBucket.objects.filter(dirty=False).exists(), timeout=90, what="the rollup to be under way")
        assert first.terminate(timeout=grace) in (0, 1, -15)  # raises if it outlives the grace period
    finally:
        first.kill()
    log = first.output()
    assert "Initiating Soft Shutdown" in log, log[-3000:]
    assert rollup_totals() != event_totals(), "the first worker must have stopped mid-rollup"

    second = start_worker(tmp_path, queue, "second")
    try:
        wait_for(lambda: rollup_totals() == event_totals(), timeout=180, what="the requeued rollup to finish on the next worker")
    finally:
        second.terminate(timeout=grace)
    assert f"Task {usage_rollup_task.name}[" in second.output()
