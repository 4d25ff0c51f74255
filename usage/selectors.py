"""Reads of the usage tables, for every app: the dashboards and bills, a key's yearly usage and
refusals, a deployment's requests today.

The dashboards and bills read rollups (UsageHourly, UsageDaily and the coarser UsageDailyTotal
and UsageMonthly), never events; the per-key limits also read the gateway's live TPM counters.
The few reads that must be exact up to the last request (a key's yearly usage, its latest
refusals, today's requests) read the events, each through an index.

A year of a busy organisation is ~200k daily rows, and summing them is what a page costs, so
whole months are read from UsageMonthly and the per-day series, unless filtered by key or
deployment, from UsageDailyTotal (docs/BENCHMARKS.md, "Dashboards").

Money stays an exact Decimal (9 places, as stored) through every sum; it is rounded to cents once,
on the figures a person reads. Where several rounded figures must add up to a rounded total
(billing sections, line items), cents are allocated with `allocate_cents`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from functools import reduce
from operator import or_
from typing import ClassVar
from zoneinfo import ZoneInfo

from django.db import connection
from django.db.models import Count, IntegerField, Max, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from redis.exceptions import RedisError

from console.models import Workspace
from deployments.models import Deployment, DeploymentPrice
from keys.counters import tpm_used_this_minute
from keys.models import ApiKey, display_name
from usage.error_reasons import error_reason_text
from usage.latency import HistogramSum, p95
from usage.models import (
    ENDPOINTS,
    UsageDaily,
    UsageDailyTotal,
    UsageErrorDaily,
    UsageErrorHourly,
    UsageEvent,
    UsageHourly,
    UsageMonthly,
)
from usage.rollup import hour_floor, local_day_start, month_end

CENT = Decimal("0.01")
EARLIEST = datetime.min.replace(tzinfo=UTC)
ZERO = Decimal(0)
SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests", "estimated_tokens", "cost")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def price_text(price: Decimal) -> str:
    """A per-million price as people write it: 0.50, 0.333, 1.777 (at least cents, no trailing zeros beyond)."""
    exact = price.normalize()
    return f"{exact.quantize(CENT) if exact.as_tuple().exponent > -2 else exact:f}"


def allocate_cents(exact: list[Decimal]) -> list[Decimal]:
    """Round each part to cents so the parts add up exactly to cents(sum(exact)).

    Largest remainder: every part is rounded down, then the missing cents go one each to the parts
    with the largest remainders (ties: the earlier part). Parts are non-negative costs.
    """
    total_cents = int(cents(sum(exact, ZERO)) / CENT)
    floors = [int((part / CENT).to_integral_value(rounding=ROUND_DOWN)) for part in exact]
    missing = total_cents - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] / CENT - floors[i]), i))
    for i in order[: max(missing, 0)]:
        floors[i] += 1
    return [Decimal(f) * CENT for f in floors]


def _sums() -> dict:
    return {name: Sum(name) for name in SUMMED}


def _clean(row: dict) -> dict:
    for name in SUMMED:
        row[name] = row.get(name) or (ZERO if name == "cost" else 0)
    return row


HOURLY_WINDOW = 48
NEAR_LIMIT_PERCENT = 80
SORT_FIELDS = {
    "name": None,  # the group's own label field
    "requests": "requests",
    "errors": "errors",
    "prompt_tokens": "prompt_tokens",
    "completion_tokens": "completion_tokens",
    "estimated_tokens": "estimated_tokens",
    "cost": "cost",
    "p95": "p95_ms",
}
DEFAULT_SORT = "-cost"
# Breakdown kind → (grouped fields, label field for sorting by name, id field for ties).
BREAKDOWNS = {
    "workspace": (("workspace_id", "workspace__slug", "workspace__name"), "workspace__name", "workspace_id"),
    "key": (("api_key_id", "api_key__public_id", "api_key__name"), "api_key__name", "api_key_id"),
    "deployment": (("deployment_id", "deployment__public_id", "deployment__name"), "deployment__name", "deployment_id"),
    "endpoint": (("endpoint", "endpoint_label"), "endpoint_label", "endpoint"),
}


@dataclass
class UsageScope:
    """Which rollup rows a dashboard reads: a workspace (its tree if it is a default one) and filters.

    Daily scopes read UsageDaily for the local days start..end; hourly ones read UsageHourly for
    the HOURLY_WINDOW hours ending with the one `now` is in (start/end are then those hours' local days).
    """

    workspace: Workspace
    start: date
    end: date
    sub: Workspace | None = None
    key_id: int | None = None
    deployment_id: int | None = None
    endpoint: str | None = None  # an API, e.g. "embeddings" (usage.models.ENDPOINTS)
    hourly: bool = False
    last_hour: datetime | None = None
    latest_day: date | None = None  # no workspace in scope has usage after this local day (yet)
    tree_ids: tuple[int, ...] | None = None  # the workspace tree's ids when the caller loaded them anyway

    @classmethod
    def last_48_hours(cls, workspace: Workspace, now: datetime, **filters) -> UsageScope:
        last = hour_floor(now)
        tz = workspace.tz
        first = last - timedelta(hours=HOURLY_WINDOW - 1)
        return cls(
            workspace=workspace, start=first.astimezone(tz).date(), end=last.astimezone(tz).date(), hourly=True, last_hour=last, **filters
        )

    @property
    def first_hour(self) -> datetime:
        return self.last_hour - timedelta(hours=HOURLY_WINDOW - 1)

    def periods(self) -> list:
        if self.hourly:
            return [self.first_hour + timedelta(hours=i) for i in range(HOURLY_WINDOW)]
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def workspace_q(self) -> Q:
        if self.sub is not None:
            return Q(workspace=self.sub)
        if self.tree_ids is not None:
            # A literal id list: PostgreSQL then knows how many rows it gets (from a subquery it
            # guesses 2 workspaces of 7, and sorts a year's rows instead of hashing them).
            return Q(workspace_id__in=self.tree_ids)
        return self.workspace.tree_q()

    def _filtered(self, qs: QuerySet) -> QuerySet:
        if self.key_id is not None:
            qs = qs.filter(api_key_id=self.key_id)
        if self.deployment_id is not None:
            qs = qs.filter(deployment_id=self.deployment_id)
        if self.endpoint is not None:
            qs = qs.filter(endpoint=self.endpoint)
        return qs

    def rows(self) -> QuerySet:
        if self.hourly:
            qs = UsageHourly.objects.filter(self.workspace_q(), hour__gte=self.first_hour, hour__lte=self.last_hour)
        else:
            qs = UsageDaily.objects.filter(self.workspace_q(), day__gte=self.start, day__lte=self.end)
        return self._filtered(qs)

    def error_rows(self) -> QuerySet:
        """Errors by reason in the scope: a few rows per day or hour that had errors."""
        if self.hourly:
            qs = UsageErrorHourly.objects.filter(self.workspace_q(), hour__gte=self.first_hour, hour__lte=self.last_hour)
        else:
            qs = UsageErrorDaily.objects.filter(self.workspace_q(), day__gte=self.start, day__lte=self.end)
        return self._filtered(qs)

    def series_rows(self) -> QuerySet:
        """Rows to sum per period and currency: the day totals unless a key or deployment filter needs the full rows."""
        if self.hourly or self.key_id is not None or self.deployment_id is not None or self.endpoint is not None:
            return self.rows()
        return UsageDailyTotal.objects.filter(self.workspace_q(), day__gte=self.start, day__lte=self.end)

    def breakdown_parts(self) -> list[QuerySet]:
        """Rollup rows that together cover the scope exactly once: whole months from UsageMonthly,
        the days before the first and after the last whole month from UsageDaily."""
        if self.hourly:
            return [self.rows()]
        months, edges = split_months(self.start, self.end)
        if edges and self.latest_day is not None and self.end >= self.latest_day:
            # The range runs to "now": its last month's rows so far are the whole month's rows.
            first, last = edges[-1]
            if last == self.end and first.day == 1:
                months.append(first)
                edges.pop()
        parts = []
        if months:
            parts.append(self._filtered(UsageMonthly.objects.filter(self.workspace_q(), month__in=months)))
        # One part per edge: an OR of two day ranges would not be an index range on (workspace, day).
        parts.extend(self._filtered(UsageDaily.objects.filter(self.workspace_q(), day__gte=a, day__lte=b)) for a, b in edges)
        return parts


def split_months(start: date, end: date) -> tuple[list[date], list[tuple[date, date]]]:
    """The whole calendar months within start..end (their first days), and the day ranges left over."""
    months, edges = [], []
    month = start.replace(day=1)
    if month < start:
        edges.append((start, min(end, month_end(month))))
        month = month_end(month) + timedelta(days=1)
    while month_end(month) <= end:
        months.append(month)
        month = month_end(month) + timedelta(days=1)
    if month <= end and (not edges or edges[0][1] < month):
        edges.append((month, end))
    return months, edges


@dataclass
class ErrorReason:
    """One reason requests failed or were refused in the scope, and the keys that hit it most."""

    status_code: int
    error_code: str
    requests: int
    top_keys: list[tuple[str | None, str, int]]  # (public id, name, requests), most first
    other_keys: int = 0

    @property
    def text(self) -> str:
        return error_reason_text(self.error_code, self.status_code)


TOP_KEYS_PER_REASON = 3


def errors_by_reason(scope: UsageScope) -> list[ErrorReason]:
    """Errors grouped by status and code, most frequent first, each with the keys that hit it most.
    One query: the rows summed per reason and key, with the key's name."""
    grouped = (
        scope.error_rows()
        .values("status_code", "error_code", "api_key_id", "api_key__public_id", "api_key__name", "api_key__kind")
        .annotate(n=Sum("requests"))
        .order_by()
    )
    per_reason: dict[tuple[int, str], list[tuple[int, int, str | None, str]]] = {}
    for r in grouped:
        name = display_name(r["api_key__name"], r["api_key__kind"]) if r["api_key_id"] is not None else "No key / deleted"
        ref = str(r["api_key__public_id"]) if r["api_key__public_id"] and r["api_key__kind"] == "user" else None
        per_reason.setdefault((r["status_code"], r["error_code"]), []).append((r["n"], r["api_key_id"] or 0, ref, name))
    reasons = []
    for (status, code), keys in per_reason.items():
        keys.sort(key=lambda k: (-k[0], k[1]))
        top = [(ref, name, n) for n, _, ref, name in keys[:TOP_KEYS_PER_REASON]]
        reasons.append(ErrorReason(status, code, sum(k[0] for k in keys), top, max(0, len(keys) - TOP_KEYS_PER_REASON)))
    return sorted(reasons, key=lambda r: (-r.requests, r.status_code, r.error_code))


@dataclass
class UsageReport:
    periods: list[dict]
    totals: dict
    currencies: list[str]
    hourly: bool = False
    sort: str = DEFAULT_SORT
    by_workspace: list[dict] = field(default_factory=list)
    by_key: list[dict] = field(default_factory=list)
    by_deployment: list[dict] = field(default_factory=list)
    by_endpoint: list[dict] = field(default_factory=list)
    errors_by_reason: list[ErrorReason] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Requests answered without an error: requests = answered + errors (refused or failed)."""
        return self.totals["requests"] - self.totals["errors"]

    @property
    def currency(self) -> str:
        return ", ".join(self.currencies) or "USD"


def _with_cents(rows: list[dict]) -> list[dict]:
    """Each row's cost in cents, allocated so the rows add up exactly to the rounded total."""
    for row, amount in zip(rows, allocate_cents([r["cost"] for r in rows]), strict=True):
        row["cost_cents"] = amount
    return rows


def _sorted(rows: list[dict], sort: str, label: str, tie: str) -> list[dict]:
    """By the sort field (nulls last either way), then by id (nulls last)."""
    target = SORT_FIELDS[sort.lstrip("-")] or label
    rows.sort(key=lambda r: (r[tie] is None, r[tie] or 0))
    present = sorted((r for r in rows if r[target] is not None), key=lambda r: r[target], reverse=sort.startswith("-"))
    return present + [r for r in rows if r[target] is None]


def _names(kind: str, ids: list[int]) -> dict[int, tuple]:
    """id → (public id or slug, name) of a breakdown's keys, deployments or workspaces: one query."""
    if not ids:
        return {}
    if kind == "endpoint":
        return {name: (ENDPOINTS.get(name, name),) for name in ids}
    if kind == "key":  # the hidden test-call key by what it is for (display_name)
        rows = ApiKey.objects.filter(id__in=ids).values_list("id", "public_id", "name", "kind")
        return {pk: (ref, display_name(name, key_kind)) for pk, ref, name, key_kind in rows}
    model, public = {"deployment": (Deployment, "public_id"), "workspace": (Workspace, "slug")}[kind]
    return {pk: (ref, name) for pk, ref, name in model.objects.filter(id__in=ids).values_list("id", public, "name")}


def usage_report(scope: UsageScope, *, with_workspaces: bool, sort: str = DEFAULT_SORT, breakdowns: bool = True) -> UsageReport:
    """Per-period series (every day or hour in range, zeros included), totals and breakdowns.

    One query for the series (grouped by period and currency, which also lists the currencies);
    one for all breakdowns, grouped by workspace, key and deployment ids (a few hundred groups)
    over whole months' and edge days' rows, added up per breakdown here; one per breakdown for
    the names (2-3 small lookups by id). Costs in
    cents are allocated within the series and within each breakdown, so every table (and its
    CSV) adds up exactly to the total shown.
    """
    if sort.lstrip("-") not in SORT_FIELDS:
        sort = DEFAULT_SORT
    period = "hour" if scope.hourly else "day"
    per_period: dict = {}
    currencies: set[str] = set()
    for row in scope.series_rows().values(period, "currency").annotate(**_sums()).order_by():
        currencies.add(row["currency"])
        into = per_period.setdefault(row[period], _clean({"period": row[period]}))
        for name in SUMMED:
            into[name] += row[name] or 0
    periods = [per_period.get(p) or _clean({"period": p}) for p in scope.periods()]
    tz = scope.workspace.tz
    for p in periods:
        p["local"] = p["period"].astimezone(tz) if scope.hourly else p["period"]
    totals = _clean({name: sum((p[name] for p in periods), ZERO if name == "cost" else 0) for name in SUMMED})
    totals["cost_cents"] = cents(totals["cost"])
    totals["p95_ms"] = None  # from the breakdowns' histograms, when they are read
    _with_cents(periods)

    report = UsageReport(periods=periods, totals=totals, currencies=sorted(currencies), hourly=scope.hourly, sort=sort)
    if not breakdowns:
        return report
    if report.totals["errors"]:
        report.errors_by_reason = errors_by_reason(scope)
    kinds = ["key", "deployment", "endpoint", *(["workspace"] if with_workspaces else [])]
    # Grouped by ids only: grouping by the joined names as well took twice as long.
    ids = [BREAKDOWNS[kind][0][0] for kind in BREAKDOWNS]
    merged: dict[str, dict] = {kind: {} for kind in kinds}
    everything = slowest = 0
    for row in _grouped(scope.breakdown_parts(), ids):
        _clean(row)
        histogram = int(row["latency_histogram"] or 0)
        everything += histogram
        slowest = max(slowest, row["slowest"] or 0)
        for kind in kinds:
            pk = row[BREAKDOWNS[kind][0][0]]
            into = merged[kind].get(pk)
            if into is None:
                merged[kind][pk] = {
                    **{m: row[m] for m in SUMMED},
                    "histogram": histogram,
                    "slowest": row["slowest"],
                    "model_label": row["model_label"],
                }
                continue
            for name in SUMMED:
                into[name] += row[name]
            into["histogram"] += histogram
            into["slowest"] = max(into["slowest"], row["slowest"])
            into["model_label"] = max(into["model_label"], row["model_label"])
    for kind in kinds:
        group, label, tie = BREAKDOWNS[kind]
        names = _names(kind, [pk for pk in merged[kind] if pk is not None])
        for pk, row in merged[kind].items():
            row.update(zip(group, (pk, *names.get(pk, (None, None))), strict=True))
            row["p95_ms"] = p95(row.pop("histogram"), slowest=row.pop("slowest"))
        rows = _with_cents(_sorted(list(merged[kind].values()), sort, label, tie))
        if kind != "deployment":
            for r in rows:
                del r["model_label"]
        setattr(report, f"by_{kind}", rows)
    totals["p95_ms"] = p95(everything, slowest=slowest)
    return report


# The flat export's groups: one row per period × workspace × key × deployment × API × currency.
FLAT_GROUP = ("workspace_id", "api_key_id", "deployment_id", "endpoint", "currency")


def usage_flat_rows(scope: UsageScope) -> list[dict]:
    """The scope's rollup rows summed per day (or hour) × workspace × key × deployment × API ×
    currency, in that order (by id within a period), for the flat CSV: the same rollups and filters as usage_report, so its rows add up
    to the page's totals. Each row carries the names of its workspace, key and deployment, and
    `cost_cents`, allocated per currency so a column's sum is the page's total to the cent.
    One grouped query plus one small name lookup per kind."""
    period = "hour" if scope.hourly else "day"
    # Ordered by the database (period, then ids): a year's ~80k groups sorted by name in Python
    # cost more than the query. A flat table is for tools that sort it their own way anyway.
    grouped = scope.rows().values(period, *FLAT_GROUP).annotate(**_sums(), model_label=Max("model"))
    rows = list(grouped.order_by(period, *FLAT_GROUP))
    names = {
        kind: {pk: (str(ref), name) for pk, (ref, name) in _names(kind, sorted({r[column] for r in rows if r[column] is not None})).items()}
        for kind, column in (("workspace", "workspace_id"), ("key", "api_key_id"), ("deployment", "deployment_id"))
    }
    zones: dict[int, ZoneInfo] = {}
    if scope.hourly:
        zones = {pk: ZoneInfo(tz) for pk, tz in Workspace.objects.filter(id__in=names["workspace"]).values_list("id", "time_zone")}
    for r in rows:
        _clean(r)
        r["workspace_slug"], r["workspace_name"] = names["workspace"].get(r["workspace_id"], ("", ""))
        r["key_ref"], r["key_name"] = names["key"].get(r["api_key_id"], ("", "No key / deleted"))
        r["deployment_ref"], r["deployment_name"] = names["deployment"].get(r["deployment_id"], ("", "No deployment / deleted"))
        r["endpoint_label"] = ENDPOINTS.get(r["endpoint"], r["endpoint"])
        # Hours in the workspace's own time zone with the offset, as the stacked CSV writes them.
        r["local"] = r["hour"].astimezone(zones.get(r["workspace_id"], scope.workspace.tz)) if scope.hourly else r["day"]
    for currency in {r["currency"] for r in rows}:
        _with_cents([r for r in rows if r["currency"] == currency])
    return rows


def _grouped(parts: list[QuerySet], ids: list[str]) -> list[dict] | QuerySet:
    """The parts' rows summed per id group. On PostgreSQL the parts' plain rows are unioned and
    summed once, in one hash aggregate (a year is ~13k month and edge-day rows, ~800 groups);
    elsewhere each part is grouped and the caller's merge adds the few duplicate groups up."""
    if not parts:
        return []
    if connection.vendor != "postgresql" or len(parts) == 1:
        grouped = [
            qs.values(*ids)
            .annotate(
                **_sums(), latency_histogram=HistogramSum("latency_histogram"), slowest=Max("latency_max_ms"), model_label=Max("model")
            )
            .order_by()
            for qs in parts
        ]
        return grouped[0].union(*grouped[1:], all=True) if len(grouped) > 1 else grouped[0]
    plain = [qs.values(*ids, *SUMMED, "latency_histogram", "latency_max_ms", "model").order_by() for qs in parts]
    sql, params = plain[0].union(*plain[1:], all=True).query.sql_with_params()
    q = connection.ops.quote_name
    sums = [f"SUM({q(n)}){'' if n == 'cost' else '::bigint'} AS {q(n)}" for n in SUMMED]
    outer = (
        f"SELECT {', '.join(map(q, ids))}, {', '.join(sums)}, SUM({q('latency_histogram')}) AS {q('latency_histogram')}, "
        f"MAX({q('latency_max_ms')}) AS {q('slowest')}, "
        f"MAX({q('model')}) AS {q('model_label')} FROM ({sql}) AS parts GROUP BY {', '.join(map(q, ids))}"
    )
    with connection.cursor() as cursor:
        cursor.execute(outer, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def requests_today(workspace: Workspace, now: datetime) -> Coalesce:
    """For an annotation on a Deployment queryset: each deployment's requests since midnight in the
    workspace's time zone. A default workspace counts its whole organisation's; a sub-workspace only
    its own, so one team never sees another team's traffic."""
    midnight = datetime.combine(now.astimezone(workspace.tz).date(), time.min, tzinfo=workspace.tz)
    events = UsageEvent.objects.filter(workspace.tree_q(), deployment=OuterRef("pk"), created_at__gte=midnight, created_at__lte=now)
    counted = events.order_by().values("deployment").annotate(n=Count("pk")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), Value(0))


def replica_last_hour(replica_ids: list[int], *, now: datetime | None = None) -> dict[int, tuple[int, int, float | None]]:
    """(requests, server errors, p95 latency in ms) per replica over the last hour, from the
    events, which name the replica that answered; replicas without requests are left out."""
    if not replica_ids:
        return {}
    since = (now or timezone.now()) - timedelta(hours=1)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT replica_id, count(*), count(*) FILTER (WHERE status_code >= 500), "
                f"percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) FROM {UsageEvent._meta.db_table} "
                f"WHERE replica_id = ANY(%s) AND created_at >= %s GROUP BY replica_id",
                [list(replica_ids), since],
            )
            return {replica_id: (requests, errors, p95) for replica_id, requests, errors, p95 in cursor.fetchall()}
    latencies: dict[int, list[int]] = {}
    errors: dict[int, int] = {}
    events = UsageEvent.objects.filter(replica_id__in=replica_ids, created_at__gte=since)
    for replica_id, latency, status in events.values_list("replica_id", "latency_ms", "status_code")[:100_000]:
        latencies.setdefault(replica_id, []).append(latency)
        errors[replica_id] = errors.get(replica_id, 0) + (status >= 500)
    found = {}
    for replica_id, values in latencies.items():
        values.sort()
        found[replica_id] = (len(values), errors[replica_id], values[min(len(values) - 1, int(len(values) * 0.95))])
    return found


