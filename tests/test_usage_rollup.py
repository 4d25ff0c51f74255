"""Usage aggregation at the service level: totals, local days, idempotency, late events, crashes, gaps."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from console.audit import Actor
from console.services import workspace_create, workspace_update
from usage import latency, rollup
from usage.models import (
    UsageCursor,
    UsageDaily,
    UsageDailyTotal,
    UsageDayBucket,
    UsageEvent,
    UsageHourBucket,
    UsageHourly,
    UsageMonthly,
    UsageRollupZone,
)
from usage.services import usage_backfill, usage_reconcile, usage_rollup

from .usage_factory import coarse_from_daily, event, event_totals, make_deployment, make_key, rollup_totals, snapshot, snapshots

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


@pytest.fixture
def acme(world):
    """The world's organisation with two keys and two priced deployments, and a sub-workspace key."""
    world.key_a, world.key_b = make_key(world.org, "backend"), make_key(world.org, "batch")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", price=("0.50", "1.50"), at=NOW - timedelta(days=30))
    world.embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=NOW - timedelta(days=30))
    return world


def _history(w) -> list[UsageEvent]:
    """Three days of mixed traffic in the organisation and its sub-workspace."""
    events = []
    for day in range(3):
        base = NOW - timedelta(days=day, hours=2)
        for i in range(6):
            events.append(
                event(
                    w.org,
                    base + timedelta(minutes=i),
                    key=w.key_a,
                    deployment=w.chat,
                    prompt=100 + i,
                    completion=10 * i,
                    latency=100 * (i + 1),
                    status=500 if i == 5 else 200,
                )
            )
        events.append(event(w.org, base, key=w.key_b, deployment=w.embed, prompt=4000, completion=0, estimated=True, latency=40))
        events.append(event(w.sub, base, key=w.sub_key, deployment=w.chat, prompt=7, completion=3, status=429, latency=5))
    return events


def test_rollup_totals_equal_the_events_exactly(acme):
    _history(acme)
    assert UsageDaily.objects.count() == 0

    report = usage_rollup(now=NOW)

    assert report.events_seen == 24
    for ws in (acme.org, acme.sub):
        for day in (date(2026, 3, 8), date(2026, 3, 9), date(2026, 3, 10)):
            start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
            expected = event_totals(workspace=ws, created_at__gte=start, created_at__lt=start + timedelta(days=1))
            assert rollup_totals(workspace=ws, day=day) == expected
            assert expected["requests"] > 0
    assert rollup_totals()["cost"] == event_totals()["cost"] > 0
    # The hourly rollups (all inside the last 48 hours here except day -2) add up as well.
    recent = NOW - timedelta(hours=48)
    assert rollup_totals(UsageHourly) == event_totals(created_at__gte=rollup.hour_floor(recent))


def test_rollup_row_holds_each_metric_for_its_key_and_deployment(acme):
    _history(acme)
    usage_rollup(now=NOW)

    row = UsageDaily.objects.get(workspace=acme.org, day=date(2026, 3, 10), api_key=acme.key_a, deployment=acme.chat)
    assert (row.requests, row.errors) == (6, 1)
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (615, 150, 765)
    assert (row.estimated_requests, row.estimated_tokens) == (0, 0)
    # 615 × 0.50 + 150 × 1.50 per million
    assert row.cost == Decimal("0.000532500")
    # latencies 100, 200, …, 600: one request in each of their buckets
    assert row.latency_histogram == latency.pack([100, 200, 300, 400, 500, 600])
    assert row.latency_max_ms == 600
    assert latency.p95(row.latency_histogram, slowest=row.latency_max_ms) == 600  # 740 in the bucket, but none was slower
    assert (row.model, row.currency) == ("@acme/chat", "USD")

    embed = UsageDaily.objects.get(workspace=acme.org, day=date(2026, 3, 10), deployment=acme.embed)
    assert (embed.estimated_requests, embed.estimated_tokens) == (1, 4000)


