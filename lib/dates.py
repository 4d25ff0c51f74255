"""One way to write a date on every console page, as two template filters (built in: no {% load %}).

    {{ key.expires_at|when }}   3 Dec 2026, 04:11 UTC   (a moment: day, time and time zone)
    {{ budget.resets_on|day }}  1 Jan 2027              (a calendar day)
    {{ key.last_used_at|ago }}  just now, 2 min ago, 3 h ago, 4 days ago   (how long since)

Like Django's `date`, `when` shows the moment in the current time zone (a view's
timezone.override, or the `timezone` filter before it). Machine formats stay as they are:
ISO in title attributes, form values and URLs, "F Y" for a month.
"""

from __future__ import annotations

from datetime import datetime

from django import template
from django.template.defaultfilters import date as date_filter
from django.utils import timezone

WHEN_FORMAT = "j M Y, H:i T"
DAY_FORMAT = "j M Y"

register = template.Library()


@register.filter(expects_localtime=True)
def when(value) -> str:
    return date_filter(value, WHEN_FORMAT)


@register.filter(expects_localtime=True)
def day(value) -> str:
    return date_filter(value, DAY_FORMAT)


@register.filter
def ago(moment: datetime | None) -> str:
    """How long since a moment, short: "just now", "2 min ago", "3 h ago", "4 days ago"."""
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
