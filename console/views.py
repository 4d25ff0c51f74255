from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.access import access_membership, access_workspace
from console.audit import Actor
from console.forms import MemberAddForm, MemberCreateForm, MemberRoleForm, WorkspaceForm, WorkspaceSettingsForm
from console.models import AuditEvent, Role, Workspace
from console.services import (
    assignable_roles,
    member_create_with_one_time_password,
    membership_add,
    membership_change_role,
    membership_remove,
    workspace_create,
    workspace_update,
)


def _add_service_errors(form, exc: ValidationError) -> None:
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            form.add_error(field if field in form.fields else None, errors)
    else:
        form.add_error(None, exc.messages)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    # Default workspaces first (NULL parent sorts last in PostgreSQL unless asked), then by name.
    workspace = Workspace.objects.visible_to(request.user).order_by(F("parent_id").asc(nulls_first=True), "name").first()
    if workspace is None:
        return render(request, "console/no_workspace_page.html")
    return redirect("workspace_overview", ws=workspace.slug)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    # Under ASGI, console/asgi.py answers /healthz and /readyz before Django; this serves WSGI.
    return HttpResponse("ok", content_type="text/plain")


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: Django's own renders 403_csrf.html without the request, so the page would
    lose the signed-in shell and the CSP nonce its script needs."""
    return render(request, "403_csrf.html", {"reason": reason}, status=403)


@login_required
@require_GET
def workspace_overview(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    workspace = access.workspace
    context = {
        "access": access,
        "member_count": workspace.memberships.count(),
        "children": list(workspace.children.all()) if workspace.is_default else [],
        "recent_events": list(workspace.audit_events.all()[:5]),
        "nav": "overview",
    }
    return render(request, "console/overview_page.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def sub_workspace_create(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    if not access.workspace.is_default:
        raise PermissionDenied("Sub-workspaces are created from the default workspace.")
    form = WorkspaceForm(request.POST or None, initial={"time_zone": access.workspace.time_zone})
    if request.method == "POST" and form.is_valid():
        try:
            child = workspace_create(parent=access.workspace, actor=Actor.from_request(request), **form.cleaned_data)
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"Sub-workspace “{child.name}” created. Add its members next.")
            return redirect("members_page", ws=child.slug)
    return render(request, "console/sub_workspace_create_page.html", {"access": access, "form": form, "nav": "overview"})


@login_required
@require_http_methods(["GET", "POST"])
def workspace_settings(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    workspace = access.workspace
    form = WorkspaceSettingsForm(request.POST or None, initial={"name": workspace.name, "time_zone": workspace.time_zone})
    if request.method == "POST" and form.is_valid():
        workspace_update(workspace=workspace, actor=Actor.from_request(request), **form.cleaned_data)
        messages.success(request, "Settings saved.")
        return redirect("workspace_settings", ws=workspace.slug)
    return render(request, "console/settings_page.html", {"access": access, "form": form, "nav": "settings"})


def _members_context(access, *, add_form=None, create_form=None) -> dict:
    roles = assignable_roles(access.role)
    memberships = list(access.workspace.memberships.select_related("user"))
    owner_count = sum(1 for m in memberships if m.role == Role.OWNER)
    return {
        "access": access,
        "nav": "members",
        "memberships": memberships,
        "owner_count": owner_count,
        "roles": roles,
        "inherited_from": access.workspace.parent,
        "add_form": add_form or MemberAddForm(roles=roles),
        "create_form": create_form or MemberCreateForm(roles=roles),
    }


@login_required
@require_GET
def members_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    return render(request, "console/members_page.html", _members_context(access))


@login_required
@require_POST
def member_add(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    form = MemberAddForm(request.POST, roles=assignable_roles(access.role))
    if form.is_valid():
        try:
            membership = membership_add(
                workspace=access.workspace,
                user=form.cleaned_data["user"],
                role=form.cleaned_data["role"],
                actor=Actor.from_request(request),
                actor_role=access.role,
            )
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(request, f"{membership.user.get_username()} added as {membership.get_role_display().lower()}.")
            return redirect("members_page", ws=ws)
    return render(request, "console/members_page.html", _members_context(access, add_form=form), status=400)


@login_required
@require_POST
@never_cache
def member_create(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    form = MemberCreateForm(request.POST, roles=assignable_roles(access.role))
    if form.is_valid():
        membership, password = member_create_with_one_time_password(
            workspace=access.workspace, actor=Actor.from_request(request), actor_role=access.role, **form.cleaned_data
        )
        # The one-time password is rendered into this response only; it is never stored in plaintext.
        return render(
            request,
            "console/member_created_page.html",
            {"access": access, "nav": "members", "membership": membership, "password": password},
        )
    return render(request, "console/members_page.html", _members_context(access, create_form=form), status=400)


@login_required
@require_POST
def member_role(request: HttpRequest, ws: str, member: str) -> HttpResponse:
    access, membership = access_membership(request.user, ws, member)
    form = MemberRoleForm(request.POST, roles=list(Role))
    if form.is_valid():
        try:
            membership_change_role(
                membership=membership, role=form.cleaned_data["role"], actor=Actor.from_request(request), actor_role=access.role
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"{membership.user.get_username()} is now {membership.get_role_display().lower()}.")
    else:
        messages.error(request, "Choose one of the listed roles.")
    return redirect("members_page", ws=ws)


@login_required
@require_POST
def member_remove(request: HttpRequest, ws: str, member: str) -> HttpResponse:
    access, membership = access_membership(request.user, ws, member)
    try:
        membership_remove(membership=membership, actor=Actor.from_request(request), actor_role=access.role)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{membership.user.get_username()} removed from {access.workspace.name}.")
    return redirect("members_page", ws=ws)


@login_required
@require_GET
def audit_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    events = AuditEvent.objects.filter(workspace=access.workspace).select_related("actor")
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "console/audit_page.html", {"access": access, "nav": "audit", "page": page})


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "registration/password_change_page.html"
    success_url = reverse_lazy("home")

    def form_valid(self, form):
        response = super().form_valid(form)
        user = form.user
        if user.must_change_password:
            user.must_change_password = False
            user.save(update_fields=["must_change_password"])
        messages.success(self.request, "Password changed.")
        return response
