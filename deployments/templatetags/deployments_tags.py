from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django import template
from django.utils import timezone

register = template.Library()

STATUS_BADGES = {
    "running": "badge-ok",
    "stopped": "badge-muted",
    "failed": "badge-bad",
    "unreachable": "badge-warn",
    # replicas
    "up": "badge-ok",
    "down": "badge-bad",
    "unknown": "badge-muted",
    "disabled": "badge-muted",
}


@register.filter
def price(value) -> str:
    """A per-1M-token price without trailing zeros, but always with cents: 0.5 -> 0.50, 1.2345 -> 1.2345."""
    if value is None or value == "":
        return "—"
    value = Decimal(value)
    text = f"{value.normalize():f}"
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@register.filter
def status_badge(status: str) -> str:
    return STATUS_BADGES.get(status, "badge-muted")


TEST_CALL_BADGES = {"done": "badge-ok", "failed": "badge-bad", "streaming": "badge-warn", "running": "badge-warn"}


@register.filter
def test_call_badge(status: str) -> str:
    return TEST_CALL_BADGES.get(status, "badge-muted")


@register.filter
def ago(moment: datetime | None) -> str:
    """A short relative time: "just now", "2 min ago", "3 h ago", "4 days ago"."""
    if moment is None:
        return ""
    seconds = max(0, (timezone.now() - moment).total_seconds())
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86400)
    return f"{days} day{'s' if days != 1 else ''} ago"
