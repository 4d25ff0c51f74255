"""Reconciliation: prove the daily rollups add up to the usage events, per workspace and day.

Three checks over a window of days:
- rollup: Σ UsageDaily == Σ UsageEvent (requests, errors — refusals and failures, status ≥ 400 —,
  prompt/completion/total tokens, cost to the nano) for every (workspace, local day);
- tree: a default workspace's total, summed over its tree in one query, equals its own rollups
  plus its sub-workspaces' and equals their events;
- coarse: the tables the dashboards read instead of days, UsageDailyTotal per (workspace, day)
  and UsageMonthly per (workspace, month; reported on the month's first day), equal the daily
  rows they were derived from, and the errors by reason (UsageErrorDaily) add up to their errors. They are written in the daily rows' transaction, so any
  difference is drift, never work in flight.

A (workspace, day) whose bucket is dirty, or that has events discovery has not seen yet, is in
flight and skipped; anything else that differs is drift: logged, stored as an open UsageDrift
(the admins' banner), and its buckets are marked dirty so the next rollup recomputes them. A
later check that finds the numbers equal resolves the drift.

Except when the events changed: events are append-only and sealed where they are written
(usage.seal), and every check re-computes the seal of every sealed event in its window, whether
or not the sums differ (an edit can keep a day's sums: tokens moved between two events, a model or
status changed, or a day recomputed for a late event after the edit). Events whose seal fails were
edited after they were written: the day is stored as an EDITED drift with their count and request
ids and is NOT recomputed, so the bill keeps the recorded values. The PostgreSQL trigger is what
prevents edits; the seal names the ones that got around it. A deleted event leaves no seal to
fail: only the sums show it. Days before the retention horizon (UsageCursor.pruned_before) are
not checked: their events were pruned on purpose.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from django.db import transaction
from django.db.models import BigIntegerField, Count, F, Q, Sum, Value
from django.db.models.functions import Cast, Coalesce, Round, TruncDate
from django.utils import timezone

from console.models import Workspace
from usage.latency import BOUNDS, HistogramSum, LatencyHistogram, unpack
from usage.models import (
    DriftCheck,
    UsageCursor,
    UsageDaily,
    UsageDailyTotal,
    UsageDayBucket,
    UsageDrift,
    UsageErrorDaily,
    UsageEvent,
    UsageMonthly,
)
from usage.rollup import NANOS, ONE_DAY, _ranges_q, local_day_start, mark_dirty
from usage.seal import SEALED, seal_matches

logger = logging.getLogger(__name__)

# The latency histogram is an integer like the others (usage.latency): rollups add up to the
# events' histogram exactly, or the p95 on the pages would not be the events' either.
# `errors` are the requests answered with status >= 400 (refusals and failures): requests =
# answered + errors, on both sides.
METRICS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost_nanos", "latency_histogram")
Totals = tuple[int, ...]
EDITED_SHOWN = 20  # request ids of edited events kept in a drift's details
ZERO: Totals = (0,) * len(METRICS)


def _nanos(column: str):
    return Coalesce(Cast(Sum(Round(F(column) * NANOS)), BigIntegerField()), 0)


EVENT_SUMS = {
    "s_requests": Count("id"),
    "s_errors": Count("id", filter=Q(status_code__gte=400)),
    "s_prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
    "s_completion_tokens": Coalesce(Sum("completion_tokens"), 0),
    "s_total_tokens": Coalesce(Sum("total_tokens"), 0),
    "s_cost_nanos": _nanos("cost"),
    "s_latency_histogram": LatencyHistogram("latency_ms"),
}
ROLLUP_SUMS = {
    "s_requests": Coalesce(Sum("requests"), 0),
    "s_errors": Coalesce(Sum("errors"), 0),
    "s_prompt_tokens": Coalesce(Sum("prompt_tokens"), 0),
    "s_completion_tokens": Coalesce(Sum("completion_tokens"), 0),
    "s_total_tokens": Coalesce(Sum("total_tokens"), 0),
    "s_cost_nanos": _nanos("cost"),
    "s_latency_histogram": HistogramSum("latency_histogram"),
}
# UsageDailyTotal has no histogram (no page reads a p95 per day): compared without one.
DAY_TOTAL_SUMS = {**ROLLUP_SUMS, "s_latency_histogram": Value(0)}


def _totals(row: dict) -> Totals:
    return tuple(int(row[f"s_{m}"] or 0) for m in METRICS)


def _no_histogram(t: Totals) -> Totals:
    return (*t[:-1], 0)


def _add(a: Totals, b: Totals) -> Totals:
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _details(expected: Totals, actual: Totals) -> dict:
    def show(metric: str, value: int) -> str:
        if metric == "latency_histogram":  # requests per bucket, by the bucket's lower bound in ms
            return " ".join(f"{BOUNDS[i - 1] if i else 0}ms:{n}" for i, n in enumerate(unpack(value)) if n) or "empty"
        return str(Decimal(value).scaleb(-9)) if metric == "cost_nanos" else str(value)

    return {
        ("cost" if m == "cost_nanos" else m): {"expected": show(m, e), "actual": show(m, a)}
        for m, e, a in zip(METRICS, expected, actual, strict=True)
        if e != a
    }


@dataclass
class ReconcileReport:
    since: date | None
    checked: int = 0
    in_flight: int = 0
    drifts: list[tuple[str, date, str, dict]] = field(default_factory=list)
    resolved: int = 0
    # Drifting days were marked dirty for the rollup to recompute; usage.tasks then runs one now
    # instead of waiting for the schedule (this module does not enqueue tasks: they call it).
    healing: bool = False

    @property
    def ok(self) -> bool:
        return not self.drifts


def reconcile(*, since: date | None, now: datetime | None = None) -> ReconcileReport:
    """Compare rollups with events from `since` (a local date; None: all history)."""
    now = now or timezone.now()
    # Snapshot what counts as in flight before reading sums: anything discovered later than
    # this has an id above high_water (or in a pending gap) and is recognised as such below.
    cursor = UsageCursor.objects.filter(pk=1).first()
    if cursor is not None and cursor.pruned_before is not None and (since is None or since < cursor.pruned_before):
        since = cursor.pruned_before  # older days' events were pruned on purpose; their rollups stand
    report = ReconcileReport(since=since)
    high_water = cursor.high_water_id if cursor else 0
    gaps = [(g[0], g[1]) for g in cursor.pending_gaps] if cursor else []
    dirty = UsageDayBucket.objects.filter(dirty=True)
    if since is not None:
        dirty = dirty.filter(day__gte=since)
    dirty_days = set(dirty.values_list("workspace_id", "day"))

    workspaces = {w.id: w for w in Workspace.objects.only("id", "slug", "parent_id", "time_zone")}
    by_zone: dict[str, list[int]] = defaultdict(list)
    for w in workspaces.values():
        by_zone[w.time_zone].append(w.id)

    rollup_qs = UsageDaily.objects.all() if since is None else UsageDaily.objects.filter(day__gte=since)
    rollups = {
        (r["workspace_id"], r["day"]): _totals(r) for r in rollup_qs.values("workspace_id", "day").annotate(**ROLLUP_SUMS).order_by()
    }
    tree_rollups = {
        (r["root"], r["day"]): _totals(r)
        for r in rollup_qs.annotate(root=Coalesce("workspace__parent_id", "workspace_id"))
        .values("root", "day")
        .annotate(**ROLLUP_SUMS)
        .order_by()
    }
    events: dict[tuple[int, date], Totals] = {}
    edited: dict[tuple[int, date], list[str]] = defaultdict(list)
    for zone, ids in by_zone.items():
        tz = ZoneInfo(zone)
        qs = UsageEvent.objects.filter(workspace_id__in=ids)
        if since is not None:
            qs = qs.filter(created_at__gte=local_day_start(since, tz))
        by_day = qs.annotate(d=TruncDate("created_at", tzinfo=tz))
        for r in by_day.values("workspace_id", "d").annotate(**EVENT_SUMS).order_by():
            events[(r["workspace_id"], r["d"])] = _totals(r)
        sealed = by_day.exclude(seal="").values(*SEALED, "seal", "d").order_by("id").iterator(chunk_size=5000)
        for row in sealed:
            if not seal_matches(row, row["seal"]):
                edited[(row["workspace_id"], row["d"])].append(row["request_id"])

    def in_flight(ws: int, day: date) -> bool:
        if (ws, day) in dirty_days:
            return True
        tz = ZoneInfo(workspaces[ws].time_zone)
        window = UsageEvent.objects.filter(
            workspace_id=ws, created_at__gte=local_day_start(day, tz), created_at__lt=local_day_start(day + ONE_DAY, tz)
        )
        unseen = Q(id__gt=high_water) | _ranges_q(gaps) if gaps else Q(id__gt=high_water)
        return window.filter(unseen).exists()

    found: dict[tuple[int, date, str], dict] = {}
    skipped: set[tuple[int, date]] = set()
    for key in sorted(set(rollups) | set(events)):
        report.checked += 1
        expected, actual = events.get(key, ZERO), rollups.get(key, ZERO)
        details = {}
        if expected != actual:
            if in_flight(*key):
                skipped.add(key)
            else:
                details = _details(expected, actual)
        if key in edited:
            # Events changed after they were written: report them, never adopt them (even where
            # the sums agree, or the day is still in flight).
            ids = edited[key]
            found[(*key, DriftCheck.EDITED)] = {"edited_events": {"count": len(ids), "request_ids": ids[:EDITED_SHOWN]}, **details}
        elif details:
            found[(*key, DriftCheck.ROLLUP)] = details

    tree_members: dict[int, list[int]] = defaultdict(list)
    for w in workspaces.values():
        tree_members[w.parent_id or w.id].append(w.id)
    for root, day in sorted(set(tree_rollups) | {(workspaces[ws].parent_id or ws, d) for ws, d in events}):
        members = tree_members[root]
        expected = ZERO
        parts = ZERO
        for ws in members:
            expected = _add(expected, events.get((ws, day), ZERO))
            parts = _add(parts, rollups.get((ws, day), ZERO))
        total = tree_rollups.get((root, day), ZERO)
        if total == parts == expected:
            continue
        if any((ws, day) in skipped for ws in members):
            continue  # a member is still being recomputed
        if any((ws, day, kind) in found for ws in members for kind in (DriftCheck.ROLLUP, DriftCheck.EDITED)) and total == parts:
            continue  # already reported for the sub-workspace that drifts
        details = _details(expected, total)
        if total != parts:
            details["own_plus_sub_workspaces"] = _details(parts, total)
        found[(root, day, DriftCheck.TREE)] = details

    # Coarse rows are compared with the daily rows as they are; where those already drift from
    # the events, that one drift is reported (and its recompute rewrites both).
    rollup_drift = {
        (ws, day) for (ws, day, kind), details in found.items() if kind == DriftCheck.ROLLUP or set(details) - {"edited_events"}
    }
    coarse, coarse_heal = _coarse_drift(rollup_qs, since, exclude=rollup_drift)
    found.update(coarse)

    report.in_flight = len(skipped)
    report.drifts = [(workspaces[ws].slug, day, kind, details) for (ws, day, kind), details in sorted(found.items())]
    _record(
        found=found,
        skipped=skipped,
        since=since,
        now=now,
        workspaces=workspaces,
        tree_members=tree_members,
        report=report,
        extra_heal=coarse_heal,
    )
    return report


def _coarse_drift(daily_qs, since: date | None, exclude: set[tuple[int, date]]) -> tuple[dict, set[tuple[int, date]]]:
    """UsageDailyTotal and UsageMonthly against the daily rows, in 4 grouped queries. Returns the
    drifts and the days to recompute to heal them (a month is rewritten with any of its days, so
    every day it has rows for is marked)."""
    totals_qs = UsageDailyTotal.objects.all() if since is None else UsageDailyTotal.objects.filter(day__gte=since)
    # Months that begin inside the window (a month that began before it would also compare days
    # outside it, which a windowed check leaves to the full one).
    first_month = None if since is None else (since if since.day == 1 else (since.replace(day=28) + timedelta(days=4)).replace(day=1))
    months_qs = UsageMonthly.objects.all() if first_month is None else UsageMonthly.objects.filter(month__gte=first_month)
    month_days = UsageDaily.objects.all() if first_month is None else UsageDaily.objects.filter(day__gte=first_month)

    def sums(qs, *group, aggregates=ROLLUP_SUMS) -> dict:
        return {tuple(r[g] for g in group): _totals(r) for r in qs.values(*group).annotate(**aggregates).order_by()}

    by_day = {key: _no_histogram(t) for key, t in sums(daily_qs, "workspace_id", "day").items()}
    day_totals = sums(totals_qs, "workspace_id", "day", aggregates=DAY_TOTAL_SUMS)
    daily_by_month: dict[tuple[int, date], Totals] = defaultdict(lambda: ZERO)
    days_of_month: dict[tuple[int, date], list[date]] = defaultdict(list)
    for (ws, day), totals in sums(month_days, "workspace_id", "day").items():
        daily_by_month[(ws, day.replace(day=1))] = _add(daily_by_month[(ws, day.replace(day=1))], totals)
        days_of_month[(ws, day.replace(day=1))].append(day)
    monthly = sums(months_qs, "workspace_id", "month")
    # Errors by reason (UsageErrorDaily) add up to the daily rows' errors.
    error_rows = UsageErrorDaily.objects.all() if since is None else UsageErrorDaily.objects.filter(day__gte=since)
    grouped = error_rows.values("workspace_id", "day").annotate(n=Sum("requests")).order_by()
    by_reason = {(r["workspace_id"], r["day"]): r["n"] for r in grouped}
    errors_at = METRICS.index("errors")
    found, heal = {}, set()
    excluded_months = {(ws, day.replace(day=1)) for ws, day in exclude}
    for key in sorted(set(by_day) | set(day_totals)):
        if key not in exclude and by_day.get(key, ZERO) != day_totals.get(key, ZERO):
            found[(*key, DriftCheck.COARSE)] = {"day_totals": _details(by_day.get(key, ZERO), day_totals.get(key, ZERO))}
            heal.add(key)
    for key in sorted(set(by_day) | set(by_reason)):
        expected, actual = by_day.get(key, ZERO)[errors_at], by_reason.get(key, 0)
        if key not in exclude and expected != actual:
            entry = found.setdefault((*key, DriftCheck.COARSE), {})
            entry["errors_by_reason"] = {"errors": {"expected": str(expected), "actual": str(actual)}}
            heal.add(key)
    for key in sorted(set(daily_by_month) | set(monthly)):
        if key not in excluded_months and daily_by_month.get(key, ZERO) != monthly.get(key, ZERO):
            entry = found.setdefault((*key, DriftCheck.COARSE), {})
            entry["month"] = _details(daily_by_month.get(key, ZERO), monthly.get(key, ZERO))
            heal.update((key[0], day) for day in days_of_month.get(key, [key[1]]))
    return found, heal


def _record(
    *, found, skipped, since, now, workspaces, tree_members, report: ReconcileReport, extra_heal: set[tuple[int, date]] = frozenset()
) -> None:
    with transaction.atomic():
        open_drifts = UsageDrift.objects.select_for_update().filter(resolved_at__isnull=True)
        if since is not None:
            open_drifts = open_drifts.filter(day__gte=since)
        known = {(d.workspace_id, d.day, d.kind): d for d in open_drifts}
        for key, details in found.items():
            ws, day, kind = key
            logger.error("usage drift: workspace %s, day %s, %s: %s", workspaces[ws].slug, day, kind, details)
            drift = known.pop(key, None)
            if drift is None:
                UsageDrift.objects.create(workspace_id=ws, day=day, kind=kind, details=details, first_seen_at=now, last_seen_at=now)
            else:
                drift.details, drift.last_seen_at = details, now
                drift.save(update_fields=["details", "last_seen_at"])
        for (ws, day, _kind), drift in known.items():
            if (ws, day) in skipped:
                continue  # still being recomputed: neither confirmed nor cleared
            drift.resolved_at = now
            drift.save(update_fields=["resolved_at"])
            report.resolved += 1
            logger.info("usage drift resolved: workspace %s, day %s", workspaces[ws].slug, day)
        if found:
            # Self-heal: recompute the drifting days from events on the next rollup run.
            heal = set(extra_heal)
            for ws, day, kind in found:
                # Coarse drifts name their days in extra_heal; edited events are never adopted.
                if kind not in (DriftCheck.COARSE, DriftCheck.EDITED):
                    heal.update((member, day) for member in (tree_members[ws] if kind == DriftCheck.TREE else [ws]))
            mark_dirty(day_keys=heal, hour_keys=[], now=now)
            report.healing = True


def default_window(now: datetime, days: int) -> date:
    return (now - timedelta(days=days)).date()
