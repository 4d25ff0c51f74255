"""The audit log as people read it: filters, search, keyset pages and a streamed CSV of the same set.

Pages are cut on (created_at, id), newest first, never with OFFSET: page 1,000 costs what page 1
does (one index range scan on (workspace, -created_at)), and an event written while someone pages
does not shift the rows they have not seen yet.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django import forms
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast

from console.models import AuditEvent, Workspace

PAGE_SIZE = 50
FILTER_FIELDS = ("q", "actor", "action", "target", "start", "end")
CSV_COLUMNS = ("time_utc", "actor", "action", "target_type", "target_id", "target", "details", "client_ip")


class AuditFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=200, strip=True, label="Search")
    actor = forms.ChoiceField(required=False, label="Actor")
    action = forms.ChoiceField(required=False, label="Action")
    target = forms.CharField(required=False, max_length=200, strip=True, label="Target", help_text="A name or an id")
    start = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, data, *, actors: list[str], actions: list[str]):
        super().__init__(data)
        self.fields["actor"].choices = [("", "Anyone"), *((a, a) for a in actors)]
        self.fields["action"].choices = [("", "Any action"), *((a, a) for a in actions)]

    def clean(self):
        data = super().clean()
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            self.add_error("end", "The end date is before the start date.")
        return data


def filter_choices(workspace: Workspace) -> tuple[list[str], list[str]]:
    """Every actor and action that occurs in this workspace's log, for the filter's choices."""
    events = AuditEvent.objects.filter(workspace=workspace).order_by()
    actors = sorted(events.values_list("actor_label", flat=True).distinct(), key=str.lower)
    actions = sorted(events.values_list("action", flat=True).distinct())
    return actors, actions


def filtered_events(workspace: Workspace, data: dict) -> QuerySet[AuditEvent]:
    """The workspace's events matching the cleaned filters, newest first. Dates are whole days in
    the workspace's time zone, both ends included."""
    events = AuditEvent.objects.filter(workspace=workspace)
    if data.get("actor"):
        events = events.filter(actor_label=data["actor"])
    if data.get("action"):
        events = events.filter(action=data["action"])
    if data.get("target"):
        events = events.filter(Q(target_id=data["target"]) | Q(target_label__icontains=data["target"]))
    if data.get("start"):
        events = events.filter(created_at__gte=_day_start(data["start"], workspace))
    if data.get("end"):
        events = events.filter(created_at__lt=_day_start(data["end"] + timedelta(days=1), workspace))
    if data.get("q"):
        q = data["q"]
        match = Q()
        for name in ("actor_label", "action", "target_type", "target_id", "target_label", "details_text"):
            match |= Q(**{f"{name}__icontains": q})
        if _looks_like_ip(q):
            match |= Q(client_ip__startswith=q)
        events = events.annotate(details_text=Cast("details", TextField())).filter(match)
    return events.order_by("-created_at", "-id")


def _looks_like_ip(value: str) -> bool:
    return bool(value) and all(c in "0123456789abcdefABCDEF.:" for c in value)


def _day_start(day: date, workspace: Workspace) -> datetime:
    return datetime.combine(day, time.min, tzinfo=workspace.tz)


# --- cursors --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cursor:
    created_at: datetime
    id: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(f"{self.created_at.isoformat()}|{self.id}".encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, value: str) -> Cursor | None:
        """None for anything that is not a cursor this module made (a hand-edited URL shows page 1)."""
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
            stamp, _, pk = raw.partition("|")
            created_at = datetime.fromisoformat(stamp)
            if created_at.tzinfo is None:
                return None
            return cls(created_at, int(pk))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None

    @classmethod
    def of(cls, event: AuditEvent) -> Cursor:
        return cls(event.created_at, event.id)


@dataclass
class AuditPage:
    events: list[AuditEvent]
    older: Cursor | None  # where the next (older) page starts, if there is one
    newer: Cursor | None  # where the previous (newer) page ends, if there is one


def audit_page(
    events: QuerySet[AuditEvent], *, after: Cursor | None = None, before: Cursor | None = None, size: int | None = None
) -> AuditPage:
    """One page of `events` (newest first): the page after `after` (older), or the page before
    `before` (newer), or the first. One query; size + 1 rows tell whether more are there."""
    size = size or PAGE_SIZE
    if before is not None:
        newer_rows = list(
            events.filter(Q(created_at__gt=before.created_at) | Q(created_at=before.created_at, id__gt=before.id)).order_by(
                "created_at", "id"
            )[: size + 1]
        )
        has_newer = len(newer_rows) > size
        rows = list(reversed(newer_rows[:size]))
        return AuditPage(rows, older=Cursor.of(rows[-1]) if rows else None, newer=Cursor.of(rows[0]) if rows and has_newer else None)
    if after is not None:
        events = events.filter(Q(created_at__lt=after.created_at) | Q(created_at=after.created_at, id__lt=after.id))
    rows = list(events[: size + 1])
    has_older = len(rows) > size
    rows = rows[:size]
    return AuditPage(rows, older=Cursor.of(rows[-1]) if rows and has_older else None, newer=Cursor.of(rows[0]) if rows and after else None)


# --- CSV ------------------------------------------------------------------------------------------


class _Echo:
    def write(self, value: str) -> str:
        return value


def _cell(value: str) -> str:
    # A cell a spreadsheet would run as a formula (labels and details are typed by users) is
    # quoted with a leading apostrophe, as OWASP recommends for CSV exports.
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def audit_csv_rows(events: QuerySet[AuditEvent], *, batch: int = 1000) -> Iterator[str]:
    """The header and one line per event, read in keyset batches so a log of any length streams
    in constant memory (a server-side cursor would need a transaction held open for the whole download)."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    cursor: Cursor | None = None
    while True:
        page = audit_page(events, after=cursor, size=batch)
        for e in page.events:
            yield writer.writerow(
                [
                    e.created_at.isoformat(),
                    _cell(e.actor_label),
                    e.action,
                    e.target_type,
                    _cell(e.target_id),
                    _cell(e.target_label),
                    _cell(json.dumps(e.details, sort_keys=True, ensure_ascii=False)) if e.details else "",
                    e.client_ip or "",
                ]
            )
        if page.older is None:
            return
        cursor = page.older
