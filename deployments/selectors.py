from __future__ import annotations

from datetime import datetime

from django.db.models import DateTimeField, OuterRef, Prefetch, Q, QuerySet, Subquery, Value

from console.models import Workspace
from deployments.models import Deployment, DeploymentPrice, DeploymentReplica, DeploymentStatus, UpstreamKind


def callable_deployments(workspace: Workspace) -> QuerySet[Deployment]:
    """Deployments this workspace may call: a default workspace every deployment of its
    organisation; a sub-workspace its own deployments and those granted to it."""
    if workspace.is_default:
        return Deployment.objects.filter(workspace.tree_q())
    return Deployment.objects.filter(Q(workspace=workspace) | Q(grants__workspace=workspace)).distinct()


def _prices_in_force(at: datetime) -> QuerySet[DeploymentPrice]:
    """Price versions already in force at `at`, the one in force first (the latest effective_from)."""
    return DeploymentPrice.objects.filter(effective_from__lte=at).order_by("-effective_from")


def price_in_force(deployment: Deployment, at: datetime) -> DeploymentPrice | None:
    """The price version whose effective_from is the latest one not after `at` (None before the first).
    A deployment from with_prices_in_force(…, at) answers from its prefetch, without a query; asked
    for another moment, it queries."""
    if getattr(deployment, "prices_in_force_at", None) == at:
        return deployment.prices_in_force[0] if deployment.prices_in_force else None
    return _prices_in_force(at).filter(deployment=deployment).first()


def with_prices_in_force(deployments: QuerySet[Deployment], at: datetime) -> QuerySet[Deployment]:
    """The deployments with the price versions in force at `at` prefetched (one query for a whole
    page), so price_in_force(deployment, at) asks nothing more."""
    return deployments.annotate(prices_in_force_at=Value(at, output_field=DateTimeField())).prefetch_related(
        Prefetch("prices", queryset=_prices_in_force(at), to_attr="prices_in_force")
    )


def deployments_for_list(workspace: Workspace, *, now: datetime) -> QuerySet[Deployment]:
    """Each callable deployment with its current price, in one query (the list page adds today's
    requests from usage.selectors.requests_today to the same query)."""
    current = _prices_in_force(now).filter(deployment=OuterRef("pk"))
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
