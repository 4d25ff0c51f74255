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
from functools import reduce
from operator import or_
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Case,
    CharField,
    Count,
    Exists,
    F,
    Max,
    Min,
    OuterRef,
    Q,
    Subquery,
    Sum,
    Value,
    When,
    Window,
)
from django.db.models.functions import Coalesce, Lead, TruncDate, TruncHour, TruncMonth
from django.utils import timezone

from console.models import Workspace
from usage.aggregates import ExactSum, LocalDate
from usage.latency import HistogramSum, LatencyHistogram
from usage.models import (
    UsageCursor,
    UsageDaily,
    UsageDailyTotal,
    UsageDayBucket,
    UsageErrorDaily,
    UsageErrorHourly,
    UsageEvent,
    UsageHourBucket,
    UsageHourly,
    UsageMonthly,
    UsageRollupZone,
)

logger = logging.getLogger(__name__)

NANOS = 10**9
ONE_DAY = timedelta(days=1)
ONE_HOUR = timedelta(hours=1)
# A cursor row holding more open gaps than this is a sign of trouble, not of concurrency; the
# oldest are given up first (they are the least likely still to commit).
MAX_PENDING_GAPS = 2000
# Above this many new events, discovery marks whole spans of days instead of grouping every event by hour.
COARSE_DISCOVERY_EVENTS = 200_000
# Discovery counts new ids per block of this many to find the few blocks that have holes.
ID_BLOCK = 1024


# A rollup row's identity besides its period: the event fields it is grouped by, same names on both.
GROUP_KEYS = ("workspace_id", "api_key_id", "deployment_id", "endpoint", "currency", "input_price_per_million", "output_price_per_million")

# Rollup column (without the r_ prefix, which keeps the names clear of the event's own fields)
# → aggregate over the bucket's events. Cost sums are exact on both databases (ExactSum).
ROLLUP_COLUMNS = {
    "r_requests": Count("id"),
    "r_errors": Count("id", filter=Q(status_code__gte=400)),
    "r_prompt_tokens": Sum("prompt_tokens"),
    "r_completion_tokens": Sum("completion_tokens"),
    "r_total_tokens": Sum("total_tokens"),
    "r_estimated_requests": Count("id", filter=Q(estimated=True)),
    "r_estimated_tokens": Coalesce(Sum("total_tokens", filter=Q(estimated=True)), 0),
    "r_cost": ExactSum("cost"),
    "r_latency_histogram": LatencyHistogram("latency_ms"),
    "r_latency_max_ms": Max("latency_ms"),
}


@dataclass
class RollupReport:
    events_seen: int = 0
    day_buckets: int = 0
    hour_buckets: int = 0
    rows_written: int = 0
    pending_gaps: int = 0
    rezoned_workspaces: int = 0


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


def _time_zones(workspace_ids: Iterable[int]) -> dict[int, ZoneInfo]:
    return {pk: ZoneInfo(name) for pk, name in Workspace.objects.filter(id__in=set(workspace_ids)).values_list("id", "time_zone")}


# --- discovery ---------------------------------------------------------------------------------


def _ranges_q(ranges: Iterable[tuple[int, int]]) -> Q:
    return reduce(or_, (Q(id__gte=low, id__lte=high) for low, high in ranges), Q(pk__in=[]))


def _holes_in(start: int, end: int) -> list[tuple[int, int]]:
    """Id ranges within [start, end] with no visible event (over-reporting one is harmless:
    a pending id that turns out present is simply counted again)."""
    ids = UsageEvent.objects.filter(id__gte=start, id__lte=end)
    first = ids.aggregate(first=Min("id"))["first"]
    if first is None:
        return [(start, end)]
    holes = [(start, first - 1)] if first > start else []
    following = (
        ids.annotate(next_id=Window(Lead("id"), order_by=F("id").asc()))
        .filter(Q(next_id__gt=F("id") + 1) | Q(next_id__isnull=True))
        .values_list("id", "next_id")
    )
    for pk, next_id in sorted(following):
        if next_id is not None:
            holes.append((pk + 1, next_id - 1))
        elif pk < end:
            holes.append((pk + 1, end))
    return holes


