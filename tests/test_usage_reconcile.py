"""Reconciliation: Σ rollups == Σ events per workspace and day, the tree adds up, drift is stored, logged, shown and healed."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db.models import F

from usage.models import DriftCheck, UsageDaily, UsageDayBucket, UsageDrift
from usage.services import usage_reconcile, usage_rollup
from usage.tasks import usage_reconcile as reconcile_task

from .usage_factory import event, make_deployment, make_key

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


@pytest.fixture
def rolled_up(world):
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", at=NOW - timedelta(days=30))
    for day in range(2):
        for i in range(4):
            event(world.org, NOW - timedelta(days=day, minutes=i), key=world.key, deployment=world.chat, prompt=100 + i)
            event(world.sub, NOW - timedelta(days=day, minutes=i), key=world.sub_key, deployment=world.chat, completion=7 * i)
    usage_rollup(now=NOW)
    return world


@pytest.fixture
def no_enqueue(monkeypatch):
    sent = []
    monkeypatch.setattr("usage.tasks.usage_rollup.delay", lambda *a, **k: sent.append((a, k)))
    return sent


def test_rollups_reconcile_with_events_per_workspace_and_day(rolled_up, no_enqueue):
    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=1))

    assert report.ok and report.drifts == []
    assert report.checked == 4  # 2 workspaces × 2 days
    assert report.in_flight == 0
    assert UsageDrift.objects.count() == 0
    assert no_enqueue == []


def test_events_not_rolled_up_yet_are_in_flight_not_drift(rolled_up, no_enqueue):
    event(rolled_up.org, NOW + timedelta(minutes=1), key=rolled_up.key, deployment=rolled_up.chat)

    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=2))

    assert report.ok
    assert report.in_flight >= 1
    assert UsageDrift.objects.count() == 0


def test_tampered_rollup_is_stored_logged_enqueued_and_healed(rolled_up, caplog, django_capture_on_commit_callbacks, no_enqueue):
    day = date(2026, 3, 9)
    row = UsageDaily.objects.filter(workspace=rolled_up.sub, day=day).first()
    row.cost += Decimal("0.01")
    row.requests += 1
    row.save(update_fields=["cost", "requests"])

    with caplog.at_level(logging.ERROR, logger="usage.reconcile"), django_capture_on_commit_callbacks(execute=True):
        report = usage_reconcile(days=7, now=NOW + timedelta(minutes=1))

    assert not report.ok
    drift = UsageDrift.objects.get()
    assert (drift.workspace, drift.day, drift.kind, drift.resolved_at) == (rolled_up.sub, day, DriftCheck.ROLLUP, None)
    assert drift.details["requests"]["actual"] == str(int(drift.details["requests"]["expected"]) + 1)
    assert Decimal(drift.details["cost"]["actual"]) - Decimal(drift.details["cost"]["expected"]) == Decimal("0.01")
    assert "usage drift: workspace acme-research, day 2026-03-09" in caplog.text
    # Reported once, for the sub-workspace; the organisation's tree total is not a second drift.
    assert not UsageDrift.objects.filter(kind=DriftCheck.TREE).exists()
    # Self-healing: the day is dirty again, and the task enqueues a rollup for it.
    assert UsageDayBucket.objects.get(workspace=rolled_up.sub, day=day).dirty
    assert report.healing and no_enqueue == []  # the service marks; the task enqueues (below)

    usage_rollup(now=NOW + timedelta(minutes=2))
    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=3))

    assert report.ok and report.resolved == 1
    drift.refresh_from_db()
    assert drift.resolved_at == NOW + timedelta(minutes=3)


def test_the_reconcile_task_enqueues_a_rollup_only_when_it_marked_days_to_heal(rolled_up, no_enqueue):
    assert reconcile_task(days=0)["healing"] is False
    assert no_enqueue == []

    UsageDaily.objects.filter(workspace=rolled_up.org, day=date(2026, 3, 10)).delete()

    assert reconcile_task(days=0)["healing"] is True
    assert len(no_enqueue) == 1


def test_a_missing_rollup_row_is_drift(rolled_up, no_enqueue):
    UsageDaily.objects.filter(workspace=rolled_up.org, day=date(2026, 3, 10)).delete()

    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=1))

    assert [(slug, day, kind) for slug, day, kind, _ in report.drifts] == [("acme", date(2026, 3, 10), DriftCheck.ROLLUP)]
    assert report.drifts[0][3]["requests"] == {"expected": "4", "actual": "0"}


def test_drift_outside_the_window_is_left_to_the_full_check(rolled_up, no_enqueue):
    UsageDaily.objects.filter(workspace=rolled_up.org, day=date(2026, 3, 9)).update(requests=0)

    later = NOW + timedelta(days=1)
    recent = usage_reconcile(days=1, now=later)  # from Mar 10 on
    assert recent.ok and recent.since == date(2026, 3, 10)
    full = usage_reconcile(days=0, now=later)  # all history finds it
    assert [(slug, day) for slug, day, _, _ in full.drifts] == [("acme", date(2026, 3, 9))]


def test_default_workspace_total_equals_its_own_plus_its_sub_workspaces(rolled_up, no_enqueue):
    from django.db.models import Q, Sum

    usage_reconcile(days=7, now=NOW + timedelta(minutes=1))
    tree = UsageDaily.objects.filter(Q(workspace=rolled_up.org) | Q(workspace__parent=rolled_up.org)).aggregate(
        c=Sum("cost"), r=Sum("requests")
    )
    own = UsageDaily.objects.filter(workspace=rolled_up.org).aggregate(c=Sum("cost"), r=Sum("requests"))
    sub = UsageDaily.objects.filter(workspace=rolled_up.sub).aggregate(c=Sum("cost"), r=Sum("requests"))
    assert tree["c"] == own["c"] + sub["c"] and tree["r"] == own["r"] + sub["r"] == 16
    assert UsageDrift.objects.count() == 0


def test_drift_banner_is_shown_to_admins_only(rolled_up, client_for, no_enqueue):
    UsageDaily.objects.filter(workspace=rolled_up.sub, day=date(2026, 3, 9)).update(requests=0)
    usage_reconcile(days=7, now=NOW + timedelta(minutes=1))

    for user, slug in ((rolled_up.owner, "acme"), (rolled_up.admin, "acme"), (rolled_up.owner, "acme-research")):
        page = client_for(user).get(f"/w/{slug}/").content.decode()
        assert 'data-testid="usage-drift-banner"' in page, (user, slug)
        assert "Research on 9 Mar 2026" in page
    for user, slug in ((rolled_up.developer, "acme"), (rolled_up.viewer, "acme"), (rolled_up.sub_member, "acme-research")):
        page = client_for(user).get(f"/w/{slug}/").content.decode()
        assert "usage-drift-banner" not in page, (user, slug)
    # Another organisation's admin never sees it.
    assert "usage-drift-banner" not in client_for(rolled_up.outsider).get("/w/globex/").content.decode()


def test_tampered_monthly_and_day_total_rows_are_coarse_drift_and_healed(rolled_up, django_capture_on_commit_callbacks, no_enqueue):
    from usage.models import UsageDailyTotal, UsageMonthly

    UsageMonthly.objects.filter(workspace=rolled_up.org, month=date(2026, 3, 1)).update(requests=F("requests") + 5)
    UsageDailyTotal.objects.filter(workspace=rolled_up.sub, day=date(2026, 3, 9)).delete()

    with django_capture_on_commit_callbacks(execute=True):
        report = usage_reconcile(days=0, now=NOW + timedelta(minutes=1))  # months are checked by the full check

    drifts = {(d.workspace.slug, d.day, d.kind): d.details for d in UsageDrift.objects.select_related("workspace")}
    assert set(drifts) == {
        (rolled_up.org.slug, date(2026, 3, 1), DriftCheck.COARSE),
        (rolled_up.sub.slug, date(2026, 3, 9), DriftCheck.COARSE),
    }
    assert drifts[(rolled_up.org.slug, date(2026, 3, 1), DriftCheck.COARSE)]["month"]["requests"]["actual"] == str(8 + 5)
    assert drifts[(rolled_up.sub.slug, date(2026, 3, 9), DriftCheck.COARSE)]["day_totals"]["requests"] == {"expected": "4", "actual": "0"}
    assert not report.ok and report.healing

    usage_rollup(now=NOW + timedelta(minutes=2))  # the marked days are recomputed, their month and totals rewritten
    report = usage_reconcile(days=0, now=NOW + timedelta(minutes=3))

    assert report.ok and report.resolved == 2


def test_a_windowed_check_leaves_a_month_that_began_before_it_to_the_full_check(rolled_up, no_enqueue):
    from usage.models import UsageMonthly

    UsageMonthly.objects.filter(workspace=rolled_up.org, month=date(2026, 3, 1)).update(requests=F("requests") + 5)

    assert usage_reconcile(days=7, now=NOW + timedelta(minutes=1)).ok
    assert [kind for _, _, kind, _ in usage_reconcile(days=0, now=NOW + timedelta(minutes=1)).drifts] == [DriftCheck.COARSE]


def test_a_latency_histogram_that_does_not_match_the_events_is_drift_and_healed(rolled_up, no_enqueue):
    from usage.latency import pack
    from usage.models import UsageMonthly

    # Every request took 250 ms; one daily row now claims one more request at 8 s, and a month row one at 1 ms.
    row = UsageDaily.objects.filter(workspace=rolled_up.org, day=date(2026, 3, 10)).get()
    UsageDaily.objects.filter(pk=row.pk).update(latency_histogram=row.latency_histogram + pack([8000]))
    month = UsageMonthly.objects.filter(workspace=rolled_up.sub, month=date(2026, 3, 1)).get()
    UsageMonthly.objects.filter(pk=month.pk).update(latency_histogram=month.latency_histogram + pack([1]))

    report = usage_reconcile(days=0, now=NOW + timedelta(minutes=1))

    drifts = {(d.workspace.slug, d.day, d.kind): d.details for d in UsageDrift.objects.select_related("workspace")}
    daily = drifts[(rolled_up.org.slug, date(2026, 3, 10), DriftCheck.ROLLUP)]
    assert daily == {"latency_histogram": {"expected": "250ms:4", "actual": "250ms:4 8000ms:1"}}
    assert drifts[(rolled_up.sub.slug, date(2026, 3, 1), DriftCheck.COARSE)]["month"]["latency_histogram"] == {
        "expected": "250ms:8",
        "actual": "1ms:1 250ms:8",
    }
    assert not report.ok

    usage_rollup(now=NOW + timedelta(minutes=2))
    assert usage_reconcile(days=0, now=NOW + timedelta(minutes=3)).ok
