from __future__ import annotations

from django.db.models import Q, QuerySet

from console.models import Workspace
from deployments.models import Deployment


def callable_deployments(workspace: Workspace) -> QuerySet[Deployment]:
    """Deployments this workspace may call: a default workspace every deployment of its
    organisation; a sub-workspace its own deployments and those granted to it."""
    if workspace.parent_id is None:
        return Deployment.objects.filter(Q(workspace=workspace) | Q(workspace__parent=workspace))
    return Deployment.objects.filter(Q(workspace=workspace) | Q(grants__workspace=workspace)).distinct()
