"""Usage events are append-only: the database refuses edits, retention is one documented command,
and reconciliation names edited events instead of recomputing the bill from them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.models import Sum

from console.models import AuditEvent
from usage.models import DriftCheck, UsageCursor, UsageDaily, UsageDrift, UsageEvent
from usage.reconcile import reconcile
from usage.seal import SEALED, event_seal
from usage.services import usage_reconcile, usage_rollup

from .usage_factory import event, make_deployment, make_key

# Committed transactions, as in production: the retention setting is local to the command's transaction.
pytestmark = pytest.mark.django_db(transaction=True)
NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


def sealed_event(workspace, at, **kwargs) -> UsageEvent:
    e = event(workspace, at, save=False, **kwargs)
    e.seal = event_seal({name: getattr(e, name) for name in SEALED})
    e.save()
    return e


@pytest.fixture
def billed(world, monkeypatch):
    monkeypatch.setattr("usage.tasks.usage_rollup.delay", lambda *a, **k: None)
    world.key = make_key(world.org, "backend")
    world.chat = make_deployment(world.org, "chat", at=NOW - timedelta(days=400))
    world.events = [
        sealed_event(world.org, NOW - timedelta(days=d, minutes=i), key=world.key, deployment=world.chat) for d in (0, 1) for i in range(3)
    ]
    usage_rollup(now=NOW)
    return world


def untriggered(fn) -> None:
    """What a database superuser can still do (the trigger does not fire for replication sessions)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
        fn()


def test_the_database_refuses_to_edit_or_delete_a_usage_event(billed):
    target = billed.events[0]
    before = list(UsageEvent.objects.order_by("id").values_list("id", "prompt_tokens", "cost"))

    with pytest.raises(DatabaseError, match="append-only: UPDATE refused"), transaction.atomic():
        UsageEvent.objects.filter(pk=target.pk).update(prompt_tokens=1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        target.cost = 0
        target.save(update_fields=["cost"])
    with pytest.raises(DatabaseError, match="append-only: DELETE refused"), transaction.atomic():
        UsageEvent.objects.filter(pk=target.pk).delete()

    assert list(UsageEvent.objects.order_by("id").values_list("id", "prompt_tokens", "cost")) == before


def test_deleting_a_key_still_detaches_its_events(billed):
    # on_delete=SET_NULL is an UPDATE that only clears the key: let through, nothing else changes.
    tokens = UsageEvent.objects.aggregate(t=Sum("total_tokens"))["t"]
    billed.key.delete()
    assert UsageEvent.objects.filter(api_key__isnull=True).count() == 6
    assert UsageEvent.objects.aggregate(t=Sum("total_tokens"))["t"] == tokens
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        UsageEvent.objects.update(api_key=None, prompt_tokens=0)  # clearing the key does not cover other changes


def test_reconciliation_reports_an_edited_event_and_keeps_the_billed_values(billed, caplog, client_for):
    target = billed.events[1]
    billed_cost = UsageDaily.objects.aggregate(c=Sum("cost"))["c"]
    untriggered(lambda: UsageEvent.objects.filter(pk=target.pk).update(prompt_tokens=1, total_tokens=21, cost=0))

    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=1))
    usage_rollup(now=NOW + timedelta(minutes=2))  # a rollup pass after it: nothing was marked to recompute

    [drift] = UsageDrift.objects.filter(resolved_at__isnull=True)
    assert (drift.kind, drift.day) == (DriftCheck.EDITED, NOW.date())
    assert drift.details["edited_events"] == {"count": 1, "request_ids": [target.request_id]}
    assert drift.details["prompt_tokens"] == {"expected": str(3 * 100 - 99), "actual": "300"}
    assert [(d[2], d[1]) for d in report.drifts] == [(DriftCheck.EDITED, NOW.date())]
    assert UsageDaily.objects.aggregate(c=Sum("cost"))["c"] == billed_cost  # the bill was not recomputed from the edit
    assert "usage drift" in caplog.text

    page = client_for(billed.owner).get("/w/acme/").content.decode()
    assert "Usage events were changed after they were recorded</strong> for Acme on 10 Mar 2026" in page
    assert target.request_id in page
    assert "Usage totals do not add up" not in page

    # Still there on the next check: an edit is not adopted by waiting.
    usage_reconcile(days=7, now=NOW + timedelta(minutes=3))
    assert UsageDrift.objects.filter(resolved_at__isnull=True, kind=DriftCheck.EDITED).count() == 1


