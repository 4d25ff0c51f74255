"""Usage aggregation engine: find events not seen yet, mark their buckets dirty, recompute dirty buckets.

Two steps, each in its own transactions:

1. Discovery (one transaction, serialised by a row lock on the UsageCursor singleton) reads the
   events with an id above the cursor's high-water mark, marks the (workspace, local day) and
   (workspace, UTC hour) buckets they fall in as dirty, and advances the cursor. Ids commit out
   of order under concurrency (a gateway insert that took id 41 may commit after the one that
   took 42), so an id missing between seen ones is kept as a pending gap and re-checked on every
   run until it appears or is older than USAGE_GAP_TTL_SECONDS (rolled back, or a duplicate
   request_id that consumed an id). A late event (old created_at) has a new id like any other,
   so it re-opens its old bucket. Cost per run is the new id range, never history.

2. Recompute: a batch of dirty buckets is locked (FOR UPDATE SKIP LOCKED, so concurrent runs
   split the work), their rollup rows are deleted and re-inserted from the events by one grouped
   query, and the buckets are marked done, all in one transaction. A crash rolls the batch back,
   so the next run redoes it; rows are never incremented, so running twice changes nothing.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from decimal import ROUND_HALF_UP, Decimal
from functools import reduce
from operator import or_
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BigIntegerField, Count, F, Max, Min, Q, Sum, Window
from django.db.models.functions import Cast, Coalesce, Lead, Round, TruncDate, TruncHour
from django.utils import timezone

from console.models import Workspace
from usage.aggregates import Percentile
from usage.models import UsageCursor, UsageDaily, UsageDayBucket, UsageEvent, UsageHourBucket, UsageHourly

logger = logging.getLogger(__name__)

NANOS = 10**9
ONE_DAY = timedelta(days=1)
ONE_HOUR = timedelta(hours=1)
# A cursor row holding more open gaps than this is a sign of trouble, not of concurrency; the
# oldest are given up first (they are the least likely still to commit).
MAX_PENDING_GAPS = 2000

GROUP_FIELDS = ("workspace_id", "api_key_id", "deployment_id", "model", "currency")
# Cost is summed as integer nanos: exact on PostgreSQL (numeric) and on SQLite (whose decimal
# columns are floats; each cost rounds back to its exact nanos, and integers add exactly).
METRICS = {
    "m_requests": Count("id"),
    "m_errors": Count("id", filter=Q(status_code__gte=400)),
    "m_prompt_tokens": Sum("prompt_tokens"),
    "m_completion_tokens": Sum("completion_tokens"),
    "m_total_tokens": Sum("total_tokens"),
    "m_estimated_requests": Count("id", filter=Q(estimated=True)),
    "m_estimated_tokens": Coalesce(Sum("total_tokens", filter=Q(estimated=True)), 0),
    "m_cost_nanos": Cast(Sum(Round(F("cost") * NANOS)), BigIntegerField()),
    "m_p50": Percentile("latency_ms", 0.5),
    "m_p95": Percentile("latency_ms", 0.95),
}


@dataclass
class RollupReport:
    events_seen: int = 0
    day_buckets: int = 0
    hour_buckets: int = 0
    rows_written: int = 0
    pending_gaps: int = 0


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def hourly_cutoff(now: datetime) -> datetime:
    """The oldest hour that still gets an hourly rollup."""
    return hour_floor(now) - timedelta(hours=settings.USAGE_HOURLY_RETENTION_HOURS)


def local_day_start(day: date, tz: ZoneInfo) -> datetime:
    # fold=0: a midnight skipped by DST maps to the transition instant, the day's first moment.
    return datetime.combine(day, dtime.min, tzinfo=tz)


def days_of_hour(hour: datetime, tz: ZoneInfo) -> set[date]:
    """The local days a UTC hour overlaps (two when the zone's offset is not whole hours)."""
    return {hour.astimezone(tz).date(), (hour + ONE_HOUR - timedelta(microseconds=1)).astimezone(tz).date()}


def _ms(value: float | None) -> int:
    return 0 if value is None else int(Decimal(repr(value)).to_integral_value(ROUND_HALF_UP))


def _time_zones(workspace_ids: Iterable[int]) -> dict[int, ZoneInfo]:
    return {pk: ZoneInfo(name) for pk, name in Workspace.objects.filter(id__in=set(workspace_ids)).values_list("id", "time_zone")}


# --- discovery ---------------------------------------------------------------------------------


def _ranges_q(ranges: Iterable[tuple[int, int]]) -> Q:
    return reduce(or_, (Q(id__gte=low, id__lte=high) for low, high in ranges), Q(pk__in=[]))


def _holes(low_exclusive: int, top: int, first_present: int) -> list[tuple[int, int]]:
    """Id ranges in (low_exclusive, top] with no visible event."""
    holes = [(low_exclusive + 1, first_present - 1)] if first_present > low_exclusive + 1 else []
    following = (
        UsageEvent.objects.filter(id__gt=low_exclusive, id__lte=top)
        .annotate(next_id=Window(Lead("id"), order_by=F("id").asc()))
        .filter(next_id__gt=F("id") + 1)
        .values_list("id", "next_id")
    )
    holes.extend((present + 1, next_id - 1) for present, next_id in following)
    return holes


def _without(gaps: list[list], found: list[int]) -> list[list]:
    """Pending gaps minus the ids that have appeared, keeping each range's first-seen time."""
    result = []
    found_sorted = sorted(found)
    for low, high, first_seen in gaps:
        start = low
        for pk in found_sorted:
            if pk < start or pk > high:
                continue
            if pk > start:
                result.append([start, pk - 1, first_seen])
            start = pk + 1
        if start <= high:
            result.append([start, high, first_seen])
    return result


def mark_dirty(*, day_keys: Iterable[tuple[int, date]], hour_keys: Iterable[tuple[int, datetime]], now: datetime) -> None:
    """Upsert dirty=True for these buckets (sorted, so concurrent markers lock rows in one order)."""
    days = [UsageDayBucket(workspace_id=ws, day=day, dirty=True, marked_at=now) for ws, day in sorted(set(day_keys))]
    hours = [UsageHourBucket(workspace_id=ws, hour=hour, dirty=True, marked_at=now) for ws, hour in sorted(set(hour_keys))]
    if days:
        UsageDayBucket.objects.bulk_create(
            days, batch_size=1000, update_conflicts=True, unique_fields=["workspace", "day"], update_fields=["dirty", "marked_at"]
        )
    if hours:
        UsageHourBucket.objects.bulk_create(
            hours, batch_size=1000, update_conflicts=True, unique_fields=["workspace", "hour"], update_fields=["dirty", "marked_at"]
        )


def discover(*, now: datetime) -> tuple[int, int]:
    """Mark the buckets of events not seen before as dirty and advance the cursor, atomically.

    Returns (events seen, gaps still pending).
    """
    UsageCursor.objects.get_or_create(pk=1)
    with transaction.atomic():
        cursor = UsageCursor.objects.select_for_update().get(pk=1)
        high_water = cursor.high_water_id
        gaps = [list(g) for g in cursor.pending_gaps]

        # Order matters: holes are listed before the events are grouped, so an id that commits
        # in between is both counted now and re-checked later (harmless), never neither.
        found = list(UsageEvent.objects.filter(_ranges_q((g[0], g[1]) for g in gaps)).values_list("id", flat=True)) if gaps else []
        head = UsageEvent.objects.filter(id__gt=high_water).aggregate(n=Count("id"), top=Max("id"), first=Min("id"))
        top = head["top"] or high_water
        new_holes = _holes(high_water, top, head["first"]) if head["n"] and head["n"] != top - high_water else []

        seen = Q(id__gt=high_water, id__lte=top)
        if found:
            seen |= Q(id__in=found)
        groups = list(
            UsageEvent.objects.filter(seen)
            .annotate(hour=TruncHour("created_at", tzinfo=UTC))
            .values_list("workspace_id", "hour")
            .annotate(n=Count("id"))
            .order_by()
        )
        zones = _time_zones(ws for ws, _, _ in groups)
        cutoff = hourly_cutoff(now)
        day_keys: set[tuple[int, date]] = set()
        hour_keys: set[tuple[int, datetime]] = set()
        for ws, hour, _ in groups:
            day_keys.update((ws, day) for day in days_of_hour(hour, zones[ws]))
            if hour >= cutoff:
                hour_keys.add((ws, hour))
        mark_dirty(day_keys=day_keys, hour_keys=hour_keys, now=now)

        now_ts = now.timestamp()
        pending = []
        for low, high, first_seen in _without(gaps, found):
            if now_ts - first_seen > settings.USAGE_GAP_TTL_SECONDS:
                logger.info("usage: event ids %s-%s never committed; no longer waiting for them", low, high)
            else:
                pending.append([low, high, first_seen])
        pending.extend([low, high, now_ts] for low, high in new_holes)
        if len(pending) > MAX_PENDING_GAPS:
            pending.sort(key=lambda g: g[0])
            logger.warning("usage: %d pending id gaps; giving up on the %d oldest", len(pending), len(pending) - MAX_PENDING_GAPS)
            pending = pending[-MAX_PENDING_GAPS:]

        cursor.high_water_id = top
        cursor.pending_gaps = pending
        cursor.updated_at = now
        cursor.save(update_fields=["high_water_id", "pending_gaps", "updated_at"])
    return sum(n for _, _, n in groups), len(pending)


# --- recompute ---------------------------------------------------------------------------------


def _spans(keys: list[tuple[int, object]], step) -> list[tuple[int, object, object]]:
    """Merge sorted (workspace, period) keys into (workspace, first, last) runs of consecutive periods."""
    spans: list[list] = []
    for ws, period in sorted(keys):
        if spans and spans[-1][0] == ws and spans[-1][2] + step == period:
            spans[-1][2] = period
        else:
            spans.append([ws, period, period])
    return [tuple(s) for s in spans]


def _rollup_fields(row: dict) -> dict:
    return {
        "workspace_id": row["workspace_id"],
        "api_key_id": row["api_key_id"],
        "deployment_id": row["deployment_id"],
        "model": row["model"],
        "currency": row["currency"],
        "requests": row["m_requests"],
        "errors": row["m_errors"],
        "prompt_tokens": row["m_prompt_tokens"],
        "completion_tokens": row["m_completion_tokens"],
        "total_tokens": row["m_total_tokens"],
        "estimated_requests": row["m_estimated_requests"],
        "estimated_tokens": row["m_estimated_tokens"],
        "cost": Decimal(row["m_cost_nanos"]).scaleb(-9),
        "latency_p50_ms": _ms(row["m_p50"]),
        "latency_p95_ms": _ms(row["m_p95"]),
    }


def _tune_session() -> None:
    # A recompute sorts its events by group; keep that sort in memory on PostgreSQL.
    if connection.vendor == "postgresql":
        with connection.cursor() as c:
            c.execute("SET LOCAL work_mem = '64MB'")


def _test_pause() -> None:
    if settings.USAGE_ROLLUP_TEST_PAUSE_MS:
        time.sleep(settings.USAGE_ROLLUP_TEST_PAUSE_MS / 1000)


def _recompute_days(buckets: list[UsageDayBucket]) -> int:
    zones = _time_zones(b.workspace_id for b in buckets)
    by_zone: dict[ZoneInfo, list[tuple[int, date]]] = defaultdict(list)
    for b in buckets:
        by_zone[zones[b.workspace_id]].append((b.workspace_id, b.day))
    written = 0
    for tz, keys in by_zone.items():
        wanted = set(keys)
        spans = _spans(keys, ONE_DAY)
        UsageDaily.objects.filter(reduce(or_, (Q(workspace_id=ws, day__gte=a, day__lte=b) for ws, a, b in spans))).delete()
        events = UsageEvent.objects.filter(
            reduce(
                or_,
                (
                    Q(workspace_id=ws, created_at__gte=local_day_start(a, tz), created_at__lt=local_day_start(b + ONE_DAY, tz))
                    for ws, a, b in spans
                ),
            )
        )
        grouped = events.annotate(day=TruncDate("created_at", tzinfo=tz)).values(*GROUP_FIELDS, "day").annotate(**METRICS).order_by()
        rows = [UsageDaily(day=r["day"], **_rollup_fields(r)) for r in grouped if (r["workspace_id"], r["day"]) in wanted]
        UsageDaily.objects.bulk_create(rows, batch_size=2000)
        written += len(rows)
    return written


def _recompute_hours(buckets: list[UsageHourBucket]) -> int:
    keys = [(b.workspace_id, b.hour) for b in buckets]
    wanted = set(keys)
    spans = _spans(keys, ONE_HOUR)
    UsageHourly.objects.filter(reduce(or_, (Q(workspace_id=ws, hour__gte=a, hour__lte=b) for ws, a, b in spans))).delete()
    events = UsageEvent.objects.filter(
        reduce(or_, (Q(workspace_id=ws, created_at__gte=a, created_at__lt=b + ONE_HOUR) for ws, a, b in spans))
    )
    grouped = events.annotate(hour=TruncHour("created_at", tzinfo=UTC)).values(*GROUP_FIELDS, "hour").annotate(**METRICS).order_by()
    rows = [UsageHourly(hour=r["hour"], **_rollup_fields(r)) for r in grouped if (r["workspace_id"], r["hour"]) in wanted]
    UsageHourly.objects.bulk_create(rows, batch_size=2000)
    return len(rows)


def recompute_batch(*, kind: str, now: datetime, batch_size: int) -> tuple[int, int]:
    """Recompute up to batch_size dirty buckets of one kind ("day" or "hour") in one transaction.

    Returns (buckets, rows written); (0, 0) when nothing is left that another run is not holding.
    """
    model, order, recompute = (
        (UsageDayBucket, "day", _recompute_days) if kind == "day" else (UsageHourBucket, "hour", _recompute_hours)
    )
    with transaction.atomic():
        buckets = list(
            model.objects.select_for_update(skip_locked=True)
            .filter(dirty=True, marked_at__lte=now)
            .order_by("workspace_id", order)[:batch_size]
        )
        if not buckets:
            return 0, 0
        _tune_session()
        written = recompute(buckets)
        _test_pause()
        model.objects.filter(pk__in=[b.pk for b in buckets]).update(dirty=False, computed_at=now)
    return len(buckets), written


def prune_hourly(*, now: datetime) -> None:
    cutoff = hourly_cutoff(now)
    with transaction.atomic():
        UsageHourBucket.objects.filter(hour__lt=cutoff).delete()
        UsageHourly.objects.filter(hour__lt=cutoff).delete()


def run(*, now: datetime | None = None, max_batches: int | None = None) -> RollupReport:
    """One aggregation pass: discover, prune old hours, recompute every bucket dirty as of `now`."""
    now = now or timezone.now()
    report = RollupReport()
    report.events_seen, report.pending_gaps = discover(now=now)
    prune_hourly(now=now)
    batches = 0
    for kind in ("day", "hour"):
        while max_batches is None or batches < max_batches:
            buckets, rows = recompute_batch(kind=kind, now=now, batch_size=settings.USAGE_ROLLUP_BATCH_SIZE)
            if not buckets:
                break
            batches += 1
            report.rows_written += rows
            if kind == "day":
                report.day_buckets += buckets
            else:
                report.hour_buckets += buckets
    return report


def mark_history(*, since: date | None, workspace_ids: list[int] | None, now: datetime) -> None:
    """Mark dirty every bucket from `since` (a local date; None: all history) that has events or rows.

    Buckets with rows but no events are included so stale rows (e.g. after a time-zone change)
    are deleted by their recompute.
    """
    workspaces = Workspace.objects.all() if workspace_ids is None else Workspace.objects.filter(id__in=workspace_ids)
    by_zone: dict[str, list[int]] = defaultdict(list)
    for pk, name in workspaces.values_list("id", "time_zone"):
        by_zone[name].append(pk)
    cutoff = hourly_cutoff(now)
    day_keys: set[tuple[int, date]] = set()
    hour_keys: set[tuple[int, datetime]] = set()
    for name, ids in by_zone.items():
        tz = ZoneInfo(name)
        events = UsageEvent.objects.filter(workspace_id__in=ids)
        rollups = UsageDaily.objects.filter(workspace_id__in=ids)
        if since is not None:
            events = events.filter(created_at__gte=local_day_start(since, tz))
            rollups = rollups.filter(day__gte=since)
        day_keys.update(events.annotate(d=TruncDate("created_at", tzinfo=tz)).values_list("workspace_id", "d").distinct().order_by())
        day_keys.update(rollups.values_list("workspace_id", "day").distinct().order_by())
        start = cutoff if since is None else max(cutoff, local_day_start(since, tz))
        recent = UsageEvent.objects.filter(workspace_id__in=ids, created_at__gte=start)
        hour_keys.update(recent.annotate(h=TruncHour("created_at", tzinfo=UTC)).values_list("workspace_id", "h").distinct().order_by())
        hour_keys.update(
            UsageHourly.objects.filter(workspace_id__in=ids, hour__gte=start).values_list("workspace_id", "hour").distinct().order_by()
        )
    with transaction.atomic():
        mark_dirty(day_keys=day_keys, hour_keys=hour_keys, now=now)
