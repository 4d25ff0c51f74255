"""Usage accounting services: the entry points tasks, commands and other apps call.

The engine is in usage/rollup.py (discover → mark dirty → recompute) and usage/reconcile.py.
"""

from __future__ import annotations

import logging
from datetime import date, datetime
from decimal import Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from console.models import Workspace
from keys.changes import keys_changed
from keys.models import ApiKey
from usage import reconcile, rollup
from usage.budgets import THRESHOLDS, budget_spend, covered, local_month
from usage.models import Budget, BudgetAlert, UsageCursor, UsageDayBucket, UsageEvent
from usage.reconcile import ReconcileReport
from usage.rollup import RollupReport

logger = logging.getLogger(__name__)


def usage_rollup(*, now: datetime | None = None) -> RollupReport:
    """Roll up every event not rolled up yet (the every-minute beat task), rebuilding the daily
    rollups of any workspace whose time zone changed since they were built; then check budgets
    against the fresh rollups."""
    now = now or timezone.now()
    report = rollup.run(now=now)
    budgets_check(now=now)
    return report


def usage_backfill(*, since: date | None = None, workspace: Workspace | None = None, now: datetime | None = None) -> RollupReport:
    """Recompute every day (in each workspace's time zone) from `since`, and hours in the hourly window."""
    now = now or timezone.now()
    rollup.discover(now=now)
    rollup.mark_history(since=since, workspace_ids=None if workspace is None else [workspace.id], now=now)
    return rollup.run(now=now)


def usage_reconcile(*, days: int | None = None, now: datetime | None = None) -> ReconcileReport:
    """Check the last `days` days (default USAGE_RECONCILE_DAYS); days=0 checks all history."""
    now = now or timezone.now()
    days = settings.USAGE_RECONCILE_DAYS if days is None else days
    since = reconcile.default_window(now, days) if days else None
    return reconcile.reconcile(since=since, now=now)


# --- budgets -------------------------------------------------------------------------------------

BUDGET_FIELDS = ("amount", "currency", "block_requests")


def _budget_keys_changed(workspace: Workspace) -> None:
    """Make every gateway process reload the keys a budget covers (after commit), so a block or an
    unblock takes effect on their next request: the keys' generations are bumped like on an edit."""
    keys_changed(list(ApiKey.objects.filter(covered(workspace)).values_list("id", flat=True)))


def _alert_once(budget: Budget, month: date, threshold: int) -> bool:
    """Record that `threshold` was reached in `month`, once: the unique row is the guard."""
    try:
        with transaction.atomic():
            BudgetAlert.objects.create(
                workspace=budget.workspace,
                month=month,
                threshold=threshold,
                spent=budget.spent,
                amount=budget.amount,
                currency=budget.currency,
            )
    except IntegrityError:
        return False
    audit_record(
        workspace=budget.workspace,
        actor=Actor.system("budget check"),
        action="budget.threshold_reached",
        target=budget,
        details={
            "threshold": threshold,
            "month": f"{month:%Y-%m}",
            "spent": str(budget.spent.quantize(Decimal("0.01"))),
            "amount": str(budget.amount),
            "currency": budget.currency,
            "blocks": budget.block_requests,
        },
    )
    return True


def _budget_check_locked(budget: Budget, now: datetime) -> tuple[int, bool]:
    """Store this month's spend on a locked budget and fire the thresholds it reached.
    Returns (alerts fired, whether "used up" changed)."""
    workspace = budget.workspace
    month = local_month(now, workspace.tz)
    was_exhausted = budget.exhausted_in(month)
    budget.spent = budget_spend(workspace, month, budget.currency)
    budget.spent_month, budget.checked_at = month, now
    budget.save(update_fields=["spent", "spent_month", "checked_at"])
    reached = [t for t in THRESHOLDS if budget.spent * 100 >= budget.amount * t]
    # A threshold no longer reached (the amount was raised) is re-armed: it fires again when the
    # spend reaches it under the new amount. The audit log keeps the earlier alert.
    BudgetAlert.objects.filter(workspace=workspace, month=month).exclude(threshold__in=reached).delete()
    fired = sum(_alert_once(budget, month, t) for t in reached)
    return fired, budget.exhausted_in(month) != was_exhausted


def budget_check(*, budget_id: int, now: datetime | None = None) -> int:
    """Check one budget; safe to run twice and concurrently (the row lock serialises checks of the
    same budget, the unique BudgetAlert row makes each threshold fire once a month)."""
    now = now or timezone.now()
    with transaction.atomic():
        budget = Budget.objects.select_for_update().select_related("workspace").filter(id=budget_id).first()
        if budget is None:
            return 0
        fired, changed = _budget_check_locked(budget, now)
        if changed and budget.block_requests:
            _budget_keys_changed(budget.workspace)
    return fired


