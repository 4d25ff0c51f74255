from __future__ import annotations

from decimal import Decimal

from django import template

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
