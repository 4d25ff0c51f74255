"""End to end with a real Celery worker process on the Redis broker and the pytest database.

The worker runs `celery -A console worker` in its own process group on a queue of its own; the
tests commit their data (transaction=True), send the real tasks, and read what the worker wrote.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.utils import timezone

from deployments.models import Deployment, DeploymentStatus
from deployments.tasks import deployment_probe
from lib.crypto import encrypt
from usage.models import UsageCursor, UsageDaily, UsageDayBucket, UsageEvent, UsageHourBucket, UsageHourly
from usage.services import usage_reconcile, usage_rollup
from usage.tasks import usage_rollup as usage_rollup_task

from .usage_factory import event, event_totals, make_deployment, make_key, rollup_totals, snapshots
from .worker_processes import Worker, free_port, start_upstream, stop, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(tmp_path):
    w = Worker(tmp_path)
    yield w
    w.stop()


@pytest.fixture
def traffic(world):
    """The organisation and its sub-workspace with keys and a priced deployment."""
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", at=timezone.now() - timedelta(days=60))
    return world


def calls(w, n: int, *, days: int = 3, seed: int = 7) -> None:
    rng = random.Random(seed)
    now = timezone.now()
    for i in range(n):
        ws, key = (w.org, w.key) if i % 3 else (w.sub, w.sub_key)
        at = now - timedelta(days=rng.randrange(days), minutes=rng.randrange(600), seconds=rng.randrange(60))
        event(
            ws,
            at,
            key=key,
            deployment=w.chat,
            prompt=rng.randrange(1, 3000),
            completion=rng.randrange(0, 800),
            status=rng.choice([200, 200, 200, 429, 502]),
            latency=rng.randrange(20, 4000),
            estimated=rng.random() < 0.1,
        )


def idle_in_transaction() -> int:
    with connection.cursor() as c:
        c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND state LIKE 'idle in transaction%%'"
        )
        return c.fetchone()[0]


def reset_rollups() -> None:
    for model in (UsageDaily, UsageHourly, UsageDayBucket, UsageHourBucket, UsageCursor):
        model.objects.all().delete()


def test_worker_rollup_totals_equal_the_events_exactly(traffic, worker):
    calls(traffic, 300)

    worker.run(usage_rollup_task)

    assert rollup_totals() == event_totals()
    assert event_totals()["requests"] == 300
    for ws in (traffic.org, traffic.sub):
        assert rollup_totals(workspace=ws) == event_totals(workspace=ws)
    assert not UsageDayBucket.objects.filter(dirty=True).exists()
    assert usage_reconcile(days=0).ok


def test_worker_killed_mid_aggregation_then_rerun_matches_an_uninterrupted_run(traffic, tmp_path):
    calls(traffic, 400, days=8)
    # One bucket per transaction and a pause inside it, so SIGKILL lands while a bucket is half written.
    slow = Worker(tmp_path, {"USAGE_ROLLUP_BATCH_SIZE": "1", "USAGE_ROLLUP_TEST_PAUSE_MS": "700"})
    try:
        slow.send(usage_rollup_task)
        wait_for(lambda: UsageDayBucket.objects.filter(dirty=False).count() >= 3, timeout=120, what="three buckets done")
    finally:
        slow.kill()
    # The killed worker's database session ends when PostgreSQL sees its socket close.
    wait_for(lambda: not idle_in_transaction(), timeout=30, what="the killed worker's transaction to be rolled back")

    done, dirty = UsageDayBucket.objects.filter(dirty=False).count(), UsageDayBucket.objects.filter(dirty=True).count()
    assert done >= 3 and dirty >= 1, "the kill must land mid-run"
    assert set(UsageDaily.objects.values_list("workspace_id", "day")) == set(
        UsageDayBucket.objects.filter(dirty=False).values_list("workspace_id", "day")
    ), "only committed buckets have rows: the half-written one was rolled back"
    assert rollup_totals()["requests"] < 400

    rerun = Worker(tmp_path)
    try:
        rerun.run(usage_rollup_task)
    finally:
        rerun.stop()
    after_crash = snapshots()
    assert rollup_totals() == event_totals()

    reset_rollups()
    usage_rollup()  # uninterrupted, in this process
    assert snapshots() == after_crash


def test_the_same_task_delivered_twice_changes_nothing(traffic, worker):
    calls(traffic, 120)
    task_id = worker.run(usage_rollup_task)
    first = snapshots()
    computed = sorted(UsageDayBucket.objects.values_list("id", "computed_at"))

    worker.run(usage_rollup_task, task_id=task_id)  # redelivery: same message id

    assert worker.succeeded(usage_rollup_task, task_id) == 2
    assert snapshots() == first
    assert sorted(UsageDayBucket.objects.values_list("id", "computed_at")) == computed  # no bucket was even recomputed
    assert rollup_totals() == event_totals()


def test_an_event_for_yesterday_after_yesterday_was_rolled_up_is_counted(traffic, worker):
    calls(traffic, 60, days=2)
    worker.run(usage_rollup_task)
    yesterday = timezone.now().date() - timedelta(days=1)
    before = rollup_totals(workspace=traffic.org, day=yesterday)

    late = event(
        traffic.org,
        datetime.combine(yesterday, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12),
        key=traffic.key,
        deployment=traffic.chat,
        prompt=5000,
        completion=500,
    )
    worker.run(usage_rollup_task)

    after = rollup_totals(workspace=traffic.org, day=yesterday)
    assert after["requests"] == before["requests"] + 1
    assert after["total_tokens"] == before["total_tokens"] + 5500
    assert after["cost"] == before["cost"] + late.cost
    assert rollup_totals() == event_totals()


def test_a_price_change_does_not_alter_past_cost(traffic, worker):
    calls(traffic, 60, days=3)
    worker.run(usage_rollup_task)
    today = timezone.now().date()
    past = {day: rollup_totals(day=day)["cost"] for day in (today - timedelta(days=1), today - timedelta(days=2))}
    assert all(cost > 0 for cost in past.values())

    traffic.chat.prices.create(effective_from=timezone.now(), input_per_million=Decimal("9"), output_per_million=Decimal("9"))
    new = event(traffic.org, timezone.now(), key=traffic.key, deployment=traffic.chat, prompt=1000, completion=1000)
    assert new.cost == Decimal("0.018000000")
    worker.run(usage_rollup_task)

    assert {day: rollup_totals(day=day)["cost"] for day in past} == past
    assert rollup_totals() == event_totals()


def test_worker_probes_deployments_on_the_beat_fan_out(world, worker):
    port = free_port()
    upstream = start_upstream(port, "sk-up-" + "u" * 20)
    try:
        up = Deployment.objects.create(
            workspace=world.org,
            name="up",
            model_id="@acme/up",
            upstream_base_url=f"http://127.0.0.1:{port}/v1",
            upstream_api_key_encrypted=encrypt("sk-up-" + "u" * 20),
            status=DeploymentStatus.UNREACHABLE,
        )
        down = Deployment.objects.create(
            workspace=world.org, name="down", model_id="@acme/down", upstream_base_url=f"http://127.0.0.1:{free_port()}/v1"
        )
        # The beat fan-out (deployments_probe_all, tested on its own) enqueues one probe per deployment.
        for d in (up, down):
            worker.run(deployment_probe, d.id)
    finally:
        stop(upstream)
    up.refresh_from_db()
    down.refresh_from_db()
    assert (up.status, up.last_error) == (DeploymentStatus.RUNNING, "")
    assert down.status == DeploymentStatus.UNREACHABLE and down.last_checked_at is not None


def test_days_are_local_to_each_workspace(traffic, worker):
    traffic.sub.time_zone = "Pacific/Auckland"
    traffic.sub.save(update_fields=["time_zone"])
    calls(traffic, 90, days=2)

    worker.run(usage_rollup_task)

    auckland = ZoneInfo("Pacific/Auckland")
    expected: dict = {}
    for at in UsageEvent.objects.filter(workspace=traffic.sub).values_list("created_at", flat=True):
        expected[at.astimezone(auckland).date()] = expected.get(at.astimezone(auckland).date(), 0) + 1
    got = {day: rollup_totals(workspace=traffic.sub, day=day)["requests"] for day in expected}
    assert got == expected and sum(got.values()) == 30
    assert usage_reconcile(days=0).ok