def event_cost(request_id: str) -> tuple[Decimal, str] | None:
    """The cost and currency stamped on a request's usage event, or None while it has none."""
    return UsageEvent.objects.filter(request_id=request_id).values_list("cost", "currency").first()


def year_window(tz: ZoneInfo, year: int) -> tuple[datetime, datetime]:
    """A calendar year in a time zone, as aware datetimes [start, end): the yearly limit's window."""
    return datetime(year, 1, 1, tzinfo=tz), datetime(year + 1, 1, 1, tzinfo=tz)


def tokens_used_in_year(years: dict[int, tuple[ZoneInfo, int]]) -> dict[int, int]:
    """Total tokens per key in a calendar year of a time zone (`years`: key id → (zone, year)), in
    one query; keys with no usage are left out.

    The one count of a key's yearly usage: the gateway seeds its yearly-limit counter with it and
    the console shows it, so they never disagree. It reads the events, not the rollups, because the
    rollups miss whatever came since the last rollup run (the gateway would let a key past its
    limit by that much); the current year's events are never pruned (usage_events_prune refuses).
    """
    if not years:
        return {}
    by_window: dict[tuple[ZoneInfo, int], list[int]] = {}
    for key_id, window in years.items():
        by_window.setdefault(window, []).append(key_id)
    scope = reduce(
        or_,
        (
            Q(api_key_id__in=ids, created_at__gte=start, created_at__lt=end)
            for (tz, year), ids in by_window.items()
            for start, end in [year_window(tz, year)]
        ),
    )
    rows = UsageEvent.objects.filter(scope).values("api_key_id").annotate(t=Sum("total_tokens")).values_list("api_key_id", "t").order_by()
    return {key_id: int(total or 0) for key_id, total in rows}


