"""The audit log page: filters in the URL, search, keyset pages, the streamed CSV of the filtered set,
and the overview's recent activity linking into it."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from console.audit import Actor, audit_record
from console.audit_log import Cursor
from console.models import AuditEvent

pytestmark = pytest.mark.django_db


def url(name: str = "audit_page", ws: str = "acme") -> str:
    return reverse(name, kwargs={"ws": ws})


def shown(response) -> list[int]:
    return [int(i) for i in re.findall(r'data-event="(\d+)"', response.content.decode())]


def _record(world, *, action: str, actor: str = "olivia", target=None, details=None, at: datetime | None = None, ip=None) -> AuditEvent:
    event = audit_record(
        workspace=world.org, actor=Actor(user=None, ip=ip, label=actor), action=action, target=target or world.org, details=details
    )
    if at is not None:
        # Only the test rewrites history: the append-only trigger is bypassed as an audited erasure would.
        from console.audit import audit_erasure

        with audit_erasure():
            AuditEvent.objects.filter(pk=event.pk).update(created_at=at)
        event.refresh_from_db()
    return event


def test_filters_by_actor_action_target_and_dates_live_in_the_url(world, client_for):
    client = client_for(world.owner)
    day = datetime(2026, 11, 10, 12, tzinfo=UTC)
    a = _record(world, action="api_key.created", actor="olivia", target=world.sub, at=day)
    b = _record(world, action="api_key.revoked", actor="adam", target=world.sub, at=day + timedelta(days=1))
    c = _record(world, action="api_key.created", actor="adam", target=world.org, at=day + timedelta(days=2))

    assert shown(client.get(url(), {"actor": "adam"})) == [c.id, b.id]
    assert shown(client.get(url(), {"action": "api_key.created", "start": "2026-11-01", "end": "2026-11-30"})) == [c.id, a.id]
    assert shown(client.get(url(), {"target": str(world.sub.public_id), "end": "2026-11-30"})) == [b.id, a.id]
    assert shown(client.get(url(), {"target": "Resea", "end": "2026-11-30"})) == [b.id, a.id]  # by name too
    assert shown(client.get(url(), {"start": "2026-11-11", "end": "2026-11-11"})) == [b.id]  # a whole day, both ends included

    response = client.get(url(), {"actor": "adam", "action": "api_key.created"})
    page = response.content.decode()
    assert shown(response) == [c.id]
    # The filters stay in the form and in the CSV link, so a filtered view can be bookmarked and shared.
    assert '<option value="adam" selected>' in page
    assert "export.csv?actor=adam&amp;action=api_key.created" in page


def test_search_matches_names_ids_details_and_addresses(world, client_for):
    client = client_for(world.owner)
    hit = _record(world, action="member.added", details={"user": "zelda-unique", "role": "viewer"})
    by_ip = _record(world, action="member.removed", ip="203.0.113.77")
    _record(world, action="member.added", details={"user": "someone-else"})

    assert shown(client.get(url(), {"q": "zelda-unique"})) == [hit.id]
    assert shown(client.get(url(), {"q": "203.0.113"})) == [by_ip.id]
    empty = client.get(url(), {"q": "nothing-like-this"})
    assert shown(empty) == []
    assert "No matching events" in empty.content.decode()


def test_bad_filters_get_a_form_error_and_no_rows(world, client_for):
    client = client_for(world.owner)
    _record(world, action="x.y")
    response = client.get(url(), {"start": "2026-11-10", "end": "2026-11-01"})
    assert response.status_code == 400
    assert "The end date is before the start date." in response.content.decode()
    assert shown(response) == []
    assert client.get(url(), {"start": "not-a-date"}).status_code == 400
    assert client.get(url(), {"actor": "nobody-like-this"}).status_code == 400  # not one of the choices


def test_pages_are_cut_by_cursor_not_offset_and_do_not_shift_when_events_arrive(world, client_for, monkeypatch):
    import console.audit_log as audit_log

    monkeypatch.setattr(audit_log, "PAGE_SIZE", 3)
    client = client_for(world.owner)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    same_time = start + timedelta(hours=1)
    made = [_record(world, action=f"test.{i}", at=same_time if i in (3, 4, 5) else start + timedelta(minutes=i)) for i in range(8)]
    everything = list(AuditEvent.objects.filter(workspace=world.org).order_by("-created_at", "-id").values_list("id", flat=True))

    seen: list[int] = []
    response = client.get(url())
    pages = 0
    while True:
        ids = shown(response)
        seen += ids
        pages += 1
        older = re.search(r'href="\?after=([\w-]+)"', response.content.decode())
        if older is None:
            break
        if pages == 2:
            _record(world, action="test.late")  # a new event on top must not move the pages still to come
        with CaptureQueriesContext(connection) as queries:
            response = client.get(url(), {"after": older.group(1)})
        assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)
    assert seen == everything  # every event once, in order, ties on created_at broken by id
    assert {m.id for m in made} <= set(seen)

    # Newer walks back: from the last page to the first.
    newer = re.search(r'href="\?before=([\w-]+)"', response.content.decode())
    back = client.get(url(), {"before": newer.group(1)})
    assert shown(back) == everything[-len(shown(response)) - 3 : -len(shown(response))]


def test_a_forged_cursor_shows_the_first_page(world, client_for):
    client = client_for(world.owner)
    _record(world, action="x.y")
    first = shown(client.get(url()))
    assert shown(client.get(url(), {"after": "not-a-cursor!"})) == first
    assert Cursor.decode(Cursor(datetime(2026, 1, 1, tzinfo=UTC), 5).encode()) == Cursor(datetime(2026, 1, 1, tzinfo=UTC), 5)


def test_csv_streams_exactly_the_filtered_set(world, client_for):
    client = client_for(world.owner)
    _record(world, action="api_key.created", actor="adam", details={"name": '=HYPERLINK("http://x")'})
    _record(world, action="api_key.revoked", actor="adam")
    _record(world, action="api_key.created", actor="olivia")

    response = client.get(url("audit_export"), {"actor": "adam"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert re.fullmatch(r'attachment; filename="audit-acme-filtered-\d{4}-\d{2}-\d{2}\.csv"', response["Content-Disposition"])
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0] == ["time_utc", "actor", "action", "target_type", "target_id", "target", "details", "client_ip"]
    assert [(r[1], r[2]) for r in rows[1:]] == [("adam", "api_key.revoked"), ("adam", "api_key.created")]
    assert rows[2][6] == '{"name": "=HYPERLINK(\\"http://x\\")"}'  # JSON, and not a formula: it starts with {

    everything = list(csv.reader(io.StringIO(b"".join(client.get(url("audit_export")).streaming_content).decode())))
    assert len(everything) - 1 == AuditEvent.objects.filter(workspace=world.org).count()


def test_csv_is_read_in_keyset_batches(world, client_for):
    from console.audit_log import audit_csv_rows, filtered_events

    for i in range(7):
        _record(world, action=f"batch.{i}")
    events = filtered_events(world.org, {})
    with CaptureQueriesContext(connection) as queries:
        lines = list(audit_csv_rows(events, batch=3))
    assert len(lines) - 1 == events.count()
    assert len(queries.captured_queries) == -(-(len(lines) - 1) // 3)  # one query per batch of 3
    assert not any("OFFSET" in q["sql"].upper() for q in queries.captured_queries)


def test_outsiders_get_404_and_the_log_is_per_workspace(world, client_for):
    assert client_for(world.outsider).get(url()).status_code == 404
    assert client_for(world.outsider).get(url("audit_export")).status_code == 404
    rows = list(
        csv.reader(io.StringIO(b"".join(client_for(world.owner).get(url("audit_export", ws="acme-research")).streaming_content).decode()))
    )
    assert rows[1:] and all(r[2] for r in rows[1:])
    assert len(rows) - 1 == AuditEvent.objects.filter(workspace=world.sub).count()


def test_overview_activity_links_each_entry_to_the_log_filtered_to_it(world, client_for):
    client = client_for(world.owner)
    event = AuditEvent.objects.filter(workspace=world.org).order_by("-created_at", "-id").first()
    page = client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.decode()
    link = f"/w/acme/audit/?target={event.target_id}&amp;event={event.id}#event-{event.id}"
    assert link in page
    assert 'data-testid="activity-all"' in page

    followed = client.get(link.replace("&amp;", "&").split("#")[0])
    assert event.id in shown(followed)
    assert f'id="event-{event.id}" data-event="{event.id}" class="highlight"' in followed.content.decode()
    assert all(e.target_id == event.target_id for e in AuditEvent.objects.filter(id__in=shown(followed)))


def test_every_page_costs_the_same_queries(world, client_for, monkeypatch):
    import console.audit_log as audit_log

    monkeypatch.setattr(audit_log, "PAGE_SIZE", 2)
    for i in range(9):
        _record(world, action=f"q.{i}", actor=f"actor-{i}")
    client = client_for(world.owner)
    client.get(url())  # warm the session

    def queries_for(params) -> tuple[int, str]:
        with CaptureQueriesContext(connection) as captured:
            body = client.get(url(), params).content.decode()
        return len(captured.captured_queries), body

    first, body = queries_for({})
    older = re.search(r'href="\?after=([\w-]+)"', body).group(1)
    later, _ = queries_for({"after": older})
    assert first == later
    filtered, _ = queries_for({"actor": "actor-3", "q": "q."})
    assert filtered == first