def test_an_edit_that_keeps_the_day_sums_is_still_reported(billed, client_for):
    # Tokens moved from one event to another and a refusal turned into a success: every sum of the
    # day is what the rollup says, only the seals show the change.
    a, b = billed.events[0], billed.events[1]
    untriggered(lambda: UsageEvent.objects.filter(pk=a.pk).update(prompt_tokens=a.prompt_tokens + 7, model="other-model"))
    untriggered(lambda: UsageEvent.objects.filter(pk=b.pk).update(prompt_tokens=b.prompt_tokens - 7))
    daily = list(UsageDaily.objects.order_by("day").values_list("day", "requests", "prompt_tokens", "cost"))

    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=1))

    [drift] = UsageDrift.objects.filter(resolved_at__isnull=True)
    assert (drift.kind, drift.day) == (DriftCheck.EDITED, NOW.date())
    assert drift.details == {"edited_events": {"count": 2, "request_ids": [a.request_id, b.request_id]}}
    assert [(d[2], d[1]) for d in report.drifts] == [(DriftCheck.EDITED, NOW.date())]
    assert not report.ok
    usage_rollup(now=NOW + timedelta(minutes=2))
    assert list(UsageDaily.objects.order_by("day").values_list("day", "requests", "prompt_tokens", "cost")) == daily  # nothing recomputed
    page = client_for(billed.owner).get("/w/acme/").content.decode()
    assert "Usage events were changed after they were recorded</strong> for Acme on 10 Mar 2026" in page and "(2 events" in page
    assert "the day's figures agree with the events as they are now" in page and "keep the values as recorded" not in page


def test_an_edit_a_later_recompute_adopted_is_still_reported(billed):
    target = billed.events[2]
    untriggered(lambda: UsageEvent.objects.filter(pk=target.pk).update(completion_tokens=0, total_tokens=target.prompt_tokens, cost=0))
    # A late event makes the rollup recompute the day from the events as they now are.
    sealed_event(billed.org, NOW - timedelta(minutes=30), key=billed.key, deployment=billed.chat)
    usage_rollup(now=NOW + timedelta(minutes=1))
    assert (
        UsageDaily.objects.get(day=NOW.date()).total_tokens
        == UsageEvent.objects.filter(created_at__date=NOW.date()).aggregate(t=Sum("total_tokens"))["t"]
    )

    report = usage_reconcile(days=7, now=NOW + timedelta(minutes=2))

    assert [(d[2], d[1], d[3]) for d in report.drifts] == [
        (DriftCheck.EDITED, NOW.date(), {"edited_events": {"count": 1, "request_ids": [target.request_id]}})
    ]


def test_intact_sealed_events_reconcile_clean(billed):
    assert usage_reconcile(days=7, now=NOW + timedelta(minutes=1)).ok
    assert reconcile(since=None, now=NOW + timedelta(minutes=1)).ok


def test_a_tampered_rollup_is_still_recomputed_from_intact_events(billed):
    UsageDaily.objects.filter(day=NOW.date()).update(requests=99)
    usage_reconcile(days=7, now=NOW + timedelta(minutes=1))
    assert UsageDrift.objects.get().kind == DriftCheck.ROLLUP
    usage_rollup(now=NOW + timedelta(minutes=2))
    assert reconcile(since=None, now=NOW + timedelta(minutes=3)).ok


def test_prune_usage_events_deletes_old_days_keeps_their_rollups_and_reconciles(world, monkeypatch, capsys):
    monkeypatch.setattr("usage.tasks.usage_rollup.delay", lambda *a, **k: None)
    key = make_key(world.org, "backend")
    chat = make_deployment(world.org, "chat", at=datetime(2024, 1, 1, tzinfo=UTC))
    now = datetime.now(UTC)
    old = [sealed_event(world.org, datetime(now.year - 1, 6, 1, 9, tzinfo=UTC), key=key, deployment=chat) for _ in range(3)]
    recent = sealed_event(world.org, now - timedelta(minutes=5), key=key, deployment=chat)
    usage_rollup(now=now)
    old_day = UsageDaily.objects.filter(day=date(now.year - 1, 6, 1)).values_list("requests", "cost").get()

    with pytest.raises(CommandError, match="yearly token limits"):
        call_command("prune_usage_events", "--before", now.date().isoformat())
    call_command("prune_usage_events", "--before", f"{now.year}-01-01", "--dry-run")
    assert UsageEvent.objects.count() == 4
    assert "Would delete 3 usage event(s)" in capsys.readouterr().out

    call_command("prune_usage_events", "--before", f"{now.year}-01-01")

    assert list(UsageEvent.objects.values_list("request_id", flat=True)) == [recent.request_id]
    assert not UsageEvent.objects.filter(request_id__in=[e.request_id for e in old]).exists()
    assert UsageDaily.objects.filter(day=date(now.year - 1, 6, 1)).values_list("requests", "cost").get() == old_day  # the bill stays
    assert UsageCursor.objects.get(pk=1).pruned_before == date(now.year, 1, 1)
    assert AuditEvent.objects.filter(action="usage.events_pruned", workspace=world.org).count() == 1
    assert reconcile(since=None, now=now).ok  # pruned days are not "drift"
    # Outside the command, deleting is still refused.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        UsageEvent.objects.all().delete()
