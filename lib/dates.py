"""One way to write a date on every console page, as two template filters (built in: no {% load %}).

    {{ key.expires_at|when }}   3 Dec 2026, 04:11 UTC   (a moment: day, time and time zone)
    {{ budget.resets_on|day }}  1 Jan 2027              (a calendar day)

Like Django's `date`, `when` shows the moment in the current time zone (a view's
timezone.override, or the `timezone` filter before it). Machine formats stay as they are:
ISO in title attributes, form values and URLs, "F Y" for a month.
"""

from __future__ import annotations

from django import template
from django.template.defaultfilters import date as date_filter

WHEN_FORMAT = "j M Y, H:i T"
DAY_FORMAT = "j M Y"

register = template.Library()


@register.filter(expects_localtime=True)
def when(value) -> str:
    return date_filter(value, WHEN_FORMAT)


@register.filter(expects_localtime=True)
def day(value) -> str:
    return date_filter(value, DAY_FORMAT)
