"""The usage dashboard's filters and report: one reading of the query string and one report for
the page, its CSV exports (usage.views) and the admin API's usage endpoint (adminapi), so each
shows exactly the same numbers for the same filters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from console.access import WorkspaceAccess
from console.models import Workspace
from deployments.models import Deployment
from keys.models import ApiKey
from usage.forms import UsageFilterForm
from usage.selectors import UsageReport, UsageScope, usage_report

FILTER_FIELDS = ("range", "start", "end", "workspace", "key", "deployment", "endpoint", "sort")


@dataclass
class Filters:
    form: UsageFilterForm
    scope: UsageScope | None
    keys: list[ApiKey]
    zones: dict[int, ZoneInfo]
    params: dict[str, str]  # the filters in effect, for links that change one of them
    labels: list[str] = field(default_factory=list)  # the same, as a person reads them


def usage_filters(query: Mapping[str, str], access: WorkspaceAccess, now: datetime) -> Filters:
    """The dashboard's filters read from a query string (the page's GET, the admin API's query):
    the validated form and, when it is valid, the UsageScope it picks. An invalid form gives a
    scope of None; its errors are on the form."""
    ws = access.workspace
    subs = list(Workspace.objects.filter(parent=ws)) if ws.is_default else []
    tree = [ws.id] + [s.id for s in subs]
    keys = list(ApiKey.objects.filter(workspace_id__in=tree).order_by("name"))
    deployments = list(Deployment.objects.filter(workspace_id=ws.root_id).order_by("name"))
    form = UsageFilterForm(
        query, today=now.astimezone(ws.tz).date(), workspaces=subs, keys=keys, deployments=deployments, own=ws if subs else None
    )
    zones = {w.id: w.tz for w in [ws, *subs]}
    params = {name: query[name] for name in FILTER_FIELDS if query.get(name)}
    if not form.is_valid():
        return Filters(form, None, keys, zones, params)
    data = form.cleaned_data
    # The default workspace's own slug picks its own usage, without its sub-workspaces'.
    by_slug = {s.slug: s for s in subs} | ({ws.slug: ws} if subs else {})
    by_key = {str(k.public_id): k.id for k in keys}
    by_dep = {str(d.public_id): d.id for d in deployments}
    filters = {
        "sub": by_slug.get(data["workspace"]),
        "key_id": by_key.get(data["key"]),
        "deployment_id": by_dep.get(data["deployment"]),
        "endpoint": data["endpoint"] or None,
    }
    if "sort" in params:
        params["sort"] = data["sort"]  # an unknown sort was replaced by the default; links carry that
    labels = [
        f"{form.fields[name].label or name.capitalize()}: {dict(form.fields[name].choices)[data[name]]}"
        for name in ("workspace", "key", "deployment", "endpoint")
        if data[name]
    ]
    if data["range"] == "48h":
        scope = UsageScope.last_48_hours(ws, now, **filters)
        for name in ("start", "end"):
            params.pop(name, None)
    else:
        # The latest local day any workspace in view can have usage for: a range ending on or
        # after it holds the current month's days so far, which UsageMonthly answers in one row.
        latest = max(now.astimezone(tz).date() for tz in zones.values())
        scope = UsageScope(workspace=ws, start=data["start"], end=data["end"], latest_day=latest, tree_ids=tuple(tree), **filters)
    return Filters(form, scope, keys, zones, params, labels)


def usage_dashboard_report(access: WorkspaceAccess, filters: Filters, *, breakdowns: bool = True) -> UsageReport:
    """The report the dashboard shows for valid filters (its CSV and the admin API read the same)."""
    scope = filters.scope
    return usage_report(
        scope,
        with_workspaces=access.workspace.is_default and scope.sub is None,
        sort=filters.form.cleaned_data["sort"],
        breakdowns=breakdowns,
    )
