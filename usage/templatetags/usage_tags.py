from __future__ import annotations

from django import template
from django.db.models import Q

from usage.models import UsageDrift

register = template.Library()


@register.inclusion_tag("usage/drift_banner.html")
def usage_drift_banner(access) -> dict:
    """Open reconciliation drifts for admins: this workspace's, and its sub-workspaces' on a default one."""
    if access is None or not access.can_admin:
        return {"drifts": []}
    workspace = access.workspace
    scope = Q(workspace=workspace) | Q(workspace__parent=workspace) if workspace.is_default else Q(workspace=workspace)
    drifts = list(UsageDrift.objects.filter(scope, resolved_at__isnull=True).select_related("workspace").order_by("day", "workspace__name")[:6])
    return {"drifts": drifts[:5], "more": len(drifts) > 5}
