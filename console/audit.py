from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connection, transaction

from console.models import AuditEvent, Workspace
from lib.net import client_ip


@dataclass(frozen=True)
class Actor:
    """Who is making a change and from where; passed to every service that writes."""

    user: object | None
    ip: str | None = None
    label: str = ""

    @classmethod
    def from_request(cls, request) -> Actor:
        return cls(user=request.user, ip=client_ip(request), label=request.user.get_username())

    @classmethod
    def system(cls, label: str = "system") -> Actor:
        return cls(user=None, ip=None, label=label)


def audit_record(*, workspace: Workspace, actor: Actor, action: str, target, details: dict | None = None) -> AuditEvent:
    """Write one audit event. Never put a secret in details."""
    return AuditEvent.objects.create(
        workspace=workspace,
        actor=actor.user if getattr(actor.user, "pk", None) else None,
        actor_label=actor.label or "system",
        action=action,
        target_type=target._meta.model_name,
        target_id=str(getattr(target, "public_id", target.pk)),
        target_label=str(target)[:200],
        details=details or {},
        client_ip=actor.ip,
    )


@contextmanager
def audit_erasure() -> Iterator[None]:
    """Let the current transaction delete audit rows (PostgreSQL's append-only trigger refuses it
    otherwise). For deliberate erasures that are themselves audited, e.g. deleting a workspace."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL gatehouse.audit_erasure = 'on'")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL gatehouse.audit_erasure = 'off'")
