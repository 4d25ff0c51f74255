"""Audit events are append-only: the admin cannot add, change or delete them, and PostgreSQL
refuses UPDATE/DELETE of audit rows whoever sends them (issue 13, "Audit entries can be fabricated")."""

from __future__ import annotations

import pytest
from django.db import DatabaseError, connection, transaction

from console.audit import audit_erasure
from console.models import AuditEvent, User


@pytest.fixture
def superuser_client(client, db):
    root = User.objects.create_superuser("root", "root@example.com", "correct-horse-battery")
    client.force_login(root)
    return client


def test_admin_cannot_add_an_audit_event(world, superuser_client):
    before = AuditEvent.objects.count()
    listing = superuser_client.get("/admin/console/auditevent/")
    assert listing.status_code == 200
    assert b"/admin/console/auditevent/add/" not in listing.content

    assert superuser_client.get("/admin/console/auditevent/add/").status_code == 403
    forged = superuser_client.post(
        "/admin/console/auditevent/add/",
        {"workspace": world.org.id, "actor_label": "olivia", "action": "api_key.revoked", "target_type": "apikey", "details": "{}"},
    )
    assert forged.status_code == 403
    assert AuditEvent.objects.count() == before


def test_admin_cannot_change_or_delete_an_audit_event(world, superuser_client):
    event = AuditEvent.objects.filter(workspace=world.org).first()
    url = f"/admin/console/auditevent/{event.pk}/change/"
    view = superuser_client.get(url)
    assert view.status_code == 200  # viewable, read-only
    assert b'name="_save"' not in view.content
    assert superuser_client.post(url, {"action": "forged", "actor_label": "x", "target_type": "x", "details": "{}"}).status_code == 403
    assert superuser_client.post(f"/admin/console/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = superuser_client.post("/admin/console/auditevent/", {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})
    assert bulk.status_code in (200, 302)
    event.refresh_from_db()
    assert event.action != "forged"
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_database_refuses_update_of_an_audit_event(world):
    event = AuditEvent.objects.filter(workspace=world.org).first()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="api_key.revoked", actor_label="someone-else")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE console_auditevent SET details = '{}'::jsonb WHERE id = %s", [event.pk])
    event.refresh_from_db()
    assert event.action != "api_key.revoked"


def test_database_refuses_delete_of_audit_events(world):
    count = AuditEvent.objects.count()
    assert count > 0
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.all().delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM console_auditevent")
    assert AuditEvent.objects.count() == count


def test_deleting_a_user_keeps_their_audit_events_with_the_name(world):
    # on_delete=SET_NULL is the one UPDATE the trigger lets through: actor_id to NULL, nothing else.
    mine = AuditEvent.objects.filter(workspace=world.org).first()
    AuditEvent.objects.create(workspace=world.org, actor=world.viewer, actor_label="vera", action="x.y", target_type="workspace")
    world.viewer.delete()
    kept = AuditEvent.objects.get(action="x.y")
    assert (kept.actor_id, kept.actor_label) == (None, "vera")
    # Setting actor_id to NULL while changing anything else is still refused.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=mine.pk).update(actor=None, actor_label="forged")


def test_a_deliberate_erasure_may_delete(world):
    with audit_erasure():
        deleted, _ = AuditEvent.objects.filter(workspace=world.other_org).delete()
    assert deleted > 0
    # The permission ends with the erasure.
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(workspace=world.org).delete()
