from __future__ import annotations

from datetime import datetime

from django.db.models import OuterRef, Q, QuerySet, Subquery

from console.models import Workspace
from deployments.models import Deployment, DeploymentPrice, DeploymentReplica, DeploymentStatus, UpstreamKind


def callable_deployments(workspace: Workspace) -> QuerySet[Deployment]:
    """Deployments this workspace may call: a default workspace every deployment of its
    organisation; a sub-workspace its own deployments and those granted to it."""
    if workspace.is_default:
        return Deployment.objects.filter(workspace.tree_q())
    return Deployment.objects.filter(Q(workspace=workspace) | Q(grants__workspace=workspace)).distinct()


def price_in_force(deployment: Deployment, at: datetime) -> DeploymentPrice | None:
    """The price version whose effective_from is the latest one not after `at` (None before the first)."""
    return DeploymentPrice.objects.filter(deployment=deployment, effective_from__lte=at).order_by("-effective_from").first()


def deployments_for_list(workspace: Workspace, *, now: datetime) -> QuerySet[Deployment]:
    """Each callable deployment with its current price, in one query (the list page adds today's
    requests from usage.selectors.requests_today to the same query)."""
    current = DeploymentPrice.objects.filter(deployment=OuterRef("pk"), effective_from__lte=now).order_by("-effective_from")
    return (
        callable_deployments(workspace)
        .select_related("workspace")
        .annotate(
            price_input=Subquery(current.values("input_per_million")[:1]),
            price_output=Subquery(current.values("output_per_million")[:1]),
            price_currency=Subquery(current.values("currency")[:1]),
        )
        .order_by("name", "pk")
    )


def sub_workspaces_for_grants(root: Workspace) -> list[Workspace]:
    return list(Workspace.objects.filter(parent=root).order_by("name"))


def unhealthy_deployments(workspace: Workspace, limit: int = 10) -> list[Deployment]:
    """Deployments this workspace may call that the health probe found unreachable or failed."""
    return list(
        callable_deployments(workspace)
        .filter(status__in=[DeploymentStatus.UNREACHABLE, DeploymentStatus.FAILED])
        .order_by("name", "pk")[:limit]
    )


def replicas_for_page(deployment):
    """The replicas of an endpoint deployment, in routing order (first = the one its upstream fields show)."""
    if deployment.upstream_kind != UpstreamKind.ENDPOINT:
        return []
    return list(DeploymentReplica.objects.filter(deployment=deployment).order_by("id"))
