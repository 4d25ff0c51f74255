"""SSO group mappings: an identity-provider group claim gives a role in a workspace.

At each SSO sign-in the person's memberships that came from mappings are brought in step with the
groups the identity provider sent: added, raised or lowered to the mapped role, or removed when no
mapped group is left. Memberships an admin added by hand or by invitation are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction

from console.audit import Actor, audit_record
from console.models import ROLE_RANK, Membership, Role, SsoGroupMapping, User, Workspace


def sso_groups_from_claims(extra_data: dict, *, claim: str) -> set[str]:
    """Groups from the ID token and userinfo (IdPs put them in one or the other)."""
    groups: set[str] = set()
    for source in (extra_data.get("id_token") or {}, extra_data.get("userinfo") or {}, extra_data):
        value = source.get(claim) if isinstance(source, dict) else None
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            groups.update(str(g) for g in value if isinstance(g, str | int))
    return groups


def sso_has_mapping_for(groups: Iterable[str]) -> bool:
    groups = list(groups)
    return bool(groups) and SsoGroupMapping.objects.filter(group__in=groups).exists()


@transaction.atomic
def sso_memberships_sync(*, user: User, groups: set[str], actor: Actor) -> None:
    wanted: dict[int, Role] = {}
    for mapping in SsoGroupMapping.objects.filter(group__in=groups).select_related("workspace"):
        role = Role(mapping.role)
        if mapping.workspace_id not in wanted or ROLE_RANK[role] > ROLE_RANK[wanted[mapping.workspace_id]]:
            wanted[mapping.workspace_id] = role
    current = {m.workspace_id: m for m in Membership.objects.select_for_update().filter(user=user).select_related("workspace")}
    for workspace_id, role in wanted.items():
        membership = current.get(workspace_id)
        if membership is None:
            membership = Membership.objects.create(workspace_id=workspace_id, user=user, role=role, via_sso=True)
            audit_record(
                workspace=membership.workspace,
                actor=actor,
                action="member.added",
                target=membership,
                details={"user": user.get_username(), "role": role, "via": "sso"},
            )
        elif membership.via_sso and membership.role != role:
            old = membership.role
            membership.role = role
            membership.save(update_fields=["role"])
            audit_record(
                workspace=membership.workspace,
                actor=actor,
                action="member.role_changed",
                target=membership,
                details={"user": user.get_username(), "from": old, "to": role, "via": "sso"},
            )
    for workspace_id, membership in current.items():
        if membership.via_sso and workspace_id not in wanted:
            audit_record(
                workspace=membership.workspace,
                actor=actor,
                action="member.removed",
                target=membership,
                details={"user": user.get_username(), "role": membership.role, "via": "sso"},
            )
            membership.delete()


@transaction.atomic
def sso_mapping_create(*, workspace: Workspace, group: str, role: Role, actor: Actor, actor_role: Role) -> SsoGroupMapping:
    group = group.strip()
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise ValidationError({"role": "Only an owner can map a group to the owner role."})
    # A group may be claimed by one organisation only, so a tenant cannot map another tenant's
    # group and pull its people in.
    taken = SsoGroupMapping.objects.filter(group=group).exclude(workspace__in=_tree(workspace)).exists()
    if taken:
        raise ValidationError({"group": f"The group “{group}” is mapped by another organisation on this installation."})
    if SsoGroupMapping.objects.filter(workspace=workspace, group=group).exists():
        raise ValidationError({"group": f"The group “{group}” is already mapped in {workspace.name}."})
    mapping = SsoGroupMapping.objects.create(workspace=workspace, group=group, role=role)
    audit_record(workspace=workspace, actor=actor, action="sso_mapping.created", target=mapping, details={"group": group, "role": role})
    return mapping


@transaction.atomic
def sso_mapping_delete(*, mapping: SsoGroupMapping, actor: Actor) -> None:
    audit_record(
        workspace=mapping.workspace,
        actor=actor,
        action="sso_mapping.deleted",
        target=mapping,
        details={"group": mapping.group, "role": mapping.role},
    )
    mapping.delete()


def _tree(workspace: Workspace) -> list[int]:
    root = workspace.root
    return [root.id, *root.children.values_list("id", flat=True)]
