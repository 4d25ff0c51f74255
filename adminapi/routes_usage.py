"""Usage and costs: the usage dashboard's numbers (and its CSV's), grouped one way per request."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from django.core.exceptions import ValidationError
from django.utils import timezone
from ninja import Query, Router, Schema
from ninja.responses import codes_4xx

from adminapi.core import DEFAULT_LIMIT, ErrorOut, page_list, principal
from console.access import access_workspace
from usage.reports import usage_dashboard_report, usage_filters

router = Router(tags=["usage"])

GROUPS = Literal["day", "workspace", "key", "deployment", "endpoint"]


class UsageQuery(Schema):
    group_by: GROUPS = "day"
    start: str | None = None
    end: str | None = None
    range: Literal["", "48h"] = ""
    workspace: str | None = None
    key: str | None = None
    deployment: str | None = None
    endpoint: str | None = None
    sort: str | None = None


class UsageNumbers(Schema):
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated_requests: int
    estimated_tokens: int
    cost: Decimal
    cost_cents: Decimal


class UsageRow(UsageNumbers):
    period: str | None = None
    workspace: str | None = None
    key: str | None = None
    deployment: str | None = None
    endpoint: str | None = None
    name: str | None = None


class UsageOut(Schema):
    group_by: str
    start: str
    end: str
    currencies: list[str]
    totals: UsageNumbers
    data: list[UsageRow]
    next_cursor: str | None


NUMBERS = tuple(UsageNumbers.model_fields)
# Breakdown kind → (the row's public reference field, its name field).
REFS = {
    "workspace": ("workspace__slug", "workspace__name"),
    "key": ("api_key__public_id", "api_key__name"),
    "deployment": ("deployment__public_id", "deployment__name"),
    "endpoint": ("endpoint", "endpoint_label"),
}


def _row(source: dict, group_by: str) -> dict:
    row = {name: source.get(name) or 0 for name in NUMBERS}
    if group_by == "day":
        row["period"] = source["local"].isoformat()
    else:
        ref, label = REFS[group_by]
        row[group_by] = str(source[ref]) if source.get(ref) is not None else None
        row["name"] = source.get(label)
    return row


@router.get(
    "/workspaces/{ws}/usage",
    response={200: UsageOut, codes_4xx: ErrorOut},
    summary="Usage and cost, grouped by day, sub-workspace, key, deployment or endpoint",
)
def get_usage(request, ws: str, query: Query[UsageQuery], limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    # The dashboard's own filters and report: the API reads exactly what the page and CSV show.
    filters = usage_filters(request.GET, access, timezone.now())
    if filters.scope is None:
        raise ValidationError({name: [str(e) for e in errors] for name, errors in filters.form.errors.items()})
    report = usage_dashboard_report(access, filters, breakdowns=query.group_by != "day")
    source = report.periods if query.group_by == "day" else getattr(report, f"by_{query.group_by}")
    if query.group_by == "workspace" and not access.workspace.is_default:
        source = []  # a sub-workspace has no sub-workspaces to group by
    chunk, next_cursor = page_list(source, cursor=cursor, limit=limit)
    return {
        "group_by": query.group_by,
        "start": filters.scope.start.isoformat(),
        "end": filters.scope.end.isoformat(),
        "currencies": report.currencies,
        "totals": {name: report.totals.get(name) or 0 for name in NUMBERS},
        "data": [_row(r, query.group_by) for r in chunk],
        "next_cursor": next_cursor,
    }
