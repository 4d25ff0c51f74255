from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.cache import add_never_cache_headers
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseStopPolling

from console.access import WorkspaceAccess, access_workspace
from console.audit import Actor
from console.models import Role
from deployments.access import access_deployment, access_deployment_grants, access_replica, require_grants_workspace
from deployments.console_calls import create_test_call, expire_test_call_if_unclaimed, recent_test_calls
from deployments.examples import API_KEY_ENV, render_examples, target_for
from deployments.forms import DeploymentCreateForm, DeploymentForm, GrantsForm, ImportServerForm, PriceForm, ReplicaForm, TestCallForm
from deployments.imports import default_model_id, deployments_import, import_offers, server_models
from deployments.live import replica_figures
from deployments.models import Deployment, DeploymentPrice, ModelGrant, TestCall
from deployments.selectors import (
    callable_deployments,
    deployments_for_list,
    price_in_force,
    replicas_for_page,
    sub_workspaces_for_grants,
    unhealthy_deployments,
)
from deployments.services import (
    deployment_create,
    deployment_price_set,
    deployment_settings,
    deployment_start,
    deployment_stop,
    deployment_update,
    model_grants_set,
    replica_add,
    replica_remove,
    replica_settings,
    replica_update,
    workspace_queue_priority_set,
)
from keys.tokens import is_well_formed
from lib.crypto import decrypt, encrypt
from lib.upstream import upstream_host
from usage.selectors import replica_last_hour, requests_today

TABS = (("overview", "Overview"), ("api", "API call"), ("examples", "Code Examples"), ("test", "Test call"), ("usage", "Usage"))
TAB_IDS = {t for t, _ in TABS}


def _add_service_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


