"""Usage accounting services: the entry points tasks, commands and other apps call.

The engine is in usage/rollup.py (discover → mark dirty → recompute) and usage/reconcile.py.
"""

from __future__ import annotations

from datetime import date, datetime

from django.conf import settings
from django.utils import timezone

from console.models import Workspace
from usage import reconcile, rollup
from usage.reconcile import ReconcileReport
from usage.rollup import RollupReport


def usage_rollup(*, now: datetime | None = None) -> RollupReport:
    """Roll up every event not rolled up yet (the every-minute beat task), and rebuild the daily
    rollups of any workspace whose time zone changed since they were built."""
    return rollup.run(now=now)


def usage_backfill(*, since: date | None = None, workspace: Workspace | None = None, now: datetime | None = None) -> RollupReport:
    """Recompute every day (in each workspace's time zone) from `since`, and hours in the hourly window."""
    now = now or timezone.now()
    rollup.discover(now=now)
    rollup.mark_history(since=since, workspace_ids=None if workspace is None else [workspace.id], now=now)
    return rollup.run(now=now)


def usage_workspace_rebuild(*, workspace_id: int, now: datetime | None = None) -> RollupReport:
    """Recompute all of a workspace's rollups now (the rollup pass does this by itself after a time-zone change)."""
    workspace = Workspace.objects.filter(id=workspace_id).first()
    if workspace is None:
        return RollupReport()  # deleted since the task was enqueued: nothing to rebuild
    return usage_backfill(workspace=workspace, now=now)


def usage_reconcile(*, days: int | None = None, now: datetime | None = None) -> ReconcileReport:
    """Check the last `days` days (default USAGE_RECONCILE_DAYS); days=0 checks all history."""
    now = now or timezone.now()
    days = settings.USAGE_RECONCILE_DAYS if days is None else days
    since = reconcile.default_window(now, days) if days else None
    return reconcile.reconcile(since=since, now=now)