def budgets_check(*, now: datetime | None = None) -> int:
    """Check every budget after a rollup pass: one aggregate over the month's daily rollups each."""
    now = now or timezone.now()
    fired = 0
    for budget_id in Budget.objects.order_by("id").values_list("id", flat=True):
        fired += budget_check(budget_id=budget_id, now=now)
    if fired:
        logger.info("budgets: %d threshold alert(s) fired", fired)
    return fired


def budget_set(
    *, workspace: Workspace, amount: Decimal, currency: str, block_requests: bool, actor: Actor, now: datetime | None = None
) -> Budget:
    """Create or change a workspace's monthly budget. Its spend is re-read at once, so raising the
    amount or unticking "block" unblocks the gateway now, not after the next rollup pass."""
    now = now or timezone.now()
    values = {"amount": amount.quantize(Decimal("0.01")), "currency": currency, "block_requests": block_requests}
    with transaction.atomic():
        budget = Budget.objects.select_for_update().filter(workspace=workspace).first()
        if budget is None:
            budget = Budget.objects.create(workspace=workspace, **values)
            audit_record(
                workspace=workspace, actor=actor, action="budget.created", target=budget, details={k: str(v) for k, v in values.items()}
            )
        else:
            changes = {k: [str(getattr(budget, k)), str(v)] for k, v in values.items() if getattr(budget, k) != v}
            if not changes:
                return budget
            for name, value in values.items():
                setattr(budget, name, value)
            budget.save(update_fields=[*BUDGET_FIELDS, "updated_at"])
            audit_record(workspace=workspace, actor=actor, action="budget.updated", target=budget, details=changes)
        budget.workspace = workspace
        _budget_check_locked(budget, now)
        _budget_keys_changed(workspace)
    return budget


def budget_remove(*, workspace: Workspace, actor: Actor) -> bool:
    with transaction.atomic():
        budget = Budget.objects.select_for_update().filter(workspace=workspace).first()
        if budget is None:
            return False
        audit_record(
            workspace=workspace,
            actor=actor,
            action="budget.removed",
            target=budget,
            details={k: str(getattr(budget, k)) for k in BUDGET_FIELDS},
        )
        budget.delete()
        _budget_keys_changed(workspace)
    return True


class RetentionRefused(ValueError):
    pass


def usage_events_prune(*, before: date, actor: Actor, now: datetime | None = None, dry_run: bool = False) -> dict[str, int]:
    """Retention: delete every workspace's usage events of local days before `before`.

    The only deletion the append-only trigger lets through: it sets the transaction-local
    `gatehouse.usage_retention` the trigger checks. The rollups of those days are kept (they are
    the bills) and are never recomputed afterwards (UsageCursor.pruned_before; reconciliation
    starts at that date). Refused for days of the current year, whose events seed the keys'
    yearly limits, and while any of those days still waits for its rollup. Returns the number of
    events deleted per workspace slug (or that would be, with dry_run).
    """

    now = now or timezone.now()
    first_of_year = date(now.year, 1, 1)
    if before > first_of_year:
        raise RetentionRefused(
            f"Events from {first_of_year.isoformat()} on are kept: the yearly token limits are counted from this year's events. "
            f"Use a date on or before {first_of_year.isoformat()}."
        )
    rollup.run(now=now)  # everything written so far is rolled up before its events go
    if UsageDayBucket.objects.filter(dirty=True, day__lt=before).exists():
        raise RetentionRefused("Some of those days are still being rolled up; run manage.py aggregate_usage and retry.")
    deleted: dict[str, int] = {}
    with transaction.atomic():
        cursor, _ = UsageCursor.objects.select_for_update().get_or_create(pk=1)
        if connection.vendor == "postgresql":
            with connection.cursor() as c:
                c.execute("SET LOCAL gatehouse.usage_retention = 'on'")
        for workspace in Workspace.objects.order_by("id"):
            events = UsageEvent.objects.filter(workspace=workspace, created_at__lt=rollup.local_day_start(before, workspace.tz))
            count = events.count() if dry_run else events.delete()[0]
            if not count:
                continue
            deleted[workspace.slug] = count
            if not dry_run:
                audit_record(
                    workspace=workspace,
                    actor=actor,
                    action="usage.events_pruned",
                    target=workspace,
                    details={"before": before.isoformat(), "events": count},
                )
        if not dry_run and (cursor.pruned_before is None or before > cursor.pruned_before):
            cursor.pruned_before = before
            cursor.save(update_fields=["pruned_before"])
    return deleted
