from __future__ import annotations

from django import template
from django.utils import timezone

from keys.selectors import KeyStatus, expiring_api_keys

register = template.Library()

BADGES = {KeyStatus.ACTIVE: "badge-ok", KeyStatus.EXPIRING: "badge-warn", KeyStatus.EXPIRED: "badge-bad", KeyStatus.REVOKED: "badge-muted"}


@register.filter
def thousands(value) -> str:
    """12345678 -> "12,345,678" (django.contrib.humanize is not installed)."""
    return "" if value is None else f"{int(value):,}"


@register.filter
def compact(value) -> str:
    """Token counts at a glance: 950, 60K, 1.5M, 10M, 2.1B."""
    if value is None:
        return ""
    value = int(value)
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if value >= size:
            text = f"{value / size:.1f}".removesuffix(".0")
            return f"{text}{suffix}"
    return str(value)


@register.filter
def status_badge(status) -> str:
    return BADGES.get(status, "badge-muted")


@register.inclusion_tag("keys/expiring_keys_notice.html")
def expiring_keys_notice(workspace) -> dict:
    """A warning block for the workspace overview: keys that expire within seven days."""
    return {"workspace": workspace, "expiring": expiring_api_keys(workspace, timezone.now())}