def test_the_database_buckets_every_latency_as_python_does(acme):
    # Both sides of every bucket boundary, zero, and past the largest bound: PostgreSQL's
    # width_bucket (SQLite's Python aggregate in test_usage_sqlite) must agree with bisect.
    latencies = sorted({0, 1, 10**7, *(ms for b in latency.BOUNDS for ms in (b - 1, b, b + 1))})
    at = datetime(2026, 3, 10, 12, tzinfo=UTC)
    for ms in latencies:
        event(acme.org, at, key=acme.key_a, deployment=acme.chat, latency=ms)
    usage_rollup(now=NOW)

    row = UsageDaily.objects.get(workspace=acme.org, day=date(2026, 3, 10), api_key=acme.key_a, deployment=acme.chat)
    assert row.latency_histogram == latency.pack(latencies)
    assert latency.unpack(row.latency_histogram)[-1] == 3  # 600 000 ms, 600 001 ms and 10⁷ ms: the open top bucket
    assert UsageHourly.objects.get(workspace=acme.org, hour=at, api_key=acme.key_a).latency_histogram == row.latency_histogram


def test_day_is_the_local_day_of_the_workspace_including_dst_and_half_hour_zones(acme):
    actor = Actor.system("tests")
    berlin = workspace_create(name="Berlin", slug="berlin", time_zone="Europe/Berlin", actor=actor)
    kolkata = workspace_create(name="Kolkata", slug="kolkata", time_zone="Asia/Kolkata", actor=actor)
    # Berlin: 22:30 UTC is 23:30 on Mar 28 (CET) but 00:30 on Mar 30 (CEST, after the switch).
    event(berlin, datetime(2026, 3, 28, 22, 30, tzinfo=UTC))
    event(berlin, datetime(2026, 3, 29, 22, 30, tzinfo=UTC))
    # Kolkata (+05:30): one UTC hour spans two local days.
    event(kolkata, datetime(2026, 3, 27, 18, 15, tzinfo=UTC))
    event(kolkata, datetime(2026, 3, 27, 18, 45, tzinfo=UTC))
    event(acme.org, datetime(2026, 3, 28, 22, 30, tzinfo=UTC))

    usage_rollup(now=datetime(2026, 3, 30, 12, tzinfo=UTC))

    days = lambda ws: dict(UsageDaily.objects.filter(workspace=ws).values_list("day", "requests"))  # noqa: E731
    assert days(berlin) == {date(2026, 3, 28): 1, date(2026, 3, 30): 1}
    assert days(kolkata) == {date(2026, 3, 27): 1, date(2026, 3, 28): 1}
    assert days(acme.org) == {date(2026, 3, 28): 1}


def test_monthly_and_day_total_rows_add_up_the_events_of_their_month_and_day(acme):
    _history(acme)
    # February in the organisation (Europe/Berlin: 23:30 UTC on Feb 28 is already March 1 there).
    acme.org.time_zone = "Europe/Berlin"
    acme.org.save(update_fields=["time_zone"])
    event(acme.org, datetime(2026, 2, 3, 9, 0, tzinfo=UTC), key=acme.key_a, deployment=acme.chat, prompt=500, completion=50, latency=900)
    event(acme.org, datetime(2026, 2, 28, 23, 30, tzinfo=UTC), key=acme.key_a, deployment=acme.chat, prompt=9, completion=1)

    usage_rollup(now=NOW)

    berlin = ZoneInfo("Europe/Berlin")
    for month, next_month in ((date(2026, 2, 1), date(2026, 3, 1)), (date(2026, 3, 1), date(2026, 4, 1))):
        start, end = rollup.local_day_start(month, berlin), rollup.local_day_start(next_month, berlin)
        expected = event_totals(workspace=acme.org, created_at__gte=start, created_at__lt=end)
        assert rollup_totals(UsageMonthly, workspace=acme.org, month=month) == expected
        assert rollup_totals(UsageDailyTotal, workspace=acme.org, day__gte=month, day__lt=next_month) == expected
    assert rollup_totals(UsageMonthly, workspace=acme.org, month=date(2026, 2, 1))["requests"] == 1
    # The month's latency histogram is its days' added up: February's one event in Berlin (900 ms)…
    assert UsageMonthly.objects.get(workspace=acme.org, month=date(2026, 2, 1)).latency_histogram == latency.pack([900])
    # …and March's are all of March's events, the 250 ms one of Feb 28 23:30 UTC included.
    march = UsageMonthly.objects.filter(workspace=acme.org, month=date(2026, 3, 1)).values_list("latency_histogram", flat=True)
    in_march = UsageEvent.objects.filter(
        workspace=acme.org,
        created_at__gte=rollup.local_day_start(date(2026, 3, 1), berlin),
        created_at__lt=rollup.local_day_start(date(2026, 4, 1), berlin),
    )
    assert sum(march) == latency.pack(in_march.values_list("latency_ms", flat=True))
    assert rollup_totals(UsageMonthly)["cost"] == rollup_totals(UsageDailyTotal)["cost"] == event_totals()["cost"]
    assert (snapshot(UsageMonthly), snapshot(UsageDailyTotal)) == coarse_from_daily()

    # A late event re-opens its day, and with it the day's total and its month's rows.
    before = rollup_totals(UsageMonthly, workspace=acme.org, month=date(2026, 2, 1))
    late = event(acme.org, datetime(2026, 2, 10, 12, 0, tzinfo=UTC), key=acme.key_b, deployment=acme.embed, prompt=1000, completion=0)
    report = usage_rollup(now=NOW + timedelta(minutes=5))
    assert report.day_buckets == 1
    after = rollup_totals(UsageMonthly, workspace=acme.org, month=date(2026, 2, 1))
    assert (after["requests"], after["cost"]) == (before["requests"] + 1, before["cost"] + late.cost)
    assert rollup_totals(UsageDailyTotal, workspace=acme.org, day=date(2026, 2, 10))["requests"] == 1
    assert (snapshot(UsageMonthly), snapshot(UsageDailyTotal)) == coarse_from_daily()


