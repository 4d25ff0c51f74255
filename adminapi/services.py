"""Writes and the lookup for admin keys. The rules are application keys' and live with them:
keys.services mints secrets (typed prefix, only the HMAC digest stored, the plaintext returned
once), rotates them with a grace period and revokes keys; keys.selectors.key_unusable_reason
says whether a key (revoked, expired, rotated away) may be used. Here: what is admin-key
specific (role, audit actions, the principal); every change audited."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from adminapi.models import AdminKey, AdminKeyRole, AdminKeySecret
from console.audit import Actor, audit_record
from console.models import Role, Workspace
from keys import tokens
from keys.names import validate_key_name
from keys.selectors import key_unusable_reason
from keys.services import check_expiry, key_insert, key_revoke, secret_rotate
from lib.net import ip_allowed, parse_allowlist, parse_networks


def _errors_raise(errors: dict[str, list[str]]) -> None:
    if errors:
        raise ValidationError(errors)


def _check(errors: dict, field: str, fn, *args):
    try:
        return fn(*args)
    except ValidationError as exc:
        errors.setdefault(field, []).extend(exc.messages)
        return None


@sensitive_variables("key")
def admin_key_create(
    *,
    workspace: Workspace,
    actor: Actor,
    name: str,
    role: str,
    ip_allowlist: str | list[str] = (),
    expires_at: dt.datetime | None = None,
    now: dt.datetime | None = None,
) -> tuple[AdminKey, str]:
    """Create an admin key and its first secret; the plaintext exists only in the return value."""
    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    _check(errors, "name", validate_key_name, name)
    if "name" not in errors and AdminKey.objects.filter(workspace=workspace, name__iexact=name).exists():
        errors.setdefault("name", []).append(f"An admin key named “{name}” already exists in this workspace.")
    if role not in AdminKeyRole.values:
        errors.setdefault("role", []).append("Choose admin or viewer.")
    ip_allowlist = _check(errors, "ip_allowlist", parse_allowlist, ip_allowlist)
    expires_at = _check(errors, "expires_at", check_expiry, expires_at, now)
    _errors_raise(errors)
    with transaction.atomic():
        admin_key = AdminKey(
            workspace=workspace,
            name=name,
            role=role,
            ip_allowlist=ip_allowlist,
            expires_at=expires_at,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
            created_by_label=actor.label[:150],
        )
        secret, key = key_insert(
            admin_key,
            constraint="admin_key_unique_name",
            name_taken=f"An admin key named “{name}” already exists in this workspace.",
            prefix=tokens.ADMIN_PREFIX,
        )
        audit_record(
            workspace=workspace,
            actor=actor,
            action="admin_key.created",
            target=admin_key,
            details={
                "name": name,
                "role": role,
                "hint": secret.hint,
                "ip_allowlist": ip_allowlist,
                "expires_at": expires_at.isoformat() if expires_at else None,
            },
        )
    return admin_key, key


def _lock(admin_key: AdminKey) -> AdminKey:
    return AdminKey.objects.select_for_update().select_related("workspace").get(pk=admin_key.pk)


# Why keys.selectors.key_unusable_reason refuses to rotate an admin key, as the console and API say it.
_NOT_ROTATABLE = {
    "key_revoked": "This admin key is revoked; create a new one instead.",
    "key_expired": "This admin key has expired; create a new one instead.",
}


@sensitive_variables("key")
def admin_key_rotate(*, admin_key: AdminKey, actor: Actor, grace: dt.timedelta, now: dt.datetime | None = None) -> str:
    """A new secret; older ones stay valid until now + grace at the latest (keys.services.secret_rotate)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(admin_key)
        old_hint, _, key = secret_rotate(locked, grace=grace, now=now, refusals=_NOT_ROTATABLE, prefix=tokens.ADMIN_PREFIX)
        audit_record(
            workspace=locked.workspace,
            actor=actor,
            action="admin_key.rotated",
            target=locked,
            details={"old_hint": old_hint, "new_hint": locked.hint, "grace_seconds": int(grace.total_seconds())},
        )
    admin_key.hint = locked.hint
    return key


def admin_key_revoke(*, admin_key: AdminKey, actor: Actor, now: dt.datetime | None = None) -> AdminKey:
    """Every secret of the key stops working at once (the admin API looks keys up on every request)."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(admin_key)
        if not key_revoke(locked, now=now):
            return locked
        audit_record(workspace=locked.workspace, actor=actor, action="admin_key.revoked", target=locked, details={"hint": locked.hint})
    admin_key.revoked_at = locked.revoked_at
    return locked


# ---- authentication ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AdminKeyPrincipal:
    """Who an admin API request acts as: passed to the access_* chokepoints in place of a user.

    It reaches the key's workspace and, for a default workspace, its sub-workspaces (as an admin
    of a default workspace does), with the key's role; nothing else exists for it.
    """

    admin_key: AdminKey
    ip: str | None
    is_admin_key = True
    is_authenticated = True
    pk = None

    def get_username(self) -> str:
        return self.admin_key.actor_label

    def role_in(self, workspace: Workspace) -> Role | None:
        own = self.admin_key.workspace
        if own.id not in workspace.lineage_ids:
            return None
        if workspace.id == own.id and workspace.archived_at is not None:
            # An archived sub-workspace is kept for its default workspace's admins only, as for members.
            return None
        return Role(self.admin_key.role)

    @property
    def actor(self) -> Actor:
        return Actor(user=None, ip=self.ip, label=self.admin_key.actor_label)


# Why keys.selectors.key_unusable_reason refuses a key, as the admin API says it.
_UNUSABLE = {
    "key_revoked": "This admin key has been revoked.",
    "key_expired": "This admin key has expired.",
    "secret_rotated": "This admin key was rotated and its grace period has ended.",
}


class AdminKeyRefused(Exception):
    """The credential does not authenticate; the message is safe to show (it never holds the key)."""


@sensitive_variables("key")
def admin_key_authenticate(key: str, *, ip: str | None, now: dt.datetime | None = None) -> AdminKeyPrincipal:
    """The principal for a presented admin key, or AdminKeyRefused. Looked up on every request, so
    a revocation or rotation deadline holds on the next call in every process."""
    now = now or timezone.now()
    if not tokens.is_well_formed(key, tokens.ADMIN_PREFIX):
        raise AdminKeyRefused("Send an admin key (gh_admin_…) as 'Authorization: Bearer <key>'.")
    secret = (
        AdminKeySecret.objects.select_related("admin_key__workspace__parent")
        .filter(digest=tokens.digest(key, settings.API_KEY_PEPPER))
        .first()
    )
    if secret is None:
        raise AdminKeyRefused("This admin key is not valid.")
    admin_key = secret.admin_key
    unusable = key_unusable_reason(
        revoked=admin_key.revoked_at is not None, expires_at=admin_key.expires_at, secret_valid_until=secret.valid_until, now=now
    )
    if unusable is not None:
        raise AdminKeyRefused(_UNUSABLE[unusable])
    if admin_key.ip_allowlist and not ip_allowed(ip, parse_networks(admin_key.ip_allowlist)):
        raise AdminKeyRefused("This admin key may not be used from this address.")
    if admin_key.last_used_at is None or admin_key.last_used_at < now - dt.timedelta(minutes=1):
        AdminKey.objects.filter(pk=admin_key.pk).update(last_used_at=now, last_used_ip=ip)
    return AdminKeyPrincipal(admin_key=admin_key, ip=ip)