def _scan_new(high_water: int) -> tuple[int, int, list[tuple[int, int]]]:
    """(events, top id, holes) for the ids above high_water, from per-block counts.

    Counting per block of 1024 ids is one cheap pass; only blocks with fewer events than ids
    are scanned for the exact holes, so a 10 M backlog costs about a second, not a window
    function over every row.
    """
    blocks = {
        r["block"]: r
        for r in UsageEvent.objects.filter(id__gt=high_water)
        .annotate(block=F("id") / ID_BLOCK)
        .values("block")
        .annotate(n=Count("id"), last=Max("id"))
        .order_by()
    }
    if not blocks:
        return 0, high_water, []
    top = max(r["last"] for r in blocks.values())
    holes: list[tuple[int, int]] = []
    for block in range((high_water + 1) // ID_BLOCK, top // ID_BLOCK + 1):
        start, end = max(high_water + 1, block * ID_BLOCK), min(top, (block + 1) * ID_BLOCK - 1)
        counted = blocks.get(block)
        if counted is not None and counted["n"] == end - start + 1:
            continue
        for low, high in _holes_in(start, end) if counted is not None else [(start, end)]:
            if holes and holes[-1][1] + 1 == low:
                holes[-1] = (holes[-1][0], high)
            else:
                holes.append((low, high))
    return sum(r["n"] for r in blocks.values()), top, holes


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
    """Upsert dirty=True for these buckets (sorted, so concurrent markers lock rows in one order).

    Days before the retention horizon (UsageCursor.pruned_before) are never marked: their events
    were pruned on purpose, and recomputing them would erase the bills they hold."""
    day_keys = set(day_keys)
    if day_keys:
        horizon = UsageCursor.objects.filter(pk=1).values_list("pruned_before", flat=True).first()
        if horizon is not None:
            day_keys = {(ws, day) for ws, day in day_keys if day >= horizon}
    days = [UsageDayBucket(workspace_id=ws, day=day, dirty=True, marked_at=now) for ws, day in sorted(day_keys)]
    hours = [UsageHourBucket(workspace_id=ws, hour=hour, dirty=True, marked_at=now) for ws, hour in sorted(set(hour_keys))]
    if days:
        UsageDayBucket.objects.bulk_create(
            days, batch_size=1000, update_conflicts=True, unique_fields=["workspace", "day"], update_fields=["dirty", "marked_at"]
        )
    if hours:
        UsageHourBucket.objects.bulk_create(
            hours, batch_size=1000, update_conflicts=True, unique_fields=["workspace", "hour"], update_fields=["dirty", "marked_at"]
        )


def _buckets_of(events, now: datetime) -> tuple[set, set]:
    """The (workspace, local day) and (workspace, UTC hour) buckets these events fall in."""
    groups = list(events.annotate(hour=TruncHour("created_at", tzinfo=UTC)).values_list("workspace_id", "hour").distinct().order_by())
    zones = _time_zones(ws for ws, _ in groups)
    cutoff = hourly_cutoff(now)
    day_keys: set[tuple[int, date]] = set()
    hour_keys: set[tuple[int, datetime]] = set()
    for ws, hour in groups:
        day_keys.update((ws, day) for day in days_of_hour(hour, zones[ws]))
        if hour >= cutoff:
            hour_keys.add((ws, hour))
    return day_keys, hour_keys


def _workspace_spans(events, *, everything: bool) -> list[tuple[int, datetime, datetime]]:
    """(workspace, first, last created_at) of these events. When they are all the events there
    are (a first run), two index probes per workspace answer it without reading the table."""
    if not everything:
        spans = events.values("workspace_id").annotate(first=Min("created_at"), last=Max("created_at")).order_by()
        return [(s["workspace_id"], s["first"], s["last"]) for s in spans]
    spans = []
    for ws in Workspace.objects.values_list("id", flat=True):
        probe = UsageEvent.objects.filter(workspace_id=ws).aggregate(first=Min("created_at"), last=Max("created_at"))
        if probe["first"] is not None:
            spans.append((ws, probe["first"], probe["last"]))
    return spans


def _buckets_between(spans: list[tuple[int, datetime, datetime]], now: datetime) -> tuple[set, set]:
    """For a large backlog (a first run, a restore): every bucket between each workspace's first
    and last new event. Cheaper to find than the exact set, and an empty bucket costs little."""
    zones = _time_zones(ws for ws, _, _ in spans)
    cutoff = hourly_cutoff(now)
    day_keys: set[tuple[int, date]] = set()
    hour_keys: set[tuple[int, datetime]] = set()
    for ws, first, last in spans:
        day, end = first.astimezone(zones[ws]).date(), last.astimezone(zones[ws]).date()
        while day <= end:
            day_keys.add((ws, day))
            day += ONE_DAY
        hour = max(hour_floor(first), cutoff)
        while hour <= last:
            hour_keys.add((ws, hour))
            hour += ONE_HOUR
    return day_keys, hour_keys


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
        new_count, top, new_holes = _scan_new(high_water)

        seen = UsageEvent.objects.filter(Q(id__gt=high_water, id__lte=top) | Q(id__in=found))
        if new_count > COARSE_DISCOVERY_EVENTS:
            # On a first run every event is new: the spans may include events committed since
            # the count, which only adds buckets.
            day_keys, hour_keys = _buckets_between(_workspace_spans(seen, everything=high_water == 0), now)
        else:
            day_keys, hour_keys = _buckets_of(seen, now)
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
    return new_count + len(found), len(pending)


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


def _insert_grouped(model, period: str, period_expr, events) -> int:
    """INSERT INTO <rollup table> SELECT ... grouped events: rows never travel through Python."""
    grouped = events.values(*GROUP_KEYS, r_period=period_expr).annotate(r_model=Max("model"), **ROLLUP_COLUMNS).order_by()
    sql, params = grouped.query.sql_with_params()
    qn = connection.ops.quote_name
    keys = {**{name: name for name in GROUP_KEYS}, period: "r_period", "model": "r_model"}
    targets = [*keys, *(name.removeprefix("r_") for name in ROLLUP_COLUMNS)]
    sources = [*keys.values(), *ROLLUP_COLUMNS]
    statement = (
        f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(t) for t in targets)}) "
        f"SELECT {', '.join('g.' + qn(s) for s in sources)} FROM ({sql}) g"
    )
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute(statement, params)
            return cursor.rowcount
        # PostgreSQL cannot estimate how many groups the local day (or hour) of created_at makes:
        # it takes created_at's own near-unique count, predicts millions of groups, and sorts the
        # batch's events (spilling to disk) where a hash table of its ~10k groups fits in memory.
        # Without sorting, one batch of 2.7 M events: 5.9 → 2.2 s (docs/BENCHMARKS.md).
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute(statement, params)
        written = cursor.rowcount
        cursor.execute("RESET enable_sort")
        return written