def test_running_twice_gives_identical_rows_and_does_no_work(acme):
    _history(acme)
    usage_rollup(now=NOW)
    first = snapshots()
    done_at = set(UsageDayBucket.objects.values_list("computed_at", flat=True))

    report = usage_rollup(now=NOW + timedelta(minutes=1))

    assert (report.events_seen, report.day_buckets, report.hour_buckets) == (0, 0, 0)
    assert snapshots() == first
    assert set(UsageDayBucket.objects.values_list("computed_at", flat=True)) == done_at
    # A full backfill recomputes everything and still lands on the same rows.
    usage_backfill(now=NOW + timedelta(minutes=2))
    assert snapshots() == first


def test_late_event_reopens_only_its_bucket(acme):
    _history(acme)
    usage_rollup(now=NOW)
    yesterday = date(2026, 3, 9)
    before = rollup_totals(workspace=acme.org, day=yesterday)
    today_bucket = UsageDayBucket.objects.get(workspace=acme.org, day=date(2026, 3, 10))

    late = event(acme.org, datetime(2026, 3, 9, 18, 0, tzinfo=UTC), key=acme.key_a, deployment=acme.chat, prompt=1000, completion=1000)
    later = NOW + timedelta(minutes=5)
    report = usage_rollup(now=later)

    assert report.events_seen == 1
    assert report.day_buckets == 1  # yesterday only: nothing else is rescanned
    after = rollup_totals(workspace=acme.org, day=yesterday)
    assert after["requests"] == before["requests"] + 1
    assert after["cost"] == before["cost"] + late.cost
    today_bucket.refresh_from_db()
    assert today_bucket.computed_at == NOW  # untouched by the late event's run
    assert UsageDayBucket.objects.get(workspace=acme.org, day=yesterday).computed_at == later


