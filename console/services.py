from __future__ import annotations

import secrets

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from console.audit import Actor, audit_erasure, audit_record
from console.models import ROLE_RANK, Membership, Role, Theme, User, Workspace, validate_workspace_slug
from deployments.models import Deployment
from keys.changes import keys_changed
from keys.models import ApiKey
from usage.models import UsageEvent


@transaction.atomic
def workspace_create(
    *, name: str, slug: str, actor: Actor, parent: Workspace | None = None, time_zone: str = "UTC", owner: User | None = None
) -> Workspace:
    if parent is not None and parent.parent_id is not None:
        raise ValidationError("Sub-workspaces live directly under a default workspace; they cannot be nested further.")
    try:
        validate_workspace_slug(slug)
    except ValidationError as exc:
        raise ValidationError({"slug": exc.messages}) from None
    if Workspace.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"The slug “{slug}” is already taken."})
    workspace = Workspace(name=name.strip(), slug=slug, parent=parent, time_zone=time_zone)
    workspace.full_clean()
    workspace.save()
    audit_record(
        workspace=workspace,
        actor=actor,
        action="workspace.created",
        target=workspace,
        details={"parent": parent.slug if parent else None, "time_zone": time_zone},
    )
    if parent is not None:
        audit_record(workspace=parent, actor=actor, action="sub_workspace.created", target=workspace)
    if owner is not None:
        membership_add(workspace=workspace, user=owner, role=Role.OWNER, actor=actor)
    return workspace


def workspace_update(*, workspace: Workspace, actor: Actor, name: str, time_zone: str) -> Workspace:
    changes = {}
    if workspace.name != name:
        changes["name"] = [workspace.name, name]
    if workspace.time_zone != time_zone:
        changes["time_zone"] = [workspace.time_zone, time_zone]
    if not changes:
        return workspace
    workspace.name, workspace.time_zone = name, time_zone
    workspace.full_clean()
    with transaction.atomic():
        workspace.save(update_fields=["name", "time_zone"])
        audit_record(workspace=workspace, actor=actor, action="workspace.updated", target=workspace, details=changes)
    return workspace


def _check_may_assign(*, actor_role: Role, role: Role) -> None:
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise ValidationError("Only an owner can make someone an owner.")


@transaction.atomic
def membership_add(*, workspace: Workspace, user: User, role: Role, actor: Actor, actor_role: Role = Role.OWNER) -> Membership:
    _check_may_assign(actor_role=actor_role, role=role)
    if Membership.objects.filter(workspace=workspace, user=user).exists():
        raise ValidationError(f"{user.get_username()} is already a member of {workspace.name}.")
    membership = Membership.objects.create(workspace=workspace, user=user, role=role)
    audit_record(
        workspace=workspace, actor=actor, action="member.added", target=membership, details={"user": user.get_username(), "role": role}
    )
    return membership


# No look-alikes (0/O/o, 1/l/I/i, 5/S, 2/Z, 8/B): one-time passwords are read aloud and retyped.
ONE_TIME_PASSWORD_ALPHABET = "34679abcdefghjkmnpqrstwxyzACDEFGHJKLMNPQRTUVWXY"
ONE_TIME_PASSWORD_GROUPS = 4  # four groups of four: 16 characters, about 89 bits


def one_time_password() -> str:
    groups = ("".join(secrets.choice(ONE_TIME_PASSWORD_ALPHABET) for _ in range(4)) for _ in range(ONE_TIME_PASSWORD_GROUPS))
    return "-".join(groups)


def workspace_set_require_mfa(*, workspace: Workspace, require: bool, actor: Actor, actor_has_mfa: bool) -> Workspace:
    if not workspace.is_default:
        raise ValidationError("Two-factor authentication is required from the default workspace, for its whole tree.")
    if workspace.require_mfa == require:
        return workspace
    if require and not actor_has_mfa:
        # Otherwise the owner would lock themselves out of the page that turns it off again.
        raise ValidationError("Set up two-factor authentication for your own account first (Two-factor, under your name in the sidebar).")
    with transaction.atomic():
        workspace.require_mfa = require
        workspace.save(update_fields=["require_mfa"])
        audit_record(
            workspace=workspace, actor=actor, action="workspace.mfa_required" if require else "workspace.mfa_optional", target=workspace
        )
    return workspace


@transaction.atomic
def user_create_with_one_time_password(*, username: str, email: str = "") -> tuple[User, str]:
    """A new account whose password must be changed at first sign-in; the password is returned once."""
    password = one_time_password()
    user = User(username=username, email=email, must_change_password=True)
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    return user, password


def _lock_owners(workspace: Workspace) -> int:
    # Lock the owner rows so two concurrent demotions cannot both see "another owner remains".
    return len(list(Membership.objects.select_for_update().filter(workspace=workspace, role=Role.OWNER).values_list("id", flat=True)))


