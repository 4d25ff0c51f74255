"""The access chokepoints: every workspace-scoped object in the console is fetched through here.

An outsider gets Http404, exactly as for a slug or id that does not exist, so the console never
reveals what exists elsewhere. A member whose role is too low gets PermissionDenied (403): they
can already see the workspace, so there is nothing to hide.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from allauth.account.internal.flows.login import get_authentication_records
from allauth.core.exceptions import ReauthenticationRequired
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import Http404

from console.models import ROLE_RANK, Membership, Role, Workspace


class MfaEnrolmentRequired(Exception):
    """The workspace tree requires a second factor and the user has none yet (the middleware sends them to enrolment)."""


@dataclass(frozen=True)
class WorkspaceAccess:
    workspace: Workspace
    role: Role
    user: object

    def can(self, min_role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[min_role]

    @property
    def can_write(self) -> bool:
        return self.can(Role.DEVELOPER)

    @property
    def can_admin(self) -> bool:
        return self.can(Role.ADMIN)


def effective_role(user, workspace: Workspace) -> Role | None:
    """The user's role in the workspace: their own membership, or owner/admin of its default workspace.

    An admin key (adminapi.services.AdminKeyPrincipal) stands in for a user in the admin API: it
    has its own role in its workspace and, for a default workspace, in its sub-workspaces.
    """
    if not user.is_authenticated:
        return None
    if getattr(user, "is_admin_key", False):
        return user.role_in(workspace)
    best: Role | None = None
    for workspace_id, role in Membership.objects.filter(user=user, workspace_id__in=workspace.lineage_ids).values_list(
        "workspace_id", "role"
    ):
        role = Role(role)
        if workspace_id != workspace.id and role not in (Role.OWNER, Role.ADMIN):
            continue  # developers and viewers of the default workspace do not see into sub-workspaces
        if workspace_id == workspace.id and workspace.archived_at is not None:
            continue  # an archived sub-workspace is kept for the default workspace's admins only
        if best is None or ROLE_RANK[role] > ROLE_RANK[best]:
            best = role
    return best


def access_workspace(user, slug: str, *, min_role: Role = Role.VIEWER) -> WorkspaceAccess:
    workspace = Workspace.objects.select_related("parent").filter(slug=slug).first()
    role = effective_role(user, workspace) if workspace is not None else None
    if role is None:
        raise Http404("No such workspace.")
    # The parent came with select_related: this costs a query only where MFA is required.
    # An admin key is a machine credential: the second factor guards people's sign-ins.
    if workspace.root.require_mfa and not getattr(user, "is_admin_key", False) and not user_has_mfa(user):
        raise MfaEnrolmentRequired(workspace.root.name)
    if workspace.archived_at is not None:
        # Read-only while archived: history and bills stay readable, nothing changes until unarchived.
        if ROLE_RANK[min_role] > ROLE_RANK[Role.VIEWER]:
            raise PermissionDenied(f"{workspace.name} is archived. Unarchive it from {workspace.root.name} to make changes.")
        role = Role.VIEWER
    access = WorkspaceAccess(workspace=workspace, role=role, user=user)
    if not access.can(min_role):
        raise PermissionDenied(f"This needs the {min_role.label.lower()} role or higher.")
    return access


def access_membership(user, slug: str, public_id, *, min_role: Role = Role.ADMIN) -> tuple[WorkspaceAccess, Membership]:
    access = access_workspace(user, slug, min_role=min_role)
    membership = Membership.objects.select_related("user").filter(workspace=access.workspace, public_id=public_id).first()
    if membership is None:
        raise Http404("No such member.")
    return access, membership


def user_has_mfa(user) -> bool:
    return Authenticator.objects.filter(user=user, type__in=[Authenticator.Type.TOTP, Authenticator.Type.WEBAUTHN]).exists()


def require_recent_authentication(request) -> None:
    """Sensitive changes (keys, roles, budgets) need a sign-in or re-authentication in the last few minutes.

    Called after the access check, so an outsider still gets 404. A recent sign-in counts as well as
    an explicit re-authentication (allauth's own check counts only the latter). allauth's middleware
    turns the exception into its re-authentication page and replays the POST afterwards.
    """
    if not signed_in_recently(request):
        raise ReauthenticationRequired()


def signed_in_recently(request) -> bool:
    records = get_authentication_records(request, request.user) if request.user.is_authenticated else []
    return bool(records) and time.time() - float(records[-1].get("at", 0)) < settings.ACCOUNT_REAUTHENTICATION_TIMEOUT
