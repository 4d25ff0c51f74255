"""Workspaces, sub-workspaces, members, invitations and the audit log."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.urls import reverse
from ninja import Query, Router, Schema
from ninja.responses import Status, codes_4xx

from adminapi.core import DEFAULT_LIMIT, ApiError, ErrorOut, IdempotencyKey, idempotent, page_by_id, principal
from console import invitations
from console.access import access_membership, access_workspace
from console.forms import MemberCreateForm
from console.models import AuditEvent, Invitation, Membership, Role, Workspace
from console.services import (
    assignable_roles,
    member_create_with_one_time_password,
    membership_change_role,
    membership_remove,
    workspace_archive,
    workspace_create,
    workspace_unarchive,
    workspace_update,
)

router = Router(tags=["workspaces"])


class WorkspaceOut(Schema):
    id: UUID
    slug: str
    name: str
    parent: str | None
    time_zone: str
    archived_at: datetime | None
    created_at: datetime


def workspace_out(w: Workspace) -> dict:
    return WorkspaceOut(
        id=w.public_id,
        slug=w.slug,
        name=w.name,
        parent=w.parent.slug if w.parent_id else None,
        time_zone=w.time_zone,
        archived_at=w.archived_at,
        created_at=w.created_at,
    ).model_dump(mode="json")


class WorkspaceList(Schema):
    data: list[WorkspaceOut]
    next_cursor: str | None


class SubWorkspaceIn(Schema):
    name: str
    slug: str
    time_zone: str | None = None


class WorkspacePatch(Schema):
    name: str | None = None
    time_zone: str | None = None


@router.get("/workspaces", response={200: WorkspaceList, codes_4xx: ErrorOut}, summary="List the workspaces this admin key reaches")
def list_workspaces(request, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    # The key's own workspace and, for a default workspace, its sub-workspaces (AdminKeyPrincipal.role_in).
    reach = principal(request).admin_key.workspace.tree_q(None)
    rows, next_cursor = page_by_id(Workspace.objects.select_related("parent").filter(reach), cursor=cursor, limit=limit)
    return {"data": [workspace_out(w) for w in rows], "next_cursor": next_cursor}


@router.get("/workspaces/{ws}", response={200: WorkspaceOut, codes_4xx: ErrorOut}, summary="Get a workspace")
def get_workspace(request, ws: str):
    return workspace_out(access_workspace(principal(request), ws).workspace)


@router.patch("/workspaces/{ws}", response={200: WorkspaceOut, codes_4xx: ErrorOut}, summary="Rename a workspace or change its time zone")
def patch_workspace(request, ws: str, payload: WorkspacePatch):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    w = access.workspace
    workspace_update(
        workspace=w,
        actor=principal(request).actor,
        name=(payload.name if payload.name is not None else w.name).strip(),
        time_zone=payload.time_zone if payload.time_zone is not None else w.time_zone,
    )
    return workspace_out(w)


@router.post(
    "/workspaces/{ws}/sub-workspaces",
    response={201: WorkspaceOut, codes_4xx: ErrorOut},
    summary="Create a sub-workspace of a default workspace",
)
def create_sub_workspace(request, ws: str, payload: SubWorkspaceIn, idempotency_key: IdempotencyKey = None):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    if not access.workspace.is_default:
        raise PermissionDenied("Sub-workspaces are created from the default workspace.")

    def create():
        child = workspace_create(
            parent=access.workspace,
            actor=principal(request).actor,
            name=payload.name,
            slug=payload.slug,
            time_zone=payload.time_zone or access.workspace.time_zone,
        )
        return 201, workspace_out(child)

    return idempotent(request, create)


def _sub_workspace(request, ws: str, sub: str) -> Workspace:
    """A sub-workspace, managed from its default workspace (as the console's archive buttons are)."""
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    child = access.workspace.children.filter(slug=sub).first() if access.workspace.is_default else None
    if child is None:
        raise Http404("No such sub-workspace.")
    return child


@router.post(
    "/workspaces/{ws}/sub-workspaces/{sub}/archive",
    response={200: WorkspaceOut, codes_4xx: ErrorOut},
    summary="Archive a sub-workspace (its keys are refused; usage, bills and audit stay)",
)
def archive_sub_workspace(request, ws: str, sub: str):
    return workspace_out(workspace_archive(workspace=_sub_workspace(request, ws, sub), actor=principal(request).actor))


@router.post(
    "/workspaces/{ws}/sub-workspaces/{sub}/unarchive",
    response={200: WorkspaceOut, codes_4xx: ErrorOut},
    summary="Unarchive a sub-workspace",
)
def unarchive_sub_workspace(request, ws: str, sub: str):
    return workspace_out(workspace_unarchive(workspace=_sub_workspace(request, ws, sub), actor=principal(request).actor))


# ---- members and invitations -------------------------------------------------------------------


class MemberOut(Schema):
    id: UUID
    username: str
    email: str
    role: str
    via_sso: bool
    created_at: datetime


def member_out(m: Membership) -> dict:
    return MemberOut(
        id=m.public_id, username=m.user.get_username(), email=m.user.email, role=m.role, via_sso=m.via_sso, created_at=m.created_at
    ).model_dump(mode="json")


class MemberList(Schema):
    data: list[MemberOut]
    next_cursor: str | None


class MemberPatch(Schema):
    role: Role


@router.get("/workspaces/{ws}/members", response={200: MemberList, codes_4xx: ErrorOut}, summary="List members", tags=["members"])
def list_members(request, ws: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    rows, next_cursor = page_by_id(access.workspace.memberships.select_related("user"), cursor=cursor, limit=limit)
    return {"data": [member_out(m) for m in rows], "next_cursor": next_cursor}


class MemberIn(Schema):
    username: str
    email: str = ""
    role: Role = Role.DEVELOPER


class MemberCreatedOut(Schema):
    """The new member and, only in this response, the account's one-time password (a replayed
    create carries null). The person must change it at first sign-in."""

    member: MemberOut
    one_time_password: str | None


@router.post(
    "/workspaces/{ws}/members",
    response={201: MemberCreatedOut, codes_4xx: ErrorOut},
    summary="Create an account with a one-time password and add it (for installations without email)",
    tags=["members"],
)
def create_member(request, ws: str, payload: MemberIn, idempotency_key: IdempotencyKey = None):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)

    def create():
        # The console's form decides what a valid username and role are (and who may grant which).
        form = MemberCreateForm(data=payload.model_dump(), roles=assignable_roles(access.role))
        if not form.is_valid():
            raise ValidationError({name: list(errors) for name, errors in form.errors.items()})
        membership, password = member_create_with_one_time_password(
            workspace=access.workspace, actor=principal(request).actor, actor_role=access.role, **form.cleaned_data
        )
        return 201, {"member": member_out(membership), "one_time_password": password}

    return idempotent(request, create, secret_fields=("one_time_password",))


@router.patch(
    "/workspaces/{ws}/members/{member_id}",
    response={200: MemberOut, codes_4xx: ErrorOut},
    summary="Change a member's role",
    tags=["members"],
)
def patch_member(request, ws: str, member_id: UUID, payload: MemberPatch):
    access, membership = access_membership(principal(request), ws, member_id)
    membership_change_role(membership=membership, role=Role(payload.role), actor=principal(request).actor, actor_role=access.role)
    return member_out(membership)


@router.delete(
    "/workspaces/{ws}/members/{member_id}", response={204: None, codes_4xx: ErrorOut}, summary="Remove a member", tags=["members"]
)
def delete_member(request, ws: str, member_id: UUID):
    access, membership = access_membership(principal(request), ws, member_id)
    membership_remove(membership=membership, actor=principal(request).actor, actor_role=access.role)
    return Status(204, None)


class InvitationOut(Schema):
    id: UUID
    email: str
    role: str
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None


def invitation_out(i: Invitation) -> dict:
    return InvitationOut(
        id=i.public_id,
        email=i.email,
        role=i.role,
        created_at=i.created_at,
        expires_at=i.expires_at,
        accepted_at=i.accepted_at,
        revoked_at=i.revoked_at,
    ).model_dump(mode="json")


class InvitationList(Schema):
    data: list[InvitationOut]
    next_cursor: str | None


class InvitationIn(Schema):
    email: str
    role: Role


@router.get(
    "/workspaces/{ws}/invitations", response={200: InvitationList, codes_4xx: ErrorOut}, summary="List invitations", tags=["members"]
)
def list_invitations(request, ws: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    rows, next_cursor = page_by_id(access.workspace.invitations.all(), cursor=cursor, limit=limit)
    return {"data": [invitation_out(i) for i in rows], "next_cursor": next_cursor}


@router.post(
    "/workspaces/{ws}/invitations",
    response={201: InvitationOut, codes_4xx: ErrorOut},
    summary="Invite someone by email (the link is emailed, never returned)",
    tags=["members"],
)
def create_invitation(request, ws: str, payload: InvitationIn, idempotency_key: IdempotencyKey = None):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    if not settings.EMAIL_ENABLED:
        raise ApiError(409, "email_not_configured", "Email is not configured on this installation, so invitations cannot be sent.")

    def create():
        invitation, token = invitations.invitation_create(
            workspace=access.workspace, email=payload.email, role=Role(payload.role), actor=principal(request).actor, actor_role=access.role
        )
        invitations.invitation_send(
            invitation=invitation, accept_url=request.build_absolute_uri(reverse("invitation_open", kwargs={"token": token}))
        )
        return 201, invitation_out(invitation)

    return idempotent(request, create)


@router.delete(
    "/workspaces/{ws}/invitations/{invitation_id}",
    response={204: None, codes_4xx: ErrorOut},
    summary="Revoke an invitation",
    tags=["members"],
)
def delete_invitation(request, ws: str, invitation_id: UUID):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    found = Invitation.objects.filter(workspace=access.workspace, public_id=invitation_id).first()
    if found is None:
        raise Http404("No such invitation.")
    invitations.invitation_revoke(invitation=found, actor=principal(request).actor)
    return Status(204, None)


# ---- audit ---------------------------------------------------------------------------------------


class AuditEventOut(Schema):
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    target_label: str
    details: dict
    client_ip: str | None


class AuditEventList(Schema):
    data: list[AuditEventOut]
    next_cursor: str | None


class AuditFilters(Schema):
    action: str | None = None
    actor: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@router.get(
    "/workspaces/{ws}/audit-events",
    response={200: AuditEventList, codes_4xx: ErrorOut},
    summary="Read the audit log, newest first",
    tags=["audit"],
)
def list_audit_events(request, ws: str, filters: Query[AuditFilters], limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    events = AuditEvent.objects.filter(workspace=access.workspace)
    if filters.action:
        # "api_key" matches every api_key.* action; "api_key.created" exactly that one.
        events = events.filter(action=filters.action) if "." in filters.action else events.filter(action__startswith=f"{filters.action}.")
    if filters.actor:
        events = events.filter(actor_label=filters.actor)
    if filters.target_id:
        events = events.filter(target_id=filters.target_id)
    if filters.since:
        events = events.filter(created_at__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__lt=filters.until)
    rows, next_cursor = page_by_id(events, cursor=cursor, limit=limit, descending=True)
    data = [
        {
            "id": e.pk,
            "created_at": e.created_at,
            "actor": e.actor_label,
            "action": e.action,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "target_label": e.target_label,
            "details": e.details,
            "client_ip": e.client_ip,
        }
        for e in rows
    ]
    return {"data": data, "next_cursor": next_cursor}