def test_price_change_does_not_alter_past_cost(acme):
    _history(acme)
    usage_rollup(now=NOW)
    past = rollup_totals(workspace=acme.org, day=date(2026, 3, 9))["cost"]

    # The price doubles from now on; a new call is costed at the new price, yesterday's are not.
    acme.chat.prices.create(effective_from=NOW, input_per_million=Decimal("1.00"), output_per_million=Decimal("3.00"))
    new = event(acme.org, NOW + timedelta(minutes=1), key=acme.key_a, deployment=acme.chat, prompt=1_000_000, completion=0)
    assert new.cost == Decimal("1.000000000")
    today_before = rollup_totals(workspace=acme.org, day=date(2026, 3, 10))["cost"]
    usage_rollup(now=NOW + timedelta(minutes=2))
    usage_backfill(now=NOW + timedelta(minutes=3))  # even a full recompute

    assert rollup_totals(workspace=acme.org, day=date(2026, 3, 9))["cost"] == past
    assert rollup_totals(workspace=acme.org, day=date(2026, 3, 10))["cost"] == today_before + Decimal("1.000000000")
    # The day now has one row per price version, each holding the tokens costed at that price.
    versions = UsageDaily.objects.filter(workspace=acme.org, day=date(2026, 3, 10), api_key=acme.key_a, deployment=acme.chat)
    by_price = {(r.input_price_per_million, r.output_price_per_million): r for r in versions}
    assert set(by_price) == {(Decimal("0.50"), Decimal("1.50")), (Decimal("1.00"), Decimal("3.00"))}
    assert (by_price[Decimal("1.00"), Decimal("3.00")].requests, by_price[Decimal("1.00"), Decimal("3.00")].prompt_tokens) == (1, 1_000_000)
    assert by_price[Decimal("0.50"), Decimal("1.50")].cost == Decimal("0.000532500")


def test_crash_inside_a_batch_leaves_the_bucket_for_the_next_run(acme, settings, monkeypatch):
    _history(acme)
    usage_rollup(now=NOW)
    uninterrupted = snapshots()
    for model in (UsageDaily, UsageHourly, UsageMonthly, UsageDailyTotal, UsageDayBucket, UsageHourBucket, UsageCursor):
        model.objects.all().delete()

    settings.USAGE_ROLLUP_BATCH_SIZE = 1
    batches = []

    def crash_on_third_batch():
        batches.append(1)
        if len(batches) == 3:
            raise ConnectionError("worker died")

    monkeypatch.setattr(rollup, "_test_pause", crash_on_third_batch)
    with pytest.raises(ConnectionError):
        usage_rollup(now=NOW)

    # Two buckets committed, the third rolled back and still dirty, the rest untouched.
    assert UsageDayBucket.objects.filter(dirty=False).count() == 2
    assert UsageDayBucket.objects.filter(dirty=True).count() == 4
    assert UsageDaily.objects.values("workspace", "day").distinct().count() == 2
    # The coarser rows were written in the committed batches' transactions, nowhere else.
    assert (snapshot(UsageMonthly), snapshot(UsageDailyTotal)) == coarse_from_daily()
    assert UsageDailyTotal.objects.values("workspace", "day").distinct().count() == 2

    monkeypatch.undo()
    usage_rollup(now=NOW + timedelta(seconds=30))
    assert snapshots() == uninterrupted


def test_hourly_rollups_cover_the_last_48_hours_and_older_hours_are_pruned(acme):
    event(acme.org, NOW - timedelta(hours=1))
    event(acme.org, NOW - timedelta(hours=47))
    event(acme.org, NOW - timedelta(hours=60))
    usage_rollup(now=NOW)

    hours = set(UsageHourly.objects.values_list("hour", flat=True))
    assert hours == {rollup.hour_floor(NOW - timedelta(hours=1)), rollup.hour_floor(NOW - timedelta(hours=47))}
    assert rollup_totals()["requests"] == 3

    usage_rollup(now=NOW + timedelta(hours=24))
    assert set(UsageHourly.objects.values_list("hour", flat=True)) == {rollup.hour_floor(NOW - timedelta(hours=1))}
    assert not UsageHourBucket.objects.filter(hour__lt=NOW - timedelta(hours=25)).exists()


def _pending() -> list[list[int]]:
    return [g[:2] for g in UsageCursor.objects.get().pending_gaps]


