"""Read side of the usage and billing dashboards. Everything here reads rollups (UsageDaily), never events.

Money stays an exact Decimal (9 places, as stored) through every sum; it is rounded to cents once,
on the figures a person reads. Where several rounded figures must add up to a rounded total
(billing sections, line items), cents are allocated with `allocate_cents`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal

from django.db.models import Max, Q, QuerySet, Sum

from console.models import Workspace
from usage.models import UsageDaily

CENT = Decimal("0.01")
ZERO = Decimal(0)
SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests", "estimated_tokens", "cost")


def cents(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def allocate_cents(exact: list[Decimal]) -> list[Decimal]:
    """Round each part to cents so the parts add up exactly to cents(sum(exact)).

    Largest remainder: every part is rounded down, then the missing cents go one each to the parts
    with the largest remainders (ties: the earlier part). Parts are non-negative costs.
    """
    total_cents = int(cents(sum(exact, ZERO)) / CENT)
    floors = [int((part / CENT).to_integral_value(rounding=ROUND_DOWN)) for part in exact]
    missing = total_cents - sum(floors)
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] / CENT - floors[i]), i))
    for i in order[:max(missing, 0)]:
        floors[i] += 1
    return [Decimal(f) * CENT for f in floors]


def _sums() -> dict:
    return {name: Sum(name) for name in SUMMED}


def _clean(row: dict) -> dict:
    for name in SUMMED:
        row[name] = row.get(name) or (ZERO if name == "cost" else 0)
    return row


@dataclass
class UsageScope:
    """Which rollup rows a dashboard reads: a workspace (its tree if it is a default one) and filters."""

    workspace: Workspace
    start: date
    end: date
    sub: Workspace | None = None
    key_id: int | None = None
    deployment_id: int | None = None

    def rows(self) -> QuerySet[UsageDaily]:
        ws = self.workspace
        if self.sub is not None:
            scope = Q(workspace=self.sub)
        elif ws.is_default:
            scope = Q(workspace=ws) | Q(workspace__parent=ws)
        else:
            scope = Q(workspace=ws)
        qs = UsageDaily.objects.filter(scope, day__gte=self.start, day__lte=self.end)
        if self.key_id is not None:
            qs = qs.filter(api_key_id=self.key_id)
        if self.deployment_id is not None:
            qs = qs.filter(deployment_id=self.deployment_id)
        return qs


@dataclass
class UsageReport:
    days: list[dict]
    totals: dict
    currencies: list[str]
    by_workspace: list[dict] = field(default_factory=list)
    by_key: list[dict] = field(default_factory=list)
    by_deployment: list[dict] = field(default_factory=list)


def usage_report(scope: UsageScope, *, with_workspaces: bool) -> UsageReport:
    """Per-day series (every day in range, zeros included), totals and breakdowns: 3 or 4 queries."""
    qs = scope.rows()
    per_day = {row["day"]: _clean(row) for row in qs.values("day").annotate(**_sums()).order_by("day")}
    days = []
    current = scope.start
    while current <= scope.end:
        days.append(per_day.get(current) or _clean({"day": current}))
        current += timedelta(days=1)
    totals = _clean({name: sum((d[name] for d in days), ZERO if name == "cost" else 0) for name in SUMMED})
    totals["cost_cents"] = cents(totals["cost"])
    for d in days:
        d["cost_cents"] = cents(d["cost"])
    currencies = sorted(set(qs.values_list("currency", flat=True).distinct()))

    def breakdown(*group: str) -> list[dict]:
        rows = [_clean(r) for r in qs.values(*group).annotate(**_sums(), p95_bound=Max("latency_p95_ms")).order_by("-cost", "-requests")]
        for r in rows:
            r["cost_cents"] = cents(r["cost"])
        return rows

    report = UsageReport(days=days, totals=totals, currencies=currencies)
    report.by_key = breakdown("api_key_id", "api_key__public_id", "api_key__name")
    report.by_deployment = breakdown("deployment_id", "deployment__public_id", "deployment__name", "model")
    if with_workspaces:
        report.by_workspace = breakdown("workspace_id", "workspace__slug", "workspace__name")
    return report


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


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt - timedelta(days=1)


def billing_statement(workspace: Workspace, month: date) -> Statement:
    """A month's statement: one section per workspace (the default workspace first, then each
    sub-workspace by name), line items per deployment. One query.

    Cents: the statement total is the exact sum rounded once; section totals are allocated from
    their exact sums so they add up to it, and line items likewise to their section total.
    """
    first, last = month_bounds(month)
    scope = Q(workspace=workspace) | Q(workspace__parent=workspace) if workspace.is_default else Q(workspace=workspace)
    rows = (UsageDaily.objects.filter(scope, day__gte=first, day__lte=last)
            .values("workspace_id", "workspace__name", "workspace__slug", "workspace__parent_id", "deployment_id",
                    "deployment__name", "model", "currency")
            .annotate(requests=Sum("requests"), prompt_tokens=Sum("prompt_tokens"), completion_tokens=Sum("completion_tokens"),
                      cost=Sum("cost"))
            .order_by("workspace__parent_id", "workspace__name", "model", "deployment_id"))
    sections: dict[int, Section] = {}
    currencies = set()
    for row in rows:
        currencies.add(row["currency"])
        section = sections.get(row["workspace_id"])
        if section is None:
            section = sections[row["workspace_id"]] = Section(row["workspace_id"], row["workspace__name"], row["workspace__slug"], [], ZERO)
        row["label"] = row["deployment__name"] or f"{row['model']} (deleted deployment)"
        section.items.append(row)
        section.exact += row["cost"]
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
        workspace=workspace, month=first, currency=", ".join(sorted(currencies)) or "USD", sections=ordered, exact=exact,
        total=cents(exact), prompt_tokens=sum(i["prompt_tokens"] for s in ordered for i in s.items),
        completion_tokens=sum(i["completion_tokens"] for s in ordered for i in s.items),
    )


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
