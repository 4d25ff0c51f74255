"""Console pages for the admin API: the workspace's admin keys and the API reference."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from adminapi import services
from adminapi.forms import AdminKeyCreateForm, AdminKeyRotateForm
from adminapi.models import AdminKey
from adminapi.reference import api_reference
from console.access import WorkspaceAccess, access_workspace, require_recent_authentication
from console.audit import Actor
from console.models import Role

# The rotate control sits in a table row: short labels for the same choices as the key page's.
GRACE_SHORT_LABELS = {"none": "No grace", "1h": "Old works 1 h", "24h": "Old works 24 h", "7d": "Old works 7 days"}


def _access_admin_key(user, ws: str, public_id) -> tuple[WorkspaceAccess, AdminKey]:
    access = access_workspace(user, ws, min_role=Role.ADMIN)
    admin_key = AdminKey.objects.filter(workspace=access.workspace, public_id=public_id).first()
    if admin_key is None:
        raise Http404("No such admin key.")
    return access, admin_key


def _page(request: HttpRequest, access: WorkspaceAccess, form: AdminKeyCreateForm, status: int = 200) -> HttpResponse:
    context = {
        "access": access,
        "nav": "settings",
        "form": form,
        "grace_choices": GRACE_SHORT_LABELS.items(),
        "admin_keys": list(access.workspace.admin_keys.all()),
    }
    return render(request, "adminapi/admin_keys_page.html", context, status=status)


def _secret_page(request: HttpRequest, access: WorkspaceAccess, admin_key: AdminKey, plaintext: str, *, rotated: bool) -> HttpResponse:
    context = {"access": access, "nav": "settings", "admin_key": admin_key, "key": plaintext, "rotated": rotated}
    return render(request, "adminapi/admin_key_secret_page.html", context)


@login_required
@require_http_methods(["GET", "POST"])
@never_cache
@sensitive_variables("plaintext")
def admin_keys_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    if request.method == "GET":
        return _page(request, access, AdminKeyCreateForm())
    require_recent_authentication(request)
    form = AdminKeyCreateForm(request.POST)
    if form.is_valid():
        try:
            admin_key, plaintext = services.admin_key_create(
                workspace=access.workspace, actor=Actor.from_request(request), **form.cleaned_data
            )
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            return _secret_page(request, access, admin_key, plaintext, rotated=False)
    return _page(request, access, form, status=400)


@login_required
@require_POST
@never_cache
@sensitive_variables("plaintext")
def admin_key_rotate(request: HttpRequest, ws: str, key) -> HttpResponse:
    access, admin_key = _access_admin_key(request.user, ws, key)
    require_recent_authentication(request)
    form = AdminKeyRotateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a grace period from the list.")
        return redirect("admin_keys_page", ws=ws)
    try:
        plaintext = services.admin_key_rotate(admin_key=admin_key, actor=Actor.from_request(request), grace=form.grace_delta)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("admin_keys_page", ws=ws)
    return _secret_page(request, access, admin_key, plaintext, rotated=True)


@login_required
@require_POST
def admin_key_revoke(request: HttpRequest, ws: str, key) -> HttpResponse:
    _, admin_key = _access_admin_key(request.user, ws, key)
    if admin_key.revoked_at is None:
        services.admin_key_revoke(admin_key=admin_key, actor=Actor.from_request(request))
        messages.success(request, f"Revoked the admin key “{admin_key.name}”. Calls with it are refused from now on.")
    return redirect("admin_keys_page", ws=ws)


@login_required
@require_GET
def api_reference_page(request: HttpRequest, ws: str) -> HttpResponse:
    """The admin API's reference, rendered on the server from the same OpenAPI schema the API
    serves (no Swagger UI: its scripts would need a CDN and inline code the CSP refuses)."""
    access = access_workspace(request.user, ws)
    return render(request, "adminapi/reference_page.html", {"access": access, "nav": "settings", "reference": api_reference()})