def _tune_session() -> None:
    # A recompute sorts its events by group: keep that sort in memory. JIT compiling the
    # aggregate costs more (~100 ms) than it saves on a minute's worth of buckets.
    if connection.vendor == "postgresql":
        with connection.cursor() as c:
            c.execute("SET LOCAL work_mem = '128MB'; SET LOCAL jit = off")


def _test_pause() -> None:
    if settings.USAGE_ROLLUP_TEST_PAUSE_MS:
        time.sleep(settings.USAGE_ROLLUP_TEST_PAUSE_MS / 1000)


def _recompute_days(buckets: list[UsageDayBucket]) -> int:
    names = dict(Workspace.objects.filter(id__in={b.workspace_id for b in buckets}).values_list("id", "time_zone"))
    spans = _spans([(b.workspace_id, b.day) for b in buckets], ONE_DAY)
    in_spans = reduce(or_, (Q(workspace_id=ws, day__gte=a, day__lte=b) for ws, a, b in spans))
    UsageDaily.objects.filter(in_spans).delete()
    UsageErrorDaily.objects.filter(in_spans).delete()
    # Each span's event range is exactly its local days, so every row grouped here belongs to a
    # bucket of this batch. One query for all time zones: the zone is picked per row.
    events = UsageEvent.objects.filter(
        reduce(
            or_,
            (
                Q(
                    workspace_id=ws,
                    created_at__gte=local_day_start(a, ZoneInfo(names[ws])),
                    created_at__lt=local_day_start(b + ONE_DAY, ZoneInfo(names[ws])),
                )
                for ws, a, b in spans
            ),
        )
    )
    by_zone: dict[str, list[int]] = defaultdict(list)
    for ws, name in names.items():
        by_zone[name].append(ws)
    if len(by_zone) == 1:
        zone = Value(next(iter(by_zone)))
    else:
        zone = Case(*(When(workspace_id__in=ids, then=Value(name)) for name, ids in by_zone.items()), output_field=CharField())
    written = _insert_grouped(UsageDaily, "day", LocalDate("created_at", zone), events)
    _insert_errors(UsageErrorDaily, "day", LocalDate("created_at", zone), events)
    _recompute_coarse(spans)
    return written


