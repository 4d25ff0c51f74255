from __future__ import annotations

import csv
import io
from datetime import datetime

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from django.views.decorators.vary import vary_on_headers

from console.access import WorkspaceAccess, access_workspace
from keys.models import ApiKey, ApiKeyKind
from lib.redis import redis_client
from usage.charts import usage_charts
from usage.exports import write_flat_usage_csv, write_statement_csv, write_usage_csv
from usage.forms import MonthForm
from usage.reports import Filters, usage_dashboard_report, usage_filters
from usage.selectors import KeyLimit, UsageScope, billing_statement, key_limits, usage_flat_rows

# The htmx target a request swaps decides how much of the page it gets back.
FRAGMENTS = {"usage-results": "results", "usage-view": "view", "deployment-usage": "embedded"}


def _limited_keys(filters: Filters) -> list[ApiKey]:
    """The people-made, live keys the view covers (a key filter or a sub-workspace narrows it)."""
    scope = filters.scope
    keys = [k for k in filters.keys if k.kind == ApiKeyKind.USER and k.revoked_at is None]
    if scope.key_id is not None:
        return [k for k in keys if k.id == scope.key_id]
    if scope.sub is not None:
        return [k for k in keys if k.workspace_id == scope.sub.id]
    return keys


def _limits(filters: Filters, now: datetime) -> list[KeyLimit]:
    return key_limits(_limited_keys(filters), filters.zones, now=now, redis=redis_client() if settings.REDIS_URL else None)


@login_required
@require_GET
@vary_on_headers("HX-Request", "HX-Target")
def usage_page(request: HttpRequest, ws: str) -> HttpResponse:
    """The usage dashboard. htmx requests get the part they swap: the results (a filter changed), the
    filters and results (a sort or row link changed a filter), or the compact deployment tab."""
    access = access_workspace(request.user, ws)
    now = timezone.now()
    filters = usage_filters(request.GET, access, now)
    fragment = FRAGMENTS.get(request.htmx.target) if request.htmx else None
    context = {
        "access": access,
        "nav": "usage",
        "form": filters.form,
        "scope": filters.scope,
        "params": filters.params,
        "usage_url": reverse("usage_page", kwargs={"ws": access.workspace.slug}),
        "embedded": fragment == "embedded",
        "filter_labels": filters.labels,
    }
    if filters.scope is not None:
        report = usage_dashboard_report(access, filters, breakdowns=fragment != "embedded")
        context.update(report=report, charts=usage_charts(report))
        if fragment != "embedded":
            context["limits"] = _limits(filters, now)
    template = f"usage/usage_page.html#{fragment}" if fragment else "usage/usage_page.html"
    return render(request, template, context)


@login_required
@require_GET
def usage_export(request: HttpRequest, ws: str) -> HttpResponse:
    """The page's numbers as CSV: the same filters, sort, sections and totals as on screen."""
    access = access_workspace(request.user, ws)
    now = timezone.now()
    filters = usage_filters(request.GET, access, now)
    scope = filters.scope
    if scope is None:
        form = filters.form
        return HttpResponse("; ".join(e for errs in form.errors.values() for e in errs), status=400, content_type="text/plain")
    report = usage_dashboard_report(access, filters)
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{_file_name("usage", access, scope)}"'
    write_usage_csv(csv.writer(response), report, access.workspace, _limits(filters, now))
    return response


@login_required
@require_GET
def usage_flat_export(request: HttpRequest, ws: str) -> HttpResponse:
    """The page's usage as one flat table (day × workspace × key × deployment × API), same filters."""
    access = access_workspace(request.user, ws)
    filters = usage_filters(request.GET, access, timezone.now())
    scope = filters.scope
    if scope is None:
        form = filters.form
        return HttpResponse("; ".join(e for errs in form.errors.values() for e in errs), status=400, content_type="text/plain")
    # Written to one buffer: HttpResponse.write per row cost a fifth of the time on a year's rows.
    buffer = io.StringIO()
    write_flat_usage_csv(csv.writer(buffer), usage_flat_rows(scope), hourly=scope.hourly)
    response = HttpResponse(buffer.getvalue(), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{_file_name("usage-flat", access, scope)}"'
    return response


def _file_name(kind: str, access: WorkspaceAccess, scope: UsageScope) -> str:
    """Names the workspace the file holds (a sub-workspace filter, or the default's own usage) and the range."""
    ws = access.workspace
    if scope.sub is None:
        who = ws.slug
    else:
        who = f"{ws.slug}-own" if scope.sub.id == ws.id else scope.sub.slug
    span = "last-48-hours" if scope.hourly else f"{scope.start}-to-{scope.end}"
    return f"{kind}-{who}-{span}.csv"


def _month(request: HttpRequest, access: WorkspaceAccess) -> tuple[MonthForm, object]:
    form = MonthForm(request.GET)
    today = timezone.now().astimezone(access.workspace.tz).date()
    form.is_valid()  # a field that fails is left out of cleaned_data and shown as an error
    month = form.cleaned_data.get("month") or today.replace(day=1)
    return form, month


def _api(form: MonthForm) -> str | None:
    """The API the statement is filtered to (None: all APIs, also when the one asked for is unknown)."""
    return form.cleaned_data.get("endpoint") or None


@login_required
@require_GET
def billing_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, month = _month(request, access)
    statement = billing_statement(access.workspace, month, endpoint=_api(form))
    return render(request, "usage/billing_page.html", {"access": access, "nav": "billing", "form": form, "statement": statement})


@login_required
@require_GET
def billing_export(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, month = _month(request, access)
    if form.errors:
        raise Http404("No such month or API.")
    st = billing_statement(access.workspace, month, endpoint=_api(form))
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="statement-{access.workspace.slug}-{month:%Y-%m}.csv"'
    write_statement_csv(csv.writer(response), st)
    return response