@transaction.atomic
def membership_change_role(*, membership: Membership, role: Role, actor: Actor, actor_role: Role) -> Membership:
    old = Role(membership.role)
    if old == role:
        return membership
    if Role.OWNER in (old, role) and actor_role != Role.OWNER:
        raise ValidationError("Only an owner can change an owner's role or make someone an owner.")
    if old == Role.OWNER and _lock_owners(membership.workspace) <= 1:
        raise ValidationError("This is the workspace's last owner. Make someone else an owner first.")
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        workspace=membership.workspace,
        actor=actor,
        action="member.role_changed",
        target=membership,
        details={"user": membership.user.get_username(), "from": old, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: Actor, actor_role: Role) -> None:
    if membership.role == Role.OWNER:
        if actor_role != Role.OWNER:
            raise ValidationError("Only an owner can remove an owner.")
        if _lock_owners(membership.workspace) <= 1:
            raise ValidationError("This is the workspace's last owner and cannot be removed.")
    audit_record(
        workspace=membership.workspace,
        actor=actor,
        action="member.removed",
        target=membership,
        details={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


def assignable_roles(actor_role: Role) -> list[Role]:
    return [r for r in Role if ROLE_RANK[r] <= ROLE_RANK[actor_role] and (r != Role.OWNER or actor_role == Role.OWNER)]


@transaction.atomic
def member_create_with_one_time_password(
    *, workspace: Workspace, username: str, email: str, role: Role, actor: Actor, actor_role: Role
) -> tuple[Membership, str]:
    user, password = user_create_with_one_time_password(username=username, email=email)
    membership = membership_add(workspace=workspace, user=user, role=role, actor=actor, actor_role=actor_role)
    return membership, password


def _check_sub_workspace(workspace: Workspace) -> None:
    if workspace.is_default:
        raise ValidationError("A default workspace cannot be archived or deleted; only its sub-workspaces can.")


def _locked(workspace: Workspace) -> Workspace:
    # Two admins archiving and unarchiving at once: the second sees the first's result.
    return Workspace.objects.select_for_update(of=("self",)).select_related("parent").get(pk=workspace.pk)


def _announce_keys_of(workspace: Workspace) -> None:
    """Every gateway process reloads the workspace's keys before their next request (keys.changes)."""
    keys_changed(list(ApiKey.objects.filter(workspace=workspace).values_list("id", flat=True)))


@transaction.atomic
def workspace_archive(*, workspace: Workspace, actor: Actor) -> Workspace:
    """Archive a sub-workspace: the gateway refuses its keys from the next request on, its console
    turns read-only and only the default workspace's admins see it; usage, bills and the audit log
    stay. Archiving an archived workspace changes nothing."""
    _check_sub_workspace(workspace)
    locked = _locked(workspace)
    if locked.archived_at is None:
        locked.archived_at = timezone.now()
        locked.save(update_fields=["archived_at"])
        _announce_keys_of(locked)
        audit_record(workspace=locked, actor=actor, action="workspace.archived", target=locked)
        audit_record(workspace=locked.parent, actor=actor, action="sub_workspace.archived", target=locked)
    workspace.archived_at = locked.archived_at
    return workspace


@transaction.atomic
def workspace_unarchive(*, workspace: Workspace, actor: Actor) -> Workspace:
    """Undo workspace_archive: its keys work again (those not revoked or expired meanwhile)."""
    _check_sub_workspace(workspace)
    locked = _locked(workspace)
    if locked.archived_at is not None:
        archived_at = locked.archived_at
        locked.archived_at = None
        locked.save(update_fields=["archived_at"])
        _announce_keys_of(locked)
        details = {"archived_at": archived_at.isoformat()}
        audit_record(workspace=locked, actor=actor, action="workspace.unarchived", target=locked, details=details)
        audit_record(workspace=locked.parent, actor=actor, action="sub_workspace.unarchived", target=locked, details=details)
    workspace.archived_at = None
    return workspace


def sub_workspaces_of(workspace: Workspace) -> list[Workspace]:
    """A default workspace's sub-workspaces, active first, each with `deletable` (see
    workspace_delete_blockers), in one query."""
    has_usage = Exists(UsageEvent.objects.filter(workspace=OuterRef("pk")))
    has_deployments = Exists(Deployment.objects.filter(workspace=OuterRef("pk")))
    children = list(
        workspace.children.annotate(blocked=has_usage | has_deployments).order_by(F("archived_at").asc(nulls_first=True), "name")
    )
    for child in children:
        child.deletable = not child.blocked
    return children


def workspace_delete_blockers(workspace: Workspace) -> list[str]:
    """Why this sub-workspace cannot be deleted (empty when it can): usage is history that bills
    were made from, so a sub-workspace that has any is archived instead."""
    blockers = []
    if UsageEvent.objects.filter(workspace=workspace).exists():
        blockers.append("it has usage (requests or test calls); archive it instead to keep its history and bills")
    if Deployment.objects.filter(workspace=workspace).exists():
        blockers.append("it owns deployments; delete them first")
    return blockers


@transaction.atomic
def workspace_delete(*, workspace: Workspace, actor: Actor) -> None:
    """Delete a sub-workspace that has no usage, with its members, keys and audit log; the
    deletion itself is audited in the default workspace."""
    _check_sub_workspace(workspace)
    locked = _locked(workspace)
    blockers = workspace_delete_blockers(locked)
    if blockers:
        raise ValidationError(f"{locked.name} cannot be deleted: {'; '.join(blockers)}.")
    _announce_keys_of(locked)  # the gateways drop their cached copies of the keys deleted here
    audit_record(
        workspace=locked.parent,
        actor=actor,
        action="sub_workspace.deleted",
        target=locked,
        details={"slug": locked.slug, "members": locked.memberships.count(), "keys": ApiKey.objects.filter(workspace=locked).count()},
    )
    # The sub-workspace's own audit rows go with it: a deliberate erasure, recorded just above.
    with audit_erasure():
        locked.delete()


def user_set_theme(*, user: User, theme: str) -> User:
    """Remember the console's colours for this person: light, dark, or the browser's ("system")."""
    if theme not in Theme.values:
        raise ValidationError({"theme": "Choose light, dark or system."})
    user.theme = theme
    user.save(update_fields=["theme"])
    return user
