"""The overview page's usage numbers, from the daily rollups (three queries)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from django.db.models import Sum

from console.models import Workspace
from keys.models import ApiKeyKind, display_name
from usage.models import UsageDailyTotal
from usage.selectors import ZERO, UsageScope, cents

TOP = 5


@dataclass
class OverviewNumbers:
    requests: int
    total_tokens: int
    cost: object  # Decimal, exact (written with usage.amounts)
    currencies: list[str]
    top_keys: list[dict]
    top_deployments: list[dict]


def overview_numbers(workspace: Workspace, *, today: date, top_since: date) -> OverviewNumbers:
    """Today's totals and the top keys and deployments by cost since `top_since` (through today).

    A default workspace counts its organisation, a sub-workspace only itself (UsageScope)."""
    totals = {"requests": 0, "total_tokens": 0, "cost": ZERO}
    currencies = []
    today_rows = UsageDailyTotal.objects.filter(UsageScope(workspace, today, today).workspace_q(), day=today)
    for row in (
        today_rows.values("currency")
        .annotate(requests=Sum("requests"), total_tokens=Sum("total_tokens"), cost=Sum("cost"))
        .order_by("currency")
    ):
        currencies.append(row["currency"])
        for name in totals:
            totals[name] += row[name]
    week = UsageScope(workspace, top_since, today).rows()

    def top(*group: str) -> list[dict]:
        # Per currency too: a cost is only readable with its unit (a deployment priced in two
        # currencies over the week shows once per currency).
        rows = list(
            week.values(*group, "currency")
            .annotate(requests=Sum("requests"), total_tokens=Sum("total_tokens"), cost=Sum("cost"))
            .order_by("-cost", "-requests")[:TOP]
        )
        for r in rows:
            r["cost_cents"] = cents(r["cost"])
        return rows

    return OverviewNumbers(
        requests=totals["requests"],
        total_tokens=totals["total_tokens"],
        cost=totals["cost"],
        currencies=currencies,
        top_keys=[
            {**k, "label": display_name(k["api_key__name"], k["api_key__kind"]), "linked": k["api_key__kind"] == ApiKeyKind.USER}
            for k in top("api_key_id", "api_key__public_id", "api_key__name", "api_key__kind", "api_key__workspace__slug")
        ],
        top_deployments=top("deployment_id", "deployment__name", "model"),
    )
