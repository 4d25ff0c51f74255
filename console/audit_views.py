"""The audit log pages: filtered, searched and paged by cursor, and its CSV (console.audit_log)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from console.access import access_workspace
from console.audit_log import FILTER_FIELDS, AuditFilterForm, Cursor, audit_csv_rows, audit_page, filter_choices, filtered_events


def _filters(request: HttpRequest, workspace) -> tuple[AuditFilterForm, dict[str, str]]:
    actors, actions = filter_choices(workspace)
    form = AuditFilterForm(request.GET, actors=actors, actions=actions)
    params = {name: request.GET[name] for name in FILTER_FIELDS if request.GET.get(name)}
    return form, params


@login_required
@require_GET
def audit_log_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, params = _filters(request, access.workspace)
    if form.is_valid():
        events = filtered_events(access.workspace, form.cleaned_data)
        after, before = Cursor.decode(request.GET.get("after", "")), Cursor.decode(request.GET.get("before", ""))
        page = audit_page(events, after=after, before=before if after is None else None)
    else:
        page = None
    query = urlencode(params)
    context = {
        "access": access,
        "nav": "audit",
        "form": form,
        "page": page,
        "filtered": bool(params),
        "query": query,
        "highlight": request.GET.get("event", ""),
    }
    return render(request, "console/audit_page.html", context, status=200 if page is not None else 400)


@login_required
@require_GET
def audit_log_export(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    form, params = _filters(request, access.workspace)
    if not form.is_valid():
        return HttpResponse(
            "Fix the filters first: " + "; ".join(m for ms in form.errors.values() for m in ms), status=400, content_type="text/plain"
        )
    events = filtered_events(access.workspace, form.cleaned_data)
    response = StreamingHttpResponse(audit_csv_rows(events), content_type="text/csv; charset=utf-8")
    suffix = "-filtered" if params else ""
    stamp = timezone.now().astimezone(access.workspace.tz).strftime("%Y-%m-%d")
    response["Content-Disposition"] = f'attachment; filename="audit-{access.workspace.slug}{suffix}-{stamp}.csv"'
    return response