@pytest.mark.django_db(transaction=True)
def test_event_committed_out_of_id_order_is_counted(acme):
    """A gateway transaction that took an id first but commits last is not skipped by the high-water mark."""
    event(acme.org, NOW - timedelta(minutes=30))
    usage_rollup(now=NOW)
    params = connection.get_connection_params()
    other = psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")})
    try:
        slow = event(acme.org, NOW - timedelta(minutes=20), save=False)
        with other.cursor() as cur:  # takes the next id, does not commit yet
            cur.execute(
                "INSERT INTO usage_usageevent (request_id, created_at, workspace_id, model, endpoint, prompt_tokens, completion_tokens,"
                " total_tokens, estimated, status_code, error_code, aborted, streamed, is_test_call, latency_ms,"
                " input_price_per_million, output_price_per_million, currency, cost)"
                " VALUES (%s, %s, %s, 'slow', 'chat.completions', 1, 1, 2, false, 200, '', false, false, false, 10, 0, 0, 'USD', 0)"
                " RETURNING id",
                [slow.request_id, slow.created_at, acme.org.id],
            )
            slow_id = cur.fetchone()[0]
        fast = event(acme.org, NOW - timedelta(minutes=10))
        assert fast.id > slow_id

        report = usage_rollup(now=NOW + timedelta(minutes=1))
        assert report.events_seen == 1
        assert [slow_id, slow_id] in _pending()
        assert rollup_totals(workspace=acme.org)["requests"] == 2

        other.commit()
        report = usage_rollup(now=NOW + timedelta(minutes=2))
        assert report.events_seen == 1
        assert not any(low <= slow_id <= high for low, high in _pending())
        assert rollup_totals(workspace=acme.org)["requests"] == 3 == event_totals(workspace=acme.org)["requests"]
    finally:
        other.close()


@pytest.mark.django_db(transaction=True)
def test_an_id_that_never_commits_is_given_up_after_the_ttl(acme):
    event(acme.org, NOW - timedelta(minutes=30))
    usage_rollup(now=NOW)
    params = connection.get_connection_params()
    with psycopg.connect(**{k: v for k, v in params.items() if k in ("dbname", "user", "host", "port", "password")}) as other:
        lost = other.execute("SELECT nextval(pg_get_serial_sequence('usage_usageevent', 'id'))").fetchone()[0]  # never used
        other.rollback()
    event(acme.org, NOW - timedelta(minutes=10))

    usage_rollup(now=NOW + timedelta(minutes=1))
    assert [lost, lost] in _pending()
    usage_rollup(now=NOW + timedelta(seconds=60 + settings.USAGE_GAP_TTL_SECONDS - 1))
    assert [lost, lost] in _pending()
    usage_rollup(now=NOW + timedelta(seconds=62 + settings.USAGE_GAP_TTL_SECONDS))
    assert _pending() == []
    assert rollup_totals(workspace=acme.org)["requests"] == 2


def test_aggregate_usage_command_backfills_one_workspace_from_a_date(acme, capsys):
    _history(acme)
    usage_rollup(now=NOW)
    good = snapshots()
    # Damage rows in both workspaces; the command repairs only what it is asked to.
    UsageDaily.objects.filter(workspace=acme.org).update(requests=999)
    UsageDaily.objects.filter(workspace=acme.sub).update(requests=999)

    call_command("aggregate_usage", "--workspace", "acme", "--since", "2026-03-09")

    out = capsys.readouterr().out
    assert "workspace acme from 2026-03-09" in out and "2 day bucket(s)" in out
    assert set(UsageDaily.objects.filter(workspace=acme.org, day__gte=date(2026, 3, 9)).values_list("requests", flat=True)) != {999}
    assert set(UsageDaily.objects.filter(workspace=acme.org, day=date(2026, 3, 8)).values_list("requests", flat=True)) == {999}
    assert set(UsageDaily.objects.filter(workspace=acme.sub).values_list("requests", flat=True)) == {999}

    call_command("aggregate_usage")
    assert snapshots()[0] == good[0]


def test_aggregate_usage_command_refuses_bad_input(acme):
    with pytest.raises(CommandError, match="No workspace with slug 'nope'"):
        call_command("aggregate_usage", "--workspace", "nope")
    with pytest.raises(CommandError, match="not a date"):
        call_command("aggregate_usage", "--since", "yesterday")
    assert UsageDayBucket.objects.count() == 0


def test_time_zone_change_rebuild_moves_rows_to_the_new_local_days(acme):
    event(acme.sub, datetime(2026, 3, 9, 23, 30, tzinfo=UTC))
    usage_rollup(now=NOW)
    assert list(UsageDaily.objects.filter(workspace=acme.sub).values_list("day", flat=True)) == [date(2026, 3, 9)]

    acme.sub.time_zone = "Europe/Berlin"
    acme.sub.save(update_fields=["time_zone"])
    usage_backfill(workspace=acme.sub, now=NOW + timedelta(minutes=1))  # what aggregate_usage --workspace runs

    assert list(UsageDaily.objects.filter(workspace=acme.sub).values_list("day", flat=True)) == [date(2026, 3, 10)]


