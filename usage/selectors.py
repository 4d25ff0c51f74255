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
from deployments.models import Deployment
from keys.models import ApiKey
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


def tree_ids(workspace: Workspace) -> list[int]:
    """A default workspace's id and its sub-workspaces' ids.

    Rollup rows are filtered with `workspace_id IN (…)`, not `workspace = x OR workspace.parent = x`:
    the OR across a join cannot use the (workspace, day) index, so every query read the whole
    rollup table (docs/BENCHMARKS.md, "Dashboards").
    """
    return [workspace.id, *Workspace.objects.filter(parent=workspace).values_list("id", flat=True)]


@dataclass
class UsageScope:
    """Which rollup rows a dashboard reads: a workspace (its tree if it is a default one) and filters."""

    workspace: Workspace
    start: date
    end: date
    sub: Workspace | None = None
    key_id: int | None = None
    deployment_id: int | None = None
    tree: list[int] | None = None  # tree_ids(workspace) when the caller has it already

    def rows(self) -> QuerySet[UsageDaily]:
        ws = self.workspace
        if self.sub is not None:
            ids = [self.sub.id]
        elif ws.is_default:
            ids = self.tree if self.tree is not None else tree_ids(ws)
        else:
            ids = [ws.id]
        qs = UsageDaily.objects.filter(workspace_id__in=ids, day__gte=self.start, day__lte=self.end)
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


def usage_report(scope: UsageScope, *, with_workspaces: bool, with_breakdowns: bool = True) -> UsageReport:
    """Per-day series (every day in range, zeros included), totals and breakdowns: 2 queries (1
    without breakdowns), each one pass over the rollup rows in scope.

    A year of a busy organisation is ~200k rollup rows, and summing them is what a page costs, so
    the breakdowns by key, deployment and workspace are added up here from one query grouped by
    all three (a few hundred rows), not from one query each.
    """
    qs = scope.rows()
    per_day: dict = {}
    currencies = set()
    for row in qs.values("day", "currency").annotate(**_sums()).order_by():
        currencies.add(row.pop("currency"))
        day = per_day.get(row["day"])
        if day is None:
            per_day[row["day"]] = _clean(row)
        else:
            _add(day, _clean(row))
    days = []
    current = scope.start
    while current <= scope.end:
        days.append(per_day.get(current) or _clean({"day": current}))
        current += timedelta(days=1)
    totals = _clean({name: sum((d[name] for d in days), ZERO if name == "cost" else 0) for name in SUMMED})
    totals["cost_cents"] = cents(totals["cost"])
    for d in days:
        d["cost_cents"] = cents(d["cost"])
    report = UsageReport(days=days, totals=totals, currencies=sorted(currencies))
    if not with_breakdowns:
        return report

    # Grouped by ids only: grouping by the joined names too made PostgreSQL sort ~200k rows (on
    # disk) instead of hashing a few hundred groups. The names come from three small lookups.
    groups = {"by_key": "api_key_id", "by_deployment": ("deployment_id", "model"), "by_workspace": "workspace_id"}
    if not with_workspaces:
        del groups["by_workspace"]
    merged: dict[str, dict] = {name: {} for name in groups}
    for row in qs.values("workspace_id", "api_key_id", "deployment_id", "model").annotate(**_sums(), p95_bound=Max("latency_p95_ms")).order_by():
        _clean(row)
        for name, group in groups.items():
            key = tuple(row[f] for f in group) if isinstance(group, tuple) else row[group]
            into = merged[name].get(key)
            if into is None:
                merged[name][key] = {**{m: row[m] for m in SUMMED}, "p95_bound": row["p95_bound"]}
            else:
                _add(into, row)
                into["p95_bound"] = max(into["p95_bound"], row["p95_bound"])
    labels = {
        "by_key": _labels(ApiKey.objects, merged["by_key"], "api_key", ("public_id", "name")),
        "by_deployment": _labels(Deployment.objects, {k[0] for k in merged["by_deployment"]}, "deployment", ("public_id", "name")),
    }
    if with_workspaces:
        labels["by_workspace"] = _labels(Workspace.objects, merged["by_workspace"], "workspace", ("slug", "name"))
    for name, rows in merged.items():
        out = []
        for key, r in rows.items():
            if name == "by_deployment":
                r.update(deployment_id=key[0], model=key[1], **labels[name](key[0]))
            else:
                r.update({f"{'api_key' if name == 'by_key' else 'workspace'}_id": key, **labels[name](key)})
            r["cost_cents"] = cents(r["cost"])
            out.append(r)
        setattr(report, name, sorted(out, key=lambda r: (-r["cost"], -r["requests"])))
    return report


def _labels(manager, ids, prefix: str, fields: tuple[str, ...]):
    """id -> {"<prefix>__<field>": value}; None (a deleted key or deployment) -> Nones."""
    found = {row[0]: row[1:] for row in manager.filter(id__in=[i for i in ids if i is not None]).values_list("id", *fields)}
    return lambda pk: {f"{prefix}__{f}": v for f, v in zip(fields, found.get(pk, (None,) * len(fields)), strict=True)}


def _add(into: dict, row: dict) -> None:
    for name in SUMMED:
        into[name] += row[name]


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
    sub-workspace by name), line items per deployment. Two queries.

    Cents: the statement total is the exact sum rounded once; section totals are allocated from
    their exact sums so they add up to it, and line items likewise to their section total.
    """
    first, last = month_bounds(month)
    tree = {w.id: w for w in (Workspace.objects.filter(Q(id=workspace.id) | Q(parent=workspace)) if workspace.is_default else [workspace])}
    # Grouped by ids only (names from `tree`, and the deployment's as an aggregate), so PostgreSQL
    # hashes the few line items instead of sorting every rollup row of the month by name.
    rows = (UsageDaily.objects.filter(workspace_id__in=tree, day__gte=first, day__lte=last)
            .values("workspace_id", "deployment_id", "model", "currency")
            .annotate(deployment_name=Max("deployment__name"), requests=Sum("requests"), prompt_tokens=Sum("prompt_tokens"),
                      completion_tokens=Sum("completion_tokens"), cost=Sum("cost"))
            .order_by())
    rows = sorted(rows, key=lambda r: (r["model"], r["deployment_id"] is None, r["deployment_id"] or 0))
    for row in rows:
        ws = tree[row["workspace_id"]]
        row.update(workspace__name=ws.name, workspace__slug=ws.slug, workspace__parent_id=ws.parent_id,
                   deployment__name=row.pop("deployment_name"))
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
