from __future__ import annotations

from datetime import datetime, time

from django.db.models import Count, IntegerField, OuterRef, Q, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from console.models import Workspace
from deployments.models import Deployment, DeploymentPrice, DeploymentReplica, UpstreamKind


def callable_deployments(workspace: Workspace) -> QuerySet[Deployment]:
    """Deployments this workspace may call: a default workspace every deployment of its
    organisation; a sub-workspace its own deployments and those granted to it."""
    if workspace.is_default:
        return Deployment.objects.filter(workspace.tree_q())
    return Deployment.objects.filter(Q(workspace=workspace) | Q(grants__workspace=workspace)).distinct()


def price_in_force(deployment: Deployment, at: datetime) -> DeploymentPrice | None:
    """The price version whose effective_from is the latest one not after `at` (None before the first)."""
    return DeploymentPrice.objects.filter(deployment=deployment, effective_from__lte=at).order_by("-effective_from").first()


def start_of_today(workspace: Workspace, now: datetime | None = None) -> datetime:
    """Midnight of the current day in the workspace's time zone (days are counted there)."""
    local = timezone.localtime(now or timezone.now(), workspace.tz)
    return datetime.combine(local.date(), time.min, tzinfo=workspace.tz)


def deployments_for_list(workspace: Workspace, *, now: datetime | None = None) -> QuerySet[Deployment]:
    """The list page in one query: each callable deployment with its current price and today's requests.

    A default workspace counts requests from its whole organisation; a sub-workspace only its own,
    so one team never sees another team's traffic.
    """
    from usage.models import UsageEvent

    now = now or timezone.now()
    current = DeploymentPrice.objects.filter(deployment=OuterRef("pk"), effective_from__lte=now).order_by("-effective_from")
    events = UsageEvent.objects.filter(deployment=OuterRef("pk"), created_at__gte=start_of_today(workspace, now), created_at__lte=now)
    events = events.filter(workspace.tree_q())
    requests_today = events.order_by().values("deployment").annotate(n=Count("pk")).values("n")
    return (
        callable_deployments(workspace)
        .select_related("workspace")
        .annotate(
            price_input=Subquery(current.values("input_per_million")[:1]),
            price_output=Subquery(current.values("output_per_million")[:1]),
            price_currency=Subquery(current.values("currency")[:1]),
            requests_today=Coalesce(Subquery(requests_today, output_field=IntegerField()), Value(0)),
        )
        .order_by("name", "pk")
    )


def sub_workspaces_for_grants(root: Workspace) -> list[Workspace]:
    return list(Workspace.objects.filter(parent=root).order_by("name"))


def unhealthy_deployments(workspace: Workspace, limit: int = 10) -> list[Deployment]:
    """Deployments this workspace may call that the health probe found unreachable or failed."""
    from deployments.models import DeploymentStatus

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