def test_time_zone_change_in_the_console_moves_daily_rows_on_the_next_pass(acme):
    late, morning = datetime(2026, 3, 9, 23, 30, tzinfo=UTC), datetime(2026, 3, 10, 8, 0, tzinfo=UTC)
    event(acme.sub, late, prompt=11)
    event(acme.sub, morning, prompt=22)
    _history(acme)
    usage_rollup(now=NOW)
    sub_days = lambda: dict(  # noqa: E731
        UsageDaily.objects.filter(workspace=acme.sub, api_key=None).values_list("day", "prompt_tokens")
    )
    assert sub_days() == {date(2026, 3, 9): 11, date(2026, 3, 10): 22}
    org_rows, org_done = snapshot_of(acme.org), computed_at(acme.org)

    workspace_update(workspace=acme.sub, actor=Actor.system("tests"), name=acme.sub.name, time_zone="Europe/Berlin")
    assert sub_days() == {date(2026, 3, 9): 11, date(2026, 3, 10): 22}  # nothing moves until the pass runs

    report = usage_rollup(now=NOW + timedelta(minutes=1))

    assert report.rezoned_workspaces == 1
    # 23:30 UTC is 00:30 the next day in Berlin: both events now fall on 10 March, and the
    # 9 March row (no events in the new zone) is gone.
    assert sub_days() == {date(2026, 3, 10): 33}
    for day in UsageDaily.objects.filter(workspace=acme.sub).values_list("day", flat=True).distinct():
        start = datetime.combine(day, datetime.min.time(), tzinfo=acme.sub.tz)
        expected = event_totals(workspace=acme.sub, created_at__gte=start, created_at__lt=start + timedelta(days=1))
        assert rollup_totals(workspace=acme.sub, day=day) == expected
    assert UsageRollupZone.objects.get(workspace=acme.sub).time_zone == "Europe/Berlin"
    assert (snapshot_of(acme.org), computed_at(acme.org)) == (org_rows, org_done)  # other workspaces untouched

    rebuilt = snapshots()
    again = usage_rollup(now=NOW + timedelta(minutes=2))

    assert (again.rezoned_workspaces, again.day_buckets, again.hour_buckets) == (0, 0, 0)
    assert snapshots() == rebuilt


def test_rollups_built_in_an_unrecorded_zone_are_rebuilt_once(acme):
    event(acme.sub, datetime(2026, 3, 9, 23, 30, tzinfo=UTC))
    usage_rollup(now=NOW)
    good = snapshots()
    # As if the rows were built before the zone was recorded (a workspace created and used
    # between two steps of a pass): their zone is unknown, so they are rebuilt.
    UsageRollupZone.objects.filter(workspace=acme.sub).delete()
    UsageDaily.objects.filter(workspace=acme.sub).update(requests=999)

    report = usage_rollup(now=NOW + timedelta(minutes=1))

    assert report.rezoned_workspaces == 1
    assert snapshots() == good
    assert UsageRollupZone.objects.get(workspace=acme.sub).time_zone == "UTC"
    assert usage_rollup(now=NOW + timedelta(minutes=2)).rezoned_workspaces == 0


def test_a_new_workspace_without_rollups_is_recorded_without_a_rebuild(acme):
    usage_rollup(now=NOW)
    new = workspace_create(name="Fresh", slug="fresh", actor=Actor.system("tests"), time_zone="Asia/Kolkata")

    report = usage_rollup(now=NOW + timedelta(minutes=1))

    assert report.rezoned_workspaces == 0 and report.day_buckets == 0
    assert UsageRollupZone.objects.get(workspace=new).time_zone == "Asia/Kolkata"


def snapshot_of(workspace) -> list[tuple]:
    return [row for row in snapshot(UsageDaily) if row[1] == workspace.id]


def computed_at(workspace) -> set:
    return set(UsageDayBucket.objects.filter(workspace=workspace).values_list("day", "computed_at"))


