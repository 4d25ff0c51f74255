from __future__ import annotations

import csv

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from console.access import WorkspaceAccess, access_workspace
from console.models import Workspace
from deployments.models import Deployment
from keys.models import ApiKey
from usage.charts import bar_chart
from usage.forms import MonthForm, UsageFilterForm
from usage.selectors import UsageScope, billing_statement, usage_report


def _filters(request: HttpRequest, access: WorkspaceAccess) -> tuple[UsageFilterForm, UsageScope | None]:
    ws = access.workspace
    subs = list(Workspace.objects.filter(parent=ws)) if ws.is_default else []
    tree = [ws.id] + [s.id for s in subs]
    keys = list(ApiKey.objects.filter(workspace_id__in=tree).order_by("name"))
    deployments = list(Deployment.objects.filter(workspace_id=ws.root_id).order_by("name"))
    form = UsageFilterForm(request.GET, today=timezone.now().astimezone(ws.tz).date(), workspaces=subs, keys=keys,
                           deployments=deployments)
    if not form.is_valid():
        return form, None
    data = form.cleaned_data
    by_slug = {s.slug: s for s in subs}
    by_key = {str(k.public_id): k.id for k in keys}
    by_dep = {str(d.public_id): d.id for d in deployments}
    scope = UsageScope(workspace=ws, start=data["start"], end=data["end"], sub=by_slug.get(data["workspace"]),
                       key_id=by_key.get(data["key"]), deployment_id=by_dep.get(data["deployment"]), tree=tree)
    return form, scope


@login_required
@require_GET
def usage_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, scope = _filters(request, access)
    context = {"access": access, "nav": "usage", "form": form, "scope": scope, "query": request.GET.urlencode()}
    if scope is not None:
        report = usage_report(scope, with_workspaces=access.workspace.is_default and scope.sub is None)
        context["report"] = report
        context["charts"] = [
            bar_chart(report.days, "requests", title="Requests per day", unit="requests"),
            bar_chart(report.days, "total_tokens", title="Tokens per day", unit="tokens"),
            bar_chart(report.days, "cost", title="Cost per day", unit=", ".join(report.currencies) or "USD", value_key="cost"),
        ]
    template = "usage/usage_page.html#results" if request.htmx else "usage/usage_page.html"
    return render(request, template, context)


@login_required
@require_GET
def usage_export(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, scope = _filters(request, access)
    if scope is None:
        return HttpResponse("; ".join(e for errs in form.errors.values() for e in errs), status=400, content_type="text/plain")
    report = usage_report(scope, with_workspaces=False, with_breakdowns=False)
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="usage-{access.workspace.slug}-{scope.start}-{scope.end}.csv"'
    writer = csv.writer(response)
    writer.writerow(["day", "requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "cost", "currency"])
    currency = ", ".join(report.currencies) or "USD"
    for d in report.days:
        writer.writerow([d["day"].isoformat(), d["requests"], d["errors"], d["prompt_tokens"], d["completion_tokens"],
                         d["total_tokens"], d["cost"], currency])
    t = report.totals
    writer.writerow(["total", t["requests"], t["errors"], t["prompt_tokens"], t["completion_tokens"], t["total_tokens"],
                     t["cost_cents"], currency])
    return response


def _month(request: HttpRequest, access: WorkspaceAccess) -> tuple[MonthForm, object]:
    form = MonthForm(request.GET)
    today = timezone.now().astimezone(access.workspace.tz).date()
    month = (form.cleaned_data["month"] if form.is_valid() else None) or today.replace(day=1)
    return form, month


@login_required
@require_GET
def billing_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, month = _month(request, access)
    statement = billing_statement(access.workspace, month)
    return render(request, "usage/billing_page.html", {"access": access, "nav": "billing", "form": form, "statement": statement})


@login_required
@require_GET
def billing_export(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, month = _month(request, access)
    if form.errors:
        raise Http404("No such month.")
    st = billing_statement(access.workspace, month)
    response = HttpResponse(content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="statement-{access.workspace.slug}-{month:%Y-%m}.csv"'
    writer = csv.writer(response)
    writer.writerow(["workspace", "deployment", "requests", "input_tokens", "output_tokens", "cost", "currency"])
    for section in st.sections:
        for item in section.items:
            writer.writerow([section.slug, item["label"], item["requests"], item["prompt_tokens"], item["completion_tokens"],
                             item["cost_cents"], item["currency"]])
        writer.writerow([section.slug, "subtotal", "", "", "", section.total, st.currency])
    writer.writerow(["total", "", "", st.prompt_tokens, st.completion_tokens, st.total, st.currency])
    return response
