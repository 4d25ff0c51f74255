"""Secrets pages: application access keys and BYOK credentials.

Every view: access check → form → service → render or redirect. A new secret is shown by
Post/Redirect/Get, so reloading the page never creates or rotates again: the POST keeps the secret,
encrypted (lib.crypto), in the creator's session and redirects to api_key_secret, which removes
it from the session as it renders it (never cached: `never_cache` sets Cache-Control: no-store).
The secret is never in a URL and never in the database in plaintext; a reload finds it gone.
"""

from __future__ import annotations

import time
from datetime import datetime

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from console.access import WorkspaceAccess, access_workspace, require_recent_authentication
from console.audit import Actor
from console.models import AuditEvent, Role, Workspace
from deployments.selectors import callable_deployments
from keys import selectors, services
from keys.access import access_api_key, access_byok_credential
from keys.forms import (
    ApiKeyCreateForm,
    ApiKeyRotateForm,
    ApiKeySettingsForm,
    ByokCredentialEditForm,
    ByokCredentialForm,
    KeyFilterForm,
)
from keys.models import ApiKey
from keys.router_providers import router_providers_granted_to
from lib.crypto import decrypt, encrypt
from usage.selectors import api_key_refusals, tokens_used_in_year, year_window

PAGE_SIZE = 50


def _key_rows(workspace: Workspace, api_keys: list[ApiKey], now: datetime) -> list[selectors.KeyRow]:
    year = now.astimezone(workspace.tz).year
    used = tokens_used_in_year({k.id: (workspace.tz, year) for k in api_keys})
    return selectors.key_rows(workspace, api_keys, now, used_this_year=used)


EXAMPLE_LINKS = 4


def _add_service_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


def _page(request: HttpRequest, access: WorkspaceAccess, template: str, context: dict, *, status: int = 200) -> HttpResponse:
    context = {"access": access, "nav": "secrets", **context}
    return render(request, template, context, status=status)


# ---- application access keys ------------------------------------------------------------------


@login_required
@require_GET
@vary_on_headers("HX-Request", "HX-History-Restore-Request")
def secrets_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    workspace, now = access.workspace, timezone.now()
    form = KeyFilterForm(request.GET if ("status" in request.GET or "q" in request.GET) else None)
    valid = form.is_valid() if form.is_bound else True
    status = form.cleaned_data.get("status", "") if form.is_bound and valid else ""
    search = form.cleaned_data.get("q", "") if form.is_bound and valid else ""
    keys = selectors.api_key_list(workspace, now=now, status=status or None, search=search)
    page = Paginator(keys, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "filter_form": form,
        "status": status,
        "search": search,
        "page": page,
        "rows": _key_rows(workspace, list(page.object_list), now),
        "counts": selectors.status_counts(workspace, now),
        "statuses": selectors.KeyStatus,
        "tab": "keys",
    }
    # Back after htmx's snapshot cache was emptied asks for the whole page (history restore).
    list_only = request.htmx and not request.htmx.boosted and not request.htmx.history_restore_request
    template = "keys/secrets_page.html#key_list" if list_only else "keys/secrets_page.html"
    with timezone.override(workspace.tz):
        return _page(request, access, template, context, status=200 if valid else 400)


def _example_links(api_key: ApiKey) -> list[tuple[object, str]]:
    """Deployments whose Code Examples the new key can be carried to, each with its details URL.

    The key itself travels as the POST field `api_key` to that URL (the deployments page renders
    its examples with it for that response only), never in the URL.
    """
    deployments = callable_deployments(api_key.workspace) if api_key.all_models else api_key.deployments.all()
    ws = api_key.workspace.slug
    return [
        (d, reverse("deployment_detail", kwargs={"ws": ws, "deployment": d.public_id}) + "?tab=examples")
        for d in deployments.order_by("name")[:EXAMPLE_LINKS]
    ]


@sensitive_variables("key")
def _secret_page(request: HttpRequest, access: WorkspaceAccess, api_key: ApiKey, key: str, *, rotated: bool) -> HttpResponse:
    now = timezone.now()
    grace_until = (
        api_key.secrets.filter(valid_until__gt=now).order_by("-valid_until").values_list("valid_until", flat=True).first()
        if rotated
        else None
    )
    context = {
        "api_key": api_key,
        "key": key,
        "rotated": rotated,
        "grace_until": grace_until,
        "scope": selectors.scope_summary(api_key),
        "example_links": _example_links(api_key),
    }
    with timezone.override(access.workspace.tz):
        return _page(request, access, "keys/api_key_secret_page.html", context)


ONE_TIME_SECRET = "keys.one_time_secret"
ONE_TIME_SECRET_SECONDS = 600  # a secret nobody came to read is dropped, not shown hours later