# An error rollup row's identity besides its period: where the errors came from and why.
ERROR_KEYS = ("workspace_id", "api_key_id", "deployment_id", "endpoint", "status_code", "error_code")


def _insert_errors(model, period: str, period_expr, events) -> None:
    """The bucket's error events (status >= 400) counted per key, deployment, status and reason."""
    grouped = events.filter(status_code__gte=400).values(*ERROR_KEYS, **{f"r_{period}": period_expr}).annotate(r_requests=Count("id"))
    _insert_select(model, grouped.order_by())


# UsageDaily column → how the coarser rollups combine it (r_ aliases, as in ROLLUP_COLUMNS).
SUMMED_COLUMNS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_requests",
    "estimated_tokens",
    "cost",
)


def month_start(day: date) -> date:
    return day.replace(day=1)


def month_end(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1) - ONE_DAY


def _insert_select(model, grouped) -> None:
    """INSERT INTO <model's table> (<names>) SELECT ... from a values().annotate() queryset whose
    columns are those names, annotations prefixed r_ (Django refuses an alias equal to a field)."""
    sql, params = grouped.query.sql_with_params()
    qn = connection.ops.quote_name
    names = [*grouped.query.values_select, *grouped.query.annotation_select]
    targets = [name.removeprefix("r_") for name in names]
    statement = (
        f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(t) for t in targets)}) "
        f"SELECT {', '.join('g.' + qn(n) for n in names)} FROM ({sql}) g"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def _recompute_coarse(spans: list[tuple[int, date, date]]) -> None:
    """Replace, from UsageDaily, the day totals of these day spans and the monthly rows of every
    month they touch. Runs in the transaction that replaced the spans' daily rows.

    A month's rows read the daily rows of all its days, some of which another run may be
    replacing at the same time: a lock per (workspace, month) makes the second run wait, and its
    statements then see the first one's committed rows (READ COMMITTED takes a snapshot per
    statement). Taken in sorted order, so two runs never wait on each other.
    """
    days = reduce(or_, (Q(workspace_id=ws, day__gte=a, day__lte=b) for ws, a, b in spans))
    sums = {f"r_{name}": Sum(name) for name in SUMMED_COLUMNS}
    UsageDailyTotal.objects.filter(days).delete()
    _insert_select(UsageDailyTotal, UsageDaily.objects.filter(days).values("workspace_id", "day", "currency").annotate(**sums).order_by())

    months = set()
    for ws, a, b in spans:
        month = month_start(a)
        while month <= b:
            months.add((ws, month))
            month = month_end(month) + ONE_DAY
    months = sorted(months)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for ws, month in months:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [ws, month.year * 12 + month.month - 1])
    UsageMonthly.objects.filter(reduce(or_, (Q(workspace_id=ws, month=m) for ws, m in months))).delete()
    grouped = (
        UsageDaily.objects.filter(reduce(or_, (Q(workspace_id=ws, day__gte=m, day__lte=month_end(m)) for ws, m in months)))
        .values(*GROUP_KEYS, month=TruncMonth("day"))
        .annotate(
            r_model=Max("model"), **sums, r_latency_histogram=HistogramSum("latency_histogram"), r_latency_max_ms=Max("latency_max_ms")
        )
        .order_by()
    )
    _insert_select(UsageMonthly, grouped)