def test_id_holes_are_found_exactly_across_id_blocks(acme):
    base = (UsageEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0) + 10 * rollup.ID_BLOCK
    for offset in (1, 2, 1500, 4000):
        e = event(acme.org, NOW, save=False)
        e.id = base + offset
        e.save()

    count, top, holes = rollup._scan_new(base)

    assert (count, top) == (4, base + 4000)
    # 1500 and 4000 sit in other blocks of 1024 ids; the block between them holds no event at all.
    assert holes == [(base + 3, base + 1499), (base + 1501, base + 3999)]
    assert rollup._scan_new(base + 4000) == (0, base + 4000, [])


def test_a_large_backlog_is_discovered_by_span_with_the_same_result(acme, monkeypatch):
    _history(acme)
    event(acme.sub, NOW - timedelta(days=9))  # a gap of empty days to span over
    usage_rollup(now=NOW)
    exact = snapshots()
    for model in (UsageDaily, UsageHourly, UsageDayBucket, UsageHourBucket, UsageCursor):
        model.objects.all().delete()

    monkeypatch.setattr(rollup, "COARSE_DISCOVERY_EVENTS", 0)
    usage_rollup(now=NOW)

    assert snapshots() == exact
    # The empty days in between were marked too, and recomputed to nothing.
    assert UsageDayBucket.objects.filter(workspace=acme.sub).count() == 10

    # A later backlog is spanned from its own events (the cursor is past the first run).
    late = event(acme.org, NOW - timedelta(days=5), key=acme.key_a, deployment=acme.chat)
    usage_rollup(now=NOW + timedelta(minutes=1))
    assert rollup_totals(workspace=acme.org, day=late.created_at.date()) == event_totals(
        workspace=acme.org, created_at__date=late.created_at.date()
    )
    assert not UsageDayBucket.objects.filter(workspace=acme.sub, computed_at__gt=NOW).exists()  # sub untouched


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_split_the_buckets_and_agree_with_one_run(acme, settings, monkeypatch):
    import threading
    import time

    from django.db import connections

    _history(acme)
    usage_rollup(now=NOW)
    single = snapshots()
    for model in (UsageDaily, UsageHourly, UsageDayBucket, UsageHourBucket, UsageCursor):
        model.objects.all().delete()

    settings.USAGE_ROLLUP_BATCH_SIZE = 1
    batches: list[str] = []

    def slow_batch():
        batches.append(threading.current_thread().name)
        time.sleep(0.05)  # keep each bucket locked long enough for the other run to meet it

    monkeypatch.setattr(rollup, "_test_pause", slow_batch)
    errors = []

    def run():
        try:
            usage_rollup(now=NOW)
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, name=f"run-{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    buckets = UsageDayBucket.objects.count() + UsageHourBucket.objects.count()
    assert len(batches) == buckets  # every bucket recomputed exactly once: SKIP LOCKED split the work
    assert set(batches) == {"run-0", "run-1"}
    assert snapshots() == single


@pytest.mark.django_db(transaction=True)
def test_upgrading_to_latency_histograms_recomputes_the_old_rollups(acme):
    """Rollup rows written before migration 0009 had no histogram: the migration marks their
    buckets dirty, and the next pass rebuilds them from the events, histograms included."""
    from django.db.migrations.executor import MigrationExecutor

    _history(acme)
    usage_rollup(now=NOW)
    before = MigrationExecutor(connection)
    before.migrate([("usage", "0008_drift_coarse")])
    old = before.loader.project_state([("usage", "0008_drift_coarse")]).apps
    # Migrating back marked every bucket for recompute too; as if the old code had rolled them up:
    old.get_model("usage", "UsageDayBucket").objects.update(dirty=False)
    old.get_model("usage", "UsageHourBucket").objects.update(dirty=False)

    after = MigrationExecutor(connection)
    after.migrate(after.loader.graph.leaf_nodes())

    assert UsageDayBucket.objects.exists() and not UsageDayBucket.objects.filter(dirty=False).exists()
    assert set(UsageDaily.objects.values_list("latency_histogram", flat=True)) == {0}
    usage_rollup()  # the buckets were marked at the real time of the migration
    assert not UsageDayBucket.objects.filter(dirty=True).exists()
    assert sum(UsageDaily.objects.values_list("latency_histogram", flat=True)) == latency.pack(
        UsageEvent.objects.values_list("latency_ms", flat=True)
    )
    assert usage_reconcile(days=0).ok