@sensitive_variables("key")
def _show_once(request: HttpRequest, access: WorkspaceAccess, api_key: ApiKey, key: str, *, rotated: bool) -> HttpResponse:
    """Hand a new secret to the GET that shows it (Post/Redirect/Get); one pending secret per session."""
    request.session[ONE_TIME_SECRET] = {"key": str(api_key.public_id), "secret": encrypt(key), "rotated": rotated, "at": time.time()}
    return redirect("api_key_secret", ws=access.workspace.slug, key=api_key.public_id)


@sensitive_variables("pending")
@login_required
@require_GET
@never_cache
def api_key_secret(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    """The one-time view of a new secret: taken out of the session as it is shown, so a reload finds it gone."""
    access, api_key = access_api_key(request.user, ws, key)
    pending = request.session.get(ONE_TIME_SECRET)
    if pending is None or pending.get("key") != str(api_key.public_id):
        messages.info(
            request, f"The secret of “{api_key.name}” was shown once and cannot be shown again. If you did not copy it, rotate the key."
        )
        return redirect("api_key_detail", ws=ws, key=api_key.public_id)
    del request.session[ONE_TIME_SECRET]
    if time.time() - pending["at"] > ONE_TIME_SECRET_SECONDS:
        messages.info(
            request, f"The secret of “{api_key.name}” was not opened within 10 minutes and is gone. Rotate the key for a new one."
        )
        return redirect("api_key_detail", ws=ws, key=api_key.public_id)
    return _secret_page(request, access, api_key, decrypt(pending["secret"]), rotated=pending["rotated"])


@sensitive_variables("key")
@login_required
@require_http_methods(["GET", "POST"])
@never_cache
def api_key_create(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.DEVELOPER)
    if request.method == "POST":
        require_recent_authentication(request)
    workspace = access.workspace
    with timezone.override(workspace.tz):
        form = ApiKeyCreateForm(
            request.POST or None, workspace=workspace, validate_url=reverse("api_key_validate", kwargs={"ws": workspace.slug})
        )
        if request.method == "POST" and form.is_valid():
            try:
                api_key, key = services.api_key_create(workspace=workspace, actor=Actor.from_request(request), **form.service_kwargs())
            except ValidationError as exc:
                _add_service_errors(form, exc)
            else:
                return _show_once(request, access, api_key, key, rotated=False)
        return _page(
            request,
            access,
            "keys/api_key_form_page.html",
            {"form": form, "creating": True},
            status=400 if request.method == "POST" else 200,
        )


def _feedback(request: HttpRequest, form: ApiKeySettingsForm) -> HttpResponse:
    """The inline check of one field as the user types: the field's errors, or what will be saved."""
    name = request.headers.get("HX-Trigger-Name", "")
    if name not in form.fields:
        return HttpResponseBadRequest("Unknown field.")
    form.is_valid()
    value = form.cleaned_data.get(name) if name not in form.errors else None
    return render(request, "keys/api_key_form_page.html#feedback", {"field": form[name], "value": value, "checked": True})


@login_required
@require_POST
def api_key_validate(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.DEVELOPER)
    with timezone.override(access.workspace.tz):
        return _feedback(request, ApiKeyCreateForm(request.POST, workspace=access.workspace))


@login_required
@require_GET
def api_key_detail(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    access, api_key = access_api_key(request.user, ws, key)
    now = timezone.now()
    row = _key_rows(access.workspace, [api_key], now)[0]
    context = {
        "row": row,
        "api_key": api_key,
        "secrets": [(s, selectors.secret_is_valid(s, now)) for s in api_key.secrets.select_related("api_key").all()[:10]],
        "events": AuditEvent.objects.filter(workspace=access.workspace, target_type="apikey", target_id=str(api_key.public_id))[:20],
        "rotate_form": ApiKeyRotateForm(initial={"expected_hint": api_key.hint}),
        "year_start": year_window(access.workspace.tz, now.astimezone(access.workspace.tz).year)[0],
        "refusals": api_key_refusals(api_key, now),
    }
    with timezone.override(access.workspace.tz):
        return _page(request, access, "keys/api_key_detail_page.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def api_key_edit(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    access, api_key = access_api_key(request.user, ws, key, min_role=Role.DEVELOPER)
    if api_key.revoked_at is not None:
        messages.error(request, "This key is revoked and can no longer be changed.")
        return redirect("api_key_detail", ws=ws, key=api_key.public_id)
    with timezone.override(access.workspace.tz):
        form = ApiKeySettingsForm(
            request.POST or None,
            workspace=access.workspace,
            initial=ApiKeySettingsForm.initial_for(api_key),
            validate_url=reverse("api_key_edit_validate", kwargs={"ws": ws, "key": api_key.public_id}),
        )
        if request.method == "POST" and form.is_valid():
            try:
                services.api_key_update(api_key=api_key, actor=Actor.from_request(request), **form.service_kwargs())
            except ValidationError as exc:
                _add_service_errors(form, exc)
            else:
                messages.success(request, f"Saved the settings of “{api_key.name}”.")
                return redirect("api_key_detail", ws=ws, key=api_key.public_id)
        return _page(
            request,
            access,
            "keys/api_key_form_page.html",
            {"form": form, "api_key": api_key, "creating": False},
            status=400 if request.method == "POST" else 200,
        )


@login_required
@require_POST
def api_key_edit_validate(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    access, api_key = access_api_key(request.user, ws, key, min_role=Role.DEVELOPER)
    with timezone.override(access.workspace.tz):
        form = ApiKeySettingsForm(request.POST, workspace=access.workspace, initial=ApiKeySettingsForm.initial_for(api_key))
        return _feedback(request, form)


@sensitive_variables("plaintext")
@login_required
@require_POST
@never_cache
def api_key_rotate(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    access, api_key = access_api_key(request.user, ws, key, min_role=Role.DEVELOPER)
    require_recent_authentication(request)
    form = ApiKeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a grace period from the list.")
        return redirect("api_key_detail", ws=ws, key=api_key.public_id)
    try:
        plaintext = services.api_key_rotate(
            api_key=api_key, actor=Actor.from_request(request), grace=form.grace_delta, expected_hint=form.cleaned_data["expected_hint"]
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("api_key_detail", ws=ws, key=api_key.public_id)
    return _show_once(request, access, api_key, plaintext, rotated=True)


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, ws: str, key: str) -> HttpResponse:
    access, api_key = access_api_key(request.user, ws, key, min_role=Role.DEVELOPER)
    if set(request.POST) - {"csrfmiddlewaretoken"}:
        return HttpResponseBadRequest("Revoking takes no fields.")
    already = api_key.revoked_at is not None
    services.api_key_revoke(api_key=api_key, actor=Actor.from_request(request))
    if not already:
        messages.success(request, f"Revoked “{api_key.name}”. Requests with it are refused from now on.")
    return redirect("api_key_detail", ws=ws, key=api_key.public_id)


# ---- BYOK credentials --------------------------------------------------------------------------


@login_required
@require_GET
def byok_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    context = {
        "credentials": list(access.workspace.byok_credentials.select_related("created_by")),
        "router_providers": list(router_providers_granted_to(access.workspace)),
        "tab": "byok",
    }
    with timezone.override(access.workspace.tz):
        return _page(request, access, "keys/byok_page.html", context)


@sensitive_post_parameters("api_key")
@login_required
@require_http_methods(["GET", "POST"])
def byok_create(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    form = ByokCredentialForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            credential = services.byok_credential_create(workspace=access.workspace, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Saved the BYOK credential “{credential.name}” (key …{credential.api_key_last4}).")
            return redirect("byok_page", ws=ws)
    return _page(
        request, access, "keys/byok_form_page.html", {"form": form, "creating": True}, status=400 if request.method == "POST" else 200
    )


@sensitive_post_parameters("api_key")
@login_required
@require_http_methods(["GET", "POST"])
def byok_edit(request: HttpRequest, ws: str, credential: str) -> HttpResponse:
    access, cred = access_byok_credential(request.user, ws, credential)
    initial = {"provider": cred.provider, "base_url": cred.base_url, "model_names": "\n".join(cred.model_names)}
    form = ByokCredentialEditForm(request.POST or None, initial=initial, last4=cred.api_key_last4)
    if request.method == "POST" and form.is_valid():
        try:
            services.byok_credential_update(credential=cred, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Saved the BYOK credential “{cred.name}”.")
            return redirect("byok_page", ws=ws)
    return _page(
        request,
        access,
        "keys/byok_form_page.html",
        {"form": form, "credential": cred, "creating": False},
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_POST
def byok_delete(request: HttpRequest, ws: str, credential: str) -> HttpResponse:
    access, cred = access_byok_credential(request.user, ws, credential)
    try:
        services.byok_credential_delete(credential=cred, actor=Actor.from_request(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Deleted the BYOK credential “{cred.name}”.")
    return redirect("byok_page", ws=ws)


@login_required
@require_GET
def keys_overview_panel(request: HttpRequest, ws: str) -> HttpResponse:
    """The overview page's keys panel (loaded with htmx): keys expiring within 14 days."""
    access = access_workspace(request.user, ws)
    keys = selectors.keys_expiring_within(access.workspace, timezone.now())
    return render(request, "keys/overview_panel.html", {"access": access, "keys": keys, "days": selectors.OVERVIEW_EXPIRY_WINDOW.days})