def _recompute_hours(buckets: list[UsageHourBucket]) -> int:
    spans = _spans([(b.workspace_id, b.hour) for b in buckets], ONE_HOUR)
    in_spans = reduce(or_, (Q(workspace_id=ws, hour__gte=a, hour__lte=b) for ws, a, b in spans))
    UsageHourly.objects.filter(in_spans).delete()
    UsageErrorHourly.objects.filter(in_spans).delete()
    events = UsageEvent.objects.filter(
        reduce(or_, (Q(workspace_id=ws, created_at__gte=a, created_at__lt=b + ONE_HOUR) for ws, a, b in spans))
    )
    written = _insert_grouped(UsageHourly, "hour", TruncHour("created_at", tzinfo=UTC), events)
    _insert_errors(UsageErrorHourly, "hour", TruncHour("created_at", tzinfo=UTC), events)
    return written


def recompute_batch(*, kind: str, now: datetime, batch_size: int) -> tuple[int, int]:
    """Recompute up to batch_size dirty buckets of one kind ("day" or "hour") in one transaction.

    Returns (buckets, rows written); (0, 0) when nothing is left that another run is not holding.
    """
    model, order, recompute = (UsageDayBucket, "day", _recompute_days) if kind == "day" else (UsageHourBucket, "hour", _recompute_hours)
    with transaction.atomic():
        buckets = list(
            model.objects.select_for_update(skip_locked=True)
            .filter(dirty=True, marked_at__lte=now)
            # Period-major: a batch covers a stretch of time for all workspaces, which is where
            # the events of that stretch sit on disk (they are appended in time order).
            .order_by(order, "workspace_id")[:batch_size]
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
        UsageErrorHourly.objects.filter(hour__lt=cutoff).delete()


def run(*, now: datetime | None = None, max_batches: int | None = None) -> RollupReport:
    """One aggregation pass: discover, prune old hours, recompute every bucket dirty as of `now`."""
    now = now or timezone.now()
    report = RollupReport()
    report.rezoned_workspaces = len(rezone(now=now))
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


def rezone(*, now: datetime) -> list[int]:
    """Mark all history dirty for each workspace whose time zone differs from the one its daily
    rollups were built in, and record the new zone. Returns those workspaces' ids.

    The comparison runs on every pass, so a zone change made anywhere (console, admin, shell)
    is picked up without a hook, and a pass that crashed half-way simply finds it again.
    """
    built_in = UsageRollupZone.objects.filter(workspace=OuterRef("pk")).values("time_zone")
    # A workspace seen for the first time (created since the last pass): its rollups, if any
    # already exist, were built in a zone nobody recorded, so record "unknown" and rebuild.
    new = list(
        Workspace.objects.filter(~Exists(built_in))
        .annotate(has_rows=Exists(UsageDaily.objects.filter(workspace=OuterRef("pk"))))
        .values_list("id", "time_zone", "has_rows")
    )
    if new:
        UsageRollupZone.objects.bulk_create(
            [UsageRollupZone(workspace_id=pk, time_zone="" if has_rows else name, updated_at=now) for pk, name, has_rows in new],
            ignore_conflicts=True,
        )
    changed = list(
        Workspace.objects.annotate(built=Subquery(built_in)).exclude(built=F("time_zone")).order_by("id").values_list("id", flat=True)
    )
    rezoned = []
    for pk in changed:
        with transaction.atomic():
            # The lock orders concurrent passes: the second one finds the zone recorded and skips.
            state = UsageRollupZone.objects.select_for_update().filter(workspace_id=pk).first()
            name = Workspace.objects.filter(pk=pk).values_list("time_zone", flat=True).first()
            if state is None or name is None or state.time_zone == name:
                continue  # deleted meanwhile, or another pass got here first
            logger.info("usage: workspace %s moved from %s to %s; rebuilding its daily rollups", pk, state.time_zone or "?", name)
            mark_history(since=None, workspace_ids=[pk], now=now)
            state.time_zone, state.updated_at = name, now
            state.save(update_fields=["time_zone", "updated_at"])
            rezoned.append(pk)
    return rezoned


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
