"""The chokepoint for deployments in the console: every deployment a view touches comes from here."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from console.access import WorkspaceAccess, access_workspace
from console.models import ROLE_RANK, Role
from deployments.models import Deployment, DeploymentReplica
from deployments.selectors import callable_deployments


def access_deployment(user, ws_slug: str, public_id, *, min_role: Role = Role.VIEWER) -> tuple[WorkspaceAccess, Deployment]:
    """The deployment as seen from workspace `ws_slug`.

    It must be one this workspace may call (callable_deployments); anything else is a 404,
    exactly like an id that does not exist, so a sub-workspace cannot even learn that an
    ungranted deployment exists. With min_role admin or higher the caller is managing the
    deployment, which needs the deployment to belong to this workspace or one of its
    sub-workspaces: a sub-workspace admin may use a deployment granted from the default
    workspace but not reconfigure it (403, since they can see it).
    """
    access = access_workspace(user, ws_slug)
    deployment = (
        callable_deployments(access.workspace)
        .select_related("workspace", "workspace__parent", "router_provider", "byok_credential", "created_by")
        .filter(public_id=public_id)
        .first()
    )
    if deployment is None:
        raise Http404("No such deployment.")
    if not access.can(min_role):
        raise PermissionDenied(f"This needs the {min_role.label.lower()} role or higher.")
    if ROLE_RANK[min_role] >= ROLE_RANK[Role.ADMIN] and access.workspace.id not in (
        deployment.workspace_id,
        deployment.workspace.parent_id,
    ):
        raise PermissionDenied(f"This deployment is managed in {deployment.workspace.name}.")
    return access, deployment


def access_replica(user, ws_slug: str, deployment_id, replica_id, *, min_role: Role = Role.ADMIN):
    """A replica of a deployment the caller may manage; a replica of another deployment is a 404."""
    access, deployment = access_deployment(user, ws_slug, deployment_id, min_role=min_role)
    replica = DeploymentReplica.objects.filter(deployment=deployment, public_id=replica_id).first()
    if replica is None:
        raise Http404("No such replica.")
    replica.deployment = deployment
    return access, deployment, replica


def require_grants_workspace(access: WorkspaceAccess) -> None:
    """Model permissions (grants to sub-workspaces) are managed from the default workspace only."""
    if not access.workspace.is_default:
        raise PermissionDenied("Model permissions are managed in the default workspace.")


def access_deployment_grants(user, ws_slug: str, public_id) -> tuple[WorkspaceAccess, Deployment]:
    """A deployment whose grants the caller may manage: an admin of the default workspace."""
    access, deployment = access_deployment(user, ws_slug, public_id, min_role=Role.ADMIN)
    require_grants_workspace(access)
    return access, deployment
