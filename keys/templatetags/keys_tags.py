from __future__ import annotations

import re

from django import template
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from keys.selectors import KeyStatus, expiring_api_keys

register = template.Library()

BADGES = {KeyStatus.ACTIVE: "badge-ok", KeyStatus.EXPIRING: "badge-warn", KeyStatus.EXPIRED: "badge-bad", KeyStatus.REVOKED: "badge-muted"}


_CODE_SPAN = re.compile(r"`([^`\n]+)`")


@register.filter
def inline_code(text: str) -> SafeString:
    """Markdown's `code` spans in a free-text description (the only markup people type there) as <code>."""
    return mark_safe(_CODE_SPAN.sub(r"<code>\1</code>", escape(text)))  # escaped first: only <code> is ours


@register.filter
def without_backticks(text: str) -> str:
    """The same text for places that cannot hold markup (a title attribute)."""
    return _CODE_SPAN.sub(r"\1", text)


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
