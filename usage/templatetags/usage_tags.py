from __future__ import annotations

from urllib.parse import urlencode

from django import template

from usage.amounts import amount_text
from usage.models import DriftCheck, UsageDrift

register = template.Library()


@register.inclusion_tag("usage/drift_banner.html")
def usage_drift_banner(access) -> dict:
    """Open reconciliation drifts for admins: this workspace's, and its sub-workspaces' on a default one."""
    if access is None or not access.can_admin:
        return {"drifts": []}
    workspace = access.workspace
    drifts = list(
        UsageDrift.objects.filter(workspace.tree_q(), resolved_at__isnull=True)
        .select_related("workspace")
        .order_by("day", "workspace__name")[:6]
    )
    shown = drifts[:5]
    return {"drifts": shown, "plain": [d for d in shown if d.kind != DriftCheck.EDITED], "more": len(drifts) > 5}


@register.simple_tag
def query_with(params: dict, **changes) -> str:
    """The dashboard's query string with some filters changed (an empty value drops the filter)."""
    merged = {**params, **{name: "" if value is None else str(value) for name, value in changes.items()}}
    return urlencode({name: value for name, value in merged.items() if value})


@register.inclusion_tag("usage/sort_header.html", takes_context=True)
def sort_header(context, column: str, label: str, numeric: bool = True, hint: str = "") -> dict:
    """A breakdown column header: a link that sorts by it (numbers largest first, names A–Z; again reverses)."""
    current = context["report"].sort
    active = current.lstrip("-") == column
    descending = current.startswith("-")
    if active:
        target = column if descending else f"-{column}"
    else:
        target = f"-{column}" if numeric else column
    return {
        "href": f"{context['usage_url']}?{query_with(context['params'], sort=target)}",
        "label": label,
        "numeric": numeric,
        "hint": hint,
        "active": active,
        "descending": descending,
        "htmx": not context.get("embedded"),
    }


@register.filter
def ms(value) -> str:
    """A latency in whole milliseconds with thousands separators; a dash when there were no requests."""
    return "–" if value is None else f"{value:,}"


@register.filter
def count(value) -> str:
    """A whole number with thousands separators ("1,234,567"), as `floatformat:"0g"` writes it in
    English, without its Decimal and localisation round trip: a year's dashboard has ~800 of them."""
    try:
        return f"{round(value or 0):,}"
    except (TypeError, ValueError):
        return ""


@register.filter
def amount(exact, cents=None) -> str:
    """Money on cards and tables: `{{ r.cost|amount:r.cost_cents }}` (usage.amounts.amount_text)."""
    return amount_text(exact, cents)