@dataclass
class Refusals:
    """A key's latest refused (or failed) request and its errors of the last day, by reason."""

    last: UsageEvent | None
    recent: list[dict]  # {"status_code", "error_code", "text", "n"}, most first
    since: datetime

    @property
    def last_text(self) -> str:
        return error_reason_text(self.last.error_code, self.last.status_code) if self.last else ""


def api_key_refusals(api_key: ApiKey, now: datetime, *, window: timedelta = timedelta(hours=24)) -> Refusals:
    """Two index probes on the key's error events (a partial index holds only them)."""
    errors = UsageEvent.objects.filter(api_key=api_key, status_code__gte=400)
    last = errors.order_by("-created_at").only("created_at", "status_code", "error_code", "client_ip", "model").first()
    since = now - window
    recent = [
        {**r, "text": error_reason_text(r["error_code"], r["status_code"])}
        for r in errors.filter(created_at__gte=since)
        .values("status_code", "error_code")
        .annotate(n=Count("id"))
        .order_by("-n", "status_code")
    ]
    return Refusals(last=last, recent=recent, since=since)


@dataclass
class KeyLimit:
    """A key's limits against what it has used: this minute (the gateway's live TPM window, or None
    when there is no shared counter to read) and this year (tokens_used_in_year)."""

    key: ApiKey
    year: int
    yearly_used: int
    tpm_used: int | None
    tpm_note: str = ""
    near_percent: ClassVar[int] = NEAR_LIMIT_PERCENT

    @property
    def tpm_high(self) -> int:
        return (self.key.tpm_limit or 0) * NEAR_LIMIT_PERCENT // 100

    @property
    def yearly_high(self) -> int:
        return (self.key.yearly_token_limit or 0) * NEAR_LIMIT_PERCENT // 100

    @property
    def tpm_percent(self) -> int | None:
        if not self.key.tpm_limit or self.tpm_used is None:
            return None
        return min(100, self.tpm_used * 100 // self.key.tpm_limit)

    @property
    def yearly_percent(self) -> int | None:
        if not self.key.yearly_token_limit:
            return None
        return min(100, self.yearly_used * 100 // self.key.yearly_token_limit)

    @property
    def flag(self) -> str:
        worst = max((p for p in (self.tpm_percent, self.yearly_percent) if p is not None), default=0)
        return "at limit" if worst >= 100 else "near limit" if worst >= NEAR_LIMIT_PERCENT else ""


def key_limits(keys: list[ApiKey], zones: dict[int, ZoneInfo], *, now: datetime, redis) -> list[KeyLimit]:
    """Limits of the keys that have any, with their usage. One query and one Redis round trip.

    The yearly window is the gateway's: the calendar year in the key's workspace time zone, counted
    in total tokens by tokens_used_in_year, the count the gateway seeds its counter with.
    `redis` is None without REDIS_URL: the embedded gateway keeps TPM in its own process memory,
    which no other process can read.
    """
    limited = [k for k in keys if k.tpm_limit or k.yearly_token_limit]
    if not limited:
        return []
    years = {k.id: now.astimezone(zones[k.workspace_id]).year for k in limited}
    used = tokens_used_in_year({k.id: (zones[k.workspace_id], years[k.id]) for k in limited})

    with_tpm = [str(k.public_id) for k in limited if k.tpm_limit]
    minute: dict[str, int] | None = None
    note = ""
    if redis is None:
        note = "Enforced inside the gateway process: without Redis it counts TPM in its own memory, which the console cannot read."
    elif with_tpm:
        try:
            # The gateway's clock (time.time()) decides which seconds are in the window, not `now`.
            minute = tpm_used_this_minute(redis, with_tpm)
        except RedisError:
            note = "Still enforced by the gateway, but its live counters (Redis) cannot be reached just now."
    return [
        KeyLimit(
            key=k,
            year=years[k.id],
            yearly_used=used.get(k.id, 0),
            tpm_used=minute.get(str(k.public_id), 0) if minute is not None and k.tpm_limit else None,
            tpm_note=note,
        )
        for k in limited
    ]


@dataclass
class Section:
    workspace_id: int
    name: str
    slug: str
    items: list[dict]
    exact: Decimal
    total: Decimal = ZERO


@dataclass
class Statement:
    workspace: Workspace
    month: date
    currency: str
    sections: list[Section]
    exact: Decimal
    total: Decimal
    prompt_tokens: int
    completion_tokens: int
    endpoint: str | None = None  # the one API the statement is filtered to (None: every API)

    @property
    def endpoint_label(self) -> str:
        return ENDPOINTS.get(self.endpoint, self.endpoint or "")

    @property
    def previous_month(self) -> date:
        return (self.month - timedelta(days=1)).replace(day=1)

    @property
    def next_month(self) -> date:
        return (self.month + timedelta(days=32)).replace(day=1)


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt - timedelta(days=1)


def billing_statement(workspace: Workspace, month: date, *, endpoint: str | None = None) -> Statement:
    """A month's statement: one section per workspace (the default workspace first, then each
    sub-workspace by name), a line per deployment, API (the endpoint its requests came through) and
    price version, from the month's UsageMonthly rows (its days are the workspaces' local days, as on
    every page); `endpoint` keeps one API's lines only. Two queries.

    A line is input tokens × input price + output tokens × output price (per million), the price
    being the version its events were costed with; its exact amount is the rollups' cost (the sum of
    the events' costs). Cents: the statement total is the exact sum rounded once; section totals are
    allocated from their exact sums so they add up to it, and lines likewise to their section total.
    """
    first, last = month_bounds(month)
    monthly = UsageMonthly.objects.filter(workspace.tree_q(), month=first)
    if endpoint:
        monthly = monthly.filter(endpoint=endpoint)
    rows = list(
        monthly.values(
            "workspace_id",
            "workspace__name",
            "workspace__slug",
            "workspace__parent_id",
            "deployment_id",
            "deployment__name",
            "endpoint",
            "currency",
            "input_price_per_million",
            "output_price_per_million",
        )
        .annotate(
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            cost=Sum("cost"),
            model=Max("model"),
        )
        .order_by("workspace__parent_id", "workspace__name", "deployment__name", "deployment_id")
    )
    versions = _price_versions(rows, first, last, workspace.tz)
    sections: dict[int, Section] = {}
    currencies = set()
    for row in rows:
        currencies.add(row["currency"])
        section = sections.get(row["workspace_id"])
        if section is None:
            section = sections[row["workspace_id"]] = Section(row["workspace_id"], row["workspace__name"], row["workspace__slug"], [], ZERO)
        row["label"] = row["deployment__name"] or f"{row['model']} (deleted deployment)"
        row["endpoint_label"] = ENDPOINTS.get(row["endpoint"], row["endpoint"])
        row["input_price"], row["output_price"] = price_text(row["input_price_per_million"]), price_text(row["output_price_per_million"])
        row["versions"] = versions.get(
            (row["deployment_id"], row["input_price_per_million"], row["output_price_per_million"], row["currency"]), []
        )
        section.items.append(row)
        section.exact += row["cost"]
    for section in sections.values():
        # Within a deployment, its APIs by name, then price versions in the order they took effect.
        section.items.sort(
            key=lambda i: (
                i["label"].lower(),
                i["deployment_id"] or 0,
                i["endpoint_label"],
                i["versions"][0] if i["versions"] else EARLIEST,
            )
        )
    if workspace.id not in sections and workspace.is_default:
        own = Section(workspace.id, workspace.name, workspace.slug, [], ZERO)
        sections = {workspace.id: own, **sections}
    ordered = sorted(sections.values(), key=lambda s: (s.workspace_id != workspace.id, s.name))
    exact = sum((s.exact for s in ordered), ZERO)
    for section, total in zip(ordered, allocate_cents([s.exact for s in ordered]), strict=True):
        section.total = total
        for item, amount in zip(section.items, _allocate_within([i["cost"] for i in section.items], total), strict=True):
            item["cost_cents"] = amount
    return Statement(
        workspace=workspace,
        month=first,
        currency=", ".join(sorted(currencies)) or "USD",
        sections=ordered,
        exact=exact,
        total=cents(exact),
        prompt_tokens=sum(i["prompt_tokens"] for s in ordered for i in s.items),
        completion_tokens=sum(i["completion_tokens"] for s in ordered for i in s.items),
        endpoint=endpoint,
    )


def _price_versions(rows: list[dict], first: date, last: date, tz: ZoneInfo) -> dict[tuple, list[datetime]]:
    """(deployment, input price, output price, currency) → when the matching price versions took effect.

    Events copy the price, not the version, so a line is matched to the versions with its prices
    that were in force during the month (a price set back to an earlier value has two). A version
    no longer on record (its deployment deleted) leaves the line without dates.
    """
    ids = {r["deployment_id"] for r in rows if r["deployment_id"] is not None}
    if not ids:
        return {}
    month_start, month_end = local_day_start(first, tz), local_day_start(last + timedelta(days=1), tz)
    found: dict[tuple, list[datetime]] = {}
    fallback: dict[tuple, list[datetime]] = {}
    previous = None
    for price in DeploymentPrice.objects.filter(deployment_id__in=ids, effective_from__lt=month_end).order_by(
        "deployment_id", "effective_from"
    ):
        if previous is not None and previous.deployment_id == price.deployment_id:
            _note_version(previous, price.effective_from, month_start, found, fallback)
        elif previous is not None:
            _note_version(previous, None, month_start, found, fallback)
        previous = price
    if previous is not None:
        _note_version(previous, None, month_start, found, fallback)
    return {key: [v.astimezone(tz) for v in found.get(key) or fallback[key][-1:]] for key in {*found, *fallback}}


def _note_version(price: DeploymentPrice, until: datetime | None, month_start: datetime, found: dict, fallback: dict) -> None:
    key = (price.deployment_id, price.input_per_million, price.output_per_million, price.currency)
    fallback.setdefault(key, []).append(price.effective_from)
    if until is None or until > month_start:
        found.setdefault(key, []).append(price.effective_from)


def _allocate_within(exact: list[Decimal], total: Decimal) -> list[Decimal]:
    """Like allocate_cents, but to a given total (a section's allocated cents, which may differ from
    its own rounding by a cent)."""
    if not exact:
        return []
    parts = allocate_cents(exact)
    diff = int((total - sum(parts, ZERO)) / CENT)
    if diff:
        # Give or take the cent(s) on the largest items first: deterministic, never negative.
        order = sorted(range(len(parts)), key=lambda i: (-exact[i], i))
        step = 1 if diff > 0 else -1
        k = 0
        while diff:
            i = order[k % len(order)]
            if step > 0 or parts[i] >= CENT:
                parts[i] += step * CENT
                diff -= step
            k += 1
    return parts
