"""Usage events as the gateway writes them (price copied, cost stamped), and rollup snapshots."""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime
from decimal import Decimal

from django.db.models import Count, Q, Sum

from deployments.models import Deployment, DeploymentPrice
from keys.models import ApiKey
from usage.models import UsageDaily, UsageDailyTotal, UsageEvent, UsageHourly, UsageMonthly

NANO = Decimal("0.000000001")
_serial = itertools.count(1)


def cost_of(prompt: int, completion: int, price: tuple[Decimal, Decimal]) -> Decimal:
    return ((prompt * price[0] + completion * price[1]) / Decimal(1_000_000)).quantize(NANO)


def make_key(workspace, name: str) -> ApiKey:
    return ApiKey.objects.create(workspace=workspace, name=name, hint="gh_live…" + name[-4:])


def make_deployment(workspace, name: str, *, price: tuple[str, str] = ("0.50", "1.50"), at: datetime | None = None) -> Deployment:
    deployment = Deployment.objects.create(workspace=workspace, name=name, model_id=f"@{workspace.slug}/{name}")
    if at is not None:
        DeploymentPrice.objects.create(
            deployment=deployment, effective_from=at, input_per_million=Decimal(price[0]), output_per_million=Decimal(price[1])
        )
    return deployment


def price_at(deployment: Deployment, at: datetime) -> tuple[Decimal, Decimal]:
    version = deployment.prices.filter(effective_from__lte=at).order_by("-effective_from").first()
    return (version.input_per_million, version.output_per_million) if version else (Decimal(0), Decimal(0))


def event(
    workspace,
    at: datetime,
    *,
    key: ApiKey | None = None,
    deployment: Deployment | None = None,
    prompt: int = 100,
    completion: int = 20,
    status: int = 200,
    latency: int = 250,
    estimated: bool = False,
    endpoint: str = "chat.completions",
    save: bool = True,
) -> UsageEvent:
    """One event stamped like the gateway does: the price in force at `at` is copied and costed."""
    price = price_at(deployment, at) if deployment is not None else (Decimal(0), Decimal(0))
    e = UsageEvent(
        request_id=f"req-{uuid.uuid4().hex[:12]}-{next(_serial)}",
        created_at=at,
        workspace=workspace,
        api_key=key,
        deployment=deployment,
        model=deployment.model_id if deployment else "unknown",
        endpoint=endpoint,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        estimated=estimated,
        status_code=status,
        latency_ms=latency,
        input_price_per_million=price[0],
        output_price_per_million=price[1],
        cost=cost_of(prompt, completion, price),
    )
    if save:
        e.save()
    return e


def event_totals(**filters) -> dict:
    agg = UsageEvent.objects.filter(**filters).aggregate(
        requests=Count("id"),
        errors=Count("id", filter=Q(status_code__gte=400)),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_tokens=Sum("total_tokens"),
        estimated_requests=Count("id", filter=Q(estimated=True)),
        cost=Sum("cost"),
    )
    return {k: (v or 0) for k, v in agg.items()}


def rollup_totals(model=UsageDaily, **filters) -> dict:
    agg = model.objects.filter(**filters).aggregate(
        requests=Sum("requests"),
        errors=Sum("errors"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        total_tokens=Sum("total_tokens"),
        estimated_requests=Sum("estimated_requests"),
        cost=Sum("cost"),
    )
    return {k: (v or 0) for k, v in agg.items()}


SUMMED = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests", "estimated_tokens", "cost")
GROUP = ("workspace_id", "api_key_id", "deployment_id", "currency", "input_price_per_million", "output_price_per_million")


def snapshot(model=UsageDaily) -> list[tuple]:
    """Every rollup row's content (not its id), sorted: equal snapshots mean identical rows."""
    if model is UsageDailyTotal:
        return sorted(model.objects.values_list("day", "workspace_id", "currency", *SUMMED), key=repr)
    period = {UsageDaily: "day", UsageHourly: "hour", UsageMonthly: "month"}[model]
    fields = [
        period,
        "workspace_id",
        "api_key_id",
        "deployment_id",
        "model",
        "currency",
        "input_price_per_million",
        "output_price_per_million",
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "estimated_requests",
        "estimated_tokens",
        "cost",
        "latency_histogram",
        "latency_max_ms",
    ]
    return sorted(model.objects.values_list(*fields), key=repr)


def coarse_from_daily() -> tuple[list[tuple], list[tuple]]:
    """What UsageMonthly and UsageDailyTotal must hold, added up here in Python from UsageDaily."""
    months: dict[tuple, list] = {}
    totals: dict[tuple, list] = {}
    for row in UsageDaily.objects.values():
        key = (row["day"].replace(day=1), *(row[f] for f in GROUP))
        into = months.setdefault(key, [row["model"], *(0 for _ in SUMMED), 0, 0])
        into[0] = max(into[0], row["model"])
        for i, name in enumerate(SUMMED, start=1):
            into[i] += row[name]
        into[-2] += row["latency_histogram"]  # histograms add up
        into[-1] = max(into[-1], row["latency_max_ms"])
        total = totals.setdefault((row["day"], row["workspace_id"], row["currency"]), [0 for _ in SUMMED])
        for i, name in enumerate(SUMMED):
            total[i] += row[name]
    monthly = [(k[0], *k[1:4], v[0], *k[4:], *v[1:]) for k, v in months.items()]
    return sorted(monthly, key=repr), sorted(((*k, *v) for k, v in totals.items()), key=repr)


def snapshots() -> tuple[list[tuple], ...]:
    """Daily, hourly, monthly and day-total rows. The coarser ones are checked to be exactly the
    daily ones added up (so every test comparing snapshots also checks that)."""
    monthly, totals = snapshot(UsageMonthly), snapshot(UsageDailyTotal)
    assert (monthly, totals) == coarse_from_daily()
    return snapshot(UsageDaily), snapshot(UsageHourly), monthly, totals


def csv_sections(rows) -> dict[str, list[list[str]]]:
    """A dashboard CSV's sections (separated by blank rows), by the first cell of their header row."""
    sections, current = {}, None
    for row in rows:
        if not row:
            current = None
        elif current is None:
            current = sections.setdefault(row[0], [row])
        else:
            current.append(row)
    return sections