@login_required
@require_GET
def deployments_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    now = timezone.now()
    deployments = list(deployments_for_list(access.workspace, now=now).annotate(requests_today=requests_today(access.workspace, now)))
    return render(
        request,
        "deployments/deployments_page.html",
        {
            "access": access,
            "nav": "deployments",
            "deployments": deployments,
            "manageable_ids": {
                d.id for d in deployments if access.can_admin and access.workspace.id in (d.workspace_id, d.workspace.parent_id)
            },
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def deployment_create_view(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    form = DeploymentCreateForm(request.POST or None, workspace=access.workspace)
    if request.method == "POST" and form.is_valid():
        try:
            deployment = deployment_create(workspace=access.workspace, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Deployment “{deployment.name}” created. Clients call it as “{deployment.model_id}”.")
            return redirect("deployment_detail", ws=ws, deployment=deployment.public_id)
    status = 400 if request.method == "POST" else 200
    return render(request, "deployments/deployment_form_page.html", {"access": access, "nav": "deployments", "form": form}, status=status)


@login_required
@sensitive_post_parameters("api_key", "sealed_key")
@require_http_methods(["GET", "POST"])
def deployments_import_view(request: HttpRequest, ws: str) -> HttpResponse:
    """Import from server: POST without `models` reads the server's list and offers what to do
    with each model; POST with `models` imports the ticked ones. The key travels between the two
    steps encrypted (`sealed_key`), never in clear in the page."""
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    form = ImportServerForm(request.POST or None)
    context = {"access": access, "nav": "deployments", "form": form}
    if request.method == "POST" and form.is_valid():
        api_key = form.cleaned_data["api_key"].strip()
        if not api_key and request.POST.get("sealed_key"):
            try:
                api_key = decrypt(request.POST["sealed_key"])
            except ValueError:
                api_key = ""
        try:
            base_url, models = server_models(base_url=form.cleaned_data["base_url"], api_key=api_key)
            chosen = request.POST.getlist("models")
            if chosen:
                unknown = [m for m in chosen if m not in models]
                if unknown:
                    raise ValidationError(f"The server no longer lists {', '.join(unknown)}.")
                done = deployments_import(
                    workspace=access.workspace, actor=Actor.from_request(request), base_url=base_url, api_key=api_key, models=chosen
                )
                messages.success(
                    request, "Imported from " + upstream_host(base_url) + ": " + "; ".join(f"{m} ({what})" for m, _, what in done) + "."
                )
                return redirect("deployments_page", ws=ws)
            context.update(
                base_url=base_url,
                offers=import_offers(workspace=access.workspace, base_url=base_url, models=models),
                sealed_key=encrypt(api_key) if api_key else "",
                default_ids={m: default_model_id(access.workspace, m) for m in models},
            )
            if api_key:
                kept = "The key you entered is kept (encrypted) for the import: leave this empty."
                form.fields["api_key"].help_text = form["api_key"].help_text = kept
        except ValidationError as exc:
            _add_service_errors(form, exc)
    status = 400 if request.method == "POST" and form.errors else 200
    return render(request, "deployments/import_page.html", context, status=status)


def _edit_context(access, deployment: Deployment, *, form=None, price_form=None) -> dict:
    initial = deployment_settings(deployment)
    current = price_in_force(deployment, timezone.now())
    return {
        "access": access,
        "nav": "deployments",
        "deployment": deployment,
        "form": form
        or DeploymentForm(
            initial=initial, workspace=deployment.workspace, editing=True, key_last4=deployment.upstream_api_key_last4, own_pk=deployment.pk
        ),
        "price_form": price_form
        or PriceForm(
            initial={
                "input_per_million": current.input_per_million.normalize() if current else 0,
                "output_per_million": current.output_per_million.normalize() if current else 0,
                "currency": current.currency if current else "USD",
            }
        ),
        "prices": list(DeploymentPrice.objects.filter(deployment=deployment).select_related("created_by")),
        "current_price": current,
    }


@login_required
@require_http_methods(["GET", "POST"])
def deployment_edit(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    access, dep = access_deployment(request.user, ws, deployment, min_role=Role.ADMIN)
    if request.method == "GET":
        return render(request, "deployments/deployment_edit_page.html", _edit_context(access, dep))
    form = DeploymentForm(request.POST, workspace=dep.workspace, editing=True, key_last4=dep.upstream_api_key_last4, own_pk=dep.pk)
    if form.is_valid():
        try:
            deployment_update(deployment=dep, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, "Deployment saved.")
            return redirect("deployment_detail", ws=ws, deployment=dep.public_id)
    return render(request, "deployments/deployment_edit_page.html", _edit_context(access, dep, form=form), status=400)


@login_required
@require_POST
def deployment_price(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    access, dep = access_deployment(request.user, ws, deployment, min_role=Role.ADMIN)
    form = PriceForm(request.POST)
    # A datetime-local value means wall-clock time in the workspace's time zone.
    with timezone.override(access.workspace.tz):
        valid = form.is_valid()
    if valid:
        try:
            price = deployment_price_set(deployment=dep, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(
                request,
                f"Price in force from {timezone.localtime(price.effective_from, access.workspace.tz):%Y-%m-%d %H:%M %Z}: "
                f"{price.input_per_million.normalize():f} in / {price.output_per_million.normalize():f} out "
                f"{price.currency} per 1M tokens.",
            )
            return redirect("deployment_edit", ws=ws, deployment=dep.public_id)
    return render(request, "deployments/deployment_edit_page.html", _edit_context(access, dep, price_form=form), status=400)


@login_required
@require_POST
def deployment_stop_view(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    _, dep = access_deployment(request.user, ws, deployment, min_role=Role.ADMIN)
    deployment_stop(deployment=dep, actor=Actor.from_request(request))
    messages.success(request, f"“{dep.name}” stopped. Calls to {dep.model_id} are refused until it is started again.")
    return redirect("deployment_detail", ws=ws, deployment=dep.public_id)


@login_required
@require_POST
def deployment_start_view(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    _, dep = access_deployment(request.user, ws, deployment, min_role=Role.ADMIN)
    deployment_start(deployment=dep, actor=Actor.from_request(request))
    messages.success(request, f"“{dep.name}” is running.")
    return redirect("deployment_detail", ws=ws, deployment=dep.public_id)


@login_required
@sensitive_post_parameters("api_key")
@require_POST
def replica_add_view(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    access, dep = access_deployment(request.user, ws, deployment, min_role=Role.ADMIN)
    form = ReplicaForm(request.POST)
    if form.is_valid():
        try:
            replica = replica_add(deployment=dep, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Replica {replica} added to {dep.name}; it gets traffic in proportion to its weight.")
            return redirect("deployment_detail", ws=ws, deployment=dep.public_id)
    return render(
        request, "deployments/replica_page.html", {"access": access, "nav": "deployments", "deployment": dep, "form": form}, status=400
    )


@login_required
@sensitive_post_parameters("api_key")
@require_http_methods(["GET", "POST"])
def replica_edit_view(request: HttpRequest, ws: str, deployment: str, replica: str) -> HttpResponse:
    access, dep, rep = access_replica(request.user, ws, deployment, replica)
    if request.method == "GET":
        form = ReplicaForm(initial=replica_settings(rep), editing=True, key_last4=rep.api_key_last4)
    else:
        form = ReplicaForm(request.POST, editing=True, key_last4=rep.api_key_last4)
        if form.is_valid():
            try:
                replica_update(replica=rep, actor=Actor.from_request(request), **form.cleaned_data)
            except ValidationError as exc:
                _add_service_errors(form, exc)
            else:
                messages.success(request, f"Replica {rep} saved.")
                return redirect("deployment_detail", ws=ws, deployment=dep.public_id)
    context = {"access": access, "nav": "deployments", "deployment": dep, "replica": rep, "form": form}
    return render(request, "deployments/replica_page.html", context, status=400 if request.method == "POST" else 200)


@login_required
@require_POST
def replica_remove_view(request: HttpRequest, ws: str, deployment: str, replica: str) -> HttpResponse:
    _, dep, rep = access_replica(request.user, ws, deployment, replica)
    try:
        replica_remove(replica=rep, actor=Actor.from_request(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Replica {rep} removed from {dep.name}.")
    return redirect("deployment_detail", ws=ws, deployment=dep.public_id)


def _tab(request: HttpRequest) -> str:
    tab = request.GET.get("tab", "overview")
    return tab if tab in TAB_IDS else "overview"


@login_required
@sensitive_post_parameters("api_key")  # error reports and debug pages never show the key
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request", "HX-History-Restore-Request")
def deployment_detail(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    """The details page. GET ?tab=... picks a tab (htmx swaps just the panel).

    POST with `api_key` (from the Secrets page, right after a key was created; optional `lang`
    picks the language shown first) renders the Code Examples with that key written in, for this
    response only: never stored, logged or put in a URL.
    """
    access, dep = access_deployment(request.user, ws, deployment)
    tab = _tab(request)
    api_key: str | None = None
    key_error = ""
    if request.method == "POST":
        tab = "examples"
        candidate = request.POST.get("api_key", "").strip()
        if is_well_formed(candidate):
            api_key = candidate
        else:
            key_error = "That is not a Gatehouse API key, so the examples read it from the environment instead."
    target = target_for(deployment=dep, workspace=access.workspace, api_key=api_key)
    context = {
        "access": access,
        "nav": "deployments",
        "deployment": dep,
        "tab": tab,
        "tabs": TABS,
        "can_manage": access.can_admin and access.workspace.id in (dep.workspace_id, dep.workspace.parent_id),
        "upstream_host": upstream_host(dep.upstream_base_url) if dep.upstream_base_url else "",
        "replicas": replicas_for_page(dep) if tab == "overview" else [],
        "show_live": bool(settings.REDIS_URL),
        "replica_form": ReplicaForm(),
        "current_price": price_in_force(dep, timezone.now()),
        "target": target,
        "key_env": API_KEY_ENV,
        "key_in_examples": api_key is not None,
        "key_error": key_error,
        "lang": request.POST.get("lang") or request.GET.get("lang") or "python",
    }
    if context["replicas"]:
        figures = replica_figures(context["replicas"], last_hour=replica_last_hour([r.id for r in context["replicas"]]))
        for replica in context["replicas"]:
            replica.figures = figures[replica.id]
    if tab == "examples":
        context["examples"] = render_examples(target)
        if context["lang"] not in {e.id for e in context["examples"]}:
            context["lang"] = context["examples"][0].id
    elif tab == "api":
        context["api_examples"] = render_examples(target, group="api")
    elif tab == "test":
        context["test_form"] = TestCallForm(initial={"stream": True})
        context["can_test"] = access.can(Role.DEVELOPER)
        context["test_calls"] = recent_test_calls(dep, access.workspace)
    # A history restore (Back after htmx's snapshot cache was emptied) wants the whole page.
    panel_only = request.htmx and not request.htmx.history_restore_request and request.method == "GET"
    template = "deployments/deployment_page.html#tab_panel" if panel_only else "deployments/deployment_page.html"
    response = render(request, template, context, status=200 if not key_error else 400)
    if request.method == "POST":
        add_never_cache_headers(response)  # adds Cache-Control: no-store: the page may hold a key
    return response


@login_required
@require_GET
def grants_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    require_grants_workspace(access)
    return render(request, "deployments/grants_page.html", _grants_context(access))


def _grants_context(access: WorkspaceAccess, *, errors: dict | None = None) -> dict:
    subs = sub_workspaces_for_grants(access.workspace)
    deployments = list(callable_deployments(access.workspace).select_related("workspace").order_by("name", "pk"))
    granted: dict[int, set[int]] = {}
    for deployment_id, workspace_id in ModelGrant.objects.filter(deployment__in=deployments).values_list("deployment_id", "workspace_id"):
        granted.setdefault(deployment_id, set()).add(workspace_id)
    rows = [
        {
            "deployment": d,
            "cells": [{"workspace": w, "granted": w.id in granted.get(d.id, set()), "owner": w.id == d.workspace_id} for w in subs],
        }
        for d in deployments
    ]
    return {"access": access, "nav": "deployments", "subs": subs, "rows": rows, "errors": errors or {}}


@login_required
@require_POST
def grants_save(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    """Set the sub-workspaces that may call one deployment (POST field `workspaces`: sub-workspace slugs)."""
    access, dep = access_deployment_grants(request.user, ws, deployment)
    candidates = access.workspace.children.exclude(pk=dep.workspace_id)
    form = GrantsForm(request.POST, candidates=candidates)
    if not form.is_valid():
        return render(
            request, "deployments/grants_page.html", _grants_context(access, errors={dep.id: form.errors["workspaces"]}), status=400
        )
    added, removed = model_grants_set(
        deployment=dep, workspaces=form.cleaned_data["workspaces"], candidates=candidates, actor=Actor.from_request(request)
    )
    if added or removed:
        parts = ([f"granted to {', '.join(w.name for w in added)}"] if added else []) + (
            [f"withdrawn from {', '.join(w.name for w in removed)}"] if removed else []
        )
        messages.success(request, f"{dep.model_id}: {'; '.join(parts)}.")
    else:
        messages.info(request, f"{dep.model_id}: no change.")
    return redirect("grants_page", ws=ws)


@login_required
@require_POST
def queue_priority_save(request: HttpRequest, ws: str) -> HttpResponse:
    """The organisation sets each sub-workspace's queue priority (POST `priority-<slug>` fields)."""
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    if not access.workspace.is_default:
        raise PermissionDenied("Queue priorities are set in the default workspace.")
    actor, changed, problems = Actor.from_request(request), [], []
    for sub in sub_workspaces_for_grants(access.workspace):
        raw = request.POST.get(f"priority-{sub.slug}")
        if raw is None:
            continue
        try:
            before = sub.queue_priority
            if workspace_queue_priority_set(workspace=sub, actor=actor, priority=raw).queue_priority != before:
                changed.append(f"{sub.name} {raw}")
        except ValidationError as exc:
            problems.append(f"{sub.name}: {' '.join(exc.messages)}")
    if problems:
        messages.error(request, "Not saved — " + "; ".join(problems))
    elif changed:
        messages.success(request, "Queue priority: " + ", ".join(changed) + ".")
    else:
        messages.info(request, "Queue priorities: no change.")
    return redirect("grants_page", ws=ws)


def _test_call_or_404(deployment: Deployment, workspace, public_id) -> TestCall:
    call = TestCall.objects.filter(deployment=deployment, workspace=workspace, public_id=public_id).first()
    if call is None:
        raise Http404("No such test call.")
    return call


def _result_context(request: HttpRequest, access, deployment: Deployment, call: TestCall) -> dict:
    """A new call's card, and each poll of it. When the call is new or has just finished, htmx also
    gets the history table (swapped out of band), so it lists the call without a reload."""
    context = {"access": access, "deployment": deployment, "call": call, "test_calls": None}
    if request.htmx and (call.finished or request.method == "POST"):
        context["test_calls"] = recent_test_calls(deployment, access.workspace)
    return context


@login_required
@require_POST
def test_call_run_view(request: HttpRequest, ws: str, deployment: str) -> HttpResponse:
    access, dep = access_deployment(request.user, ws, deployment, min_role=Role.DEVELOPER)
    form = TestCallForm(request.POST)
    if form.is_valid():
        d = form.cleaned_data
        try:
            call = create_test_call(
                deployment=dep,
                workspace=access.workspace,
                actor=Actor.from_request(request),
                prompt=d["prompt"],
                system_prompt=d["system_prompt"],
                temperature=d["temperature"],
                max_tokens=d["max_tokens"],
                stream=d["stream"],
            )
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            return render(request, "deployments/test_call_result.html", _result_context(request, access, dep, call))
    response = render(
        request, "deployments/test_call_form.html", {"access": access, "deployment": dep, "form": form}, status=200 if request.htmx else 400
    )
    if request.htmx:  # htmx does not swap error statuses: put the form with its errors back in place
        response["HX-Retarget"], response["HX-Reswap"] = "#test-call-form", "outerHTML"
    return response


@login_required
@require_GET
def test_call_poll(request: HttpRequest, ws: str, deployment: str, call: str) -> HttpResponse:
    access, dep = access_deployment(request.user, ws, deployment)
    test_call = expire_test_call_if_unclaimed(_test_call_or_404(dep, access.workspace, call))
    response = render(request, "deployments/test_call_result.html", _result_context(request, access, dep, test_call))
    if test_call.finished and request.htmx:
        response.status_code = HttpResponseStopPolling.status_code
    return response


@login_required
@require_GET
def deployments_overview_panel(request: HttpRequest, ws: str) -> HttpResponse:
    """The overview page's health panel (loaded with htmx): deployments unreachable or failed."""
    access = access_workspace(request.user, ws)
    unhealthy = unhealthy_deployments(access.workspace)
    context = {
        "access": access,
        "unhealthy": unhealthy,
        "any_deployment": bool(unhealthy) or callable_deployments(access.workspace).exists(),
    }
    return render(request, "deployments/overview_panel.html", context)
