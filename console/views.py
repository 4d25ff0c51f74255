from __future__ import annotations

from allauth.account.views import PasswordChangeView as AllauthPasswordChangeView
from allauth.socialaccount.adapter import get_adapter
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console import invitations
from console.access import WorkspaceAccess, access_membership, access_workspace, require_recent_authentication, user_has_mfa
from console.audit import Actor
from console.forms import (
    InvitationForm,
    MemberCreateForm,
    MemberRoleForm,
    RequireMfaForm,
    SsoMappingForm,
    ThemeForm,
    WorkspaceForm,
    WorkspaceSettingsForm,
)
from console.models import Invitation, Role, SsoGroupMapping, Workspace
from console.services import (
    assignable_roles,
    member_create_with_one_time_password,
    membership_change_role,
    membership_remove,
    sub_workspaces_of,
    user_set_theme,
    workspace_archive,
    workspace_create,
    workspace_delete,
    workspace_set_require_mfa,
    workspace_unarchive,
    workspace_update,
)
from console.sso import sso_mapping_create, sso_mapping_delete


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
        "children": sub_workspaces_of(workspace) if workspace.is_default else [],
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


def _access_sub_workspace(request: HttpRequest, ws: str, sub: str) -> tuple[WorkspaceAccess, Workspace]:
    """A sub-workspace, managed from its default workspace by that workspace's admins."""
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    child = access.workspace.children.filter(slug=sub).first() if access.workspace.is_default else None
    if child is None:
        raise Http404("No such sub-workspace.")
    require_recent_authentication(request)
    return access, child


@login_required
@require_POST
def sub_workspace_set_archived(request: HttpRequest, ws: str, sub: str, *, archived: bool) -> HttpResponse:
    """Archive (archived=True) or unarchive a sub-workspace: two URLs, one view."""
    _, child = _access_sub_workspace(request, ws, sub)
    if archived:
        workspace_archive(workspace=child, actor=Actor.from_request(request))
        messages.success(
            request, f"{child.name} is archived: its keys are refused from now on, and its usage, bills and audit log stay here."
        )
    else:
        workspace_unarchive(workspace=child, actor=Actor.from_request(request))
        messages.success(request, f"{child.name} is active again: its keys work and its members see it.")
    return redirect("workspace_overview", ws=ws)


@login_required
@require_POST
def sub_workspace_delete(request: HttpRequest, ws: str, sub: str) -> HttpResponse:
    _, child = _access_sub_workspace(request, ws, sub)
    try:
        workspace_delete(workspace=child, actor=Actor.from_request(request))
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"{child.name} was deleted with its members and keys.")
    return redirect("workspace_overview", ws=ws)


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
    return render(request, "console/settings_page.html", _settings_context(access, form=form))


def _settings_context(access, *, form=None, sso_form=None) -> dict:
    workspace = access.workspace
    return {
        "access": access,
        "nav": "settings",
        "form": form or WorkspaceSettingsForm(initial={"name": workspace.name, "time_zone": workspace.time_zone}),
        "sso_form": sso_form or SsoMappingForm(roles=assignable_roles(access.role)),
        "sso_mappings": list(workspace.sso_mappings.all()),
        "sso_configured": bool(settings.SOCIALACCOUNT_PROVIDERS),
        "mfa_form": RequireMfaForm(initial={"require_mfa": workspace.require_mfa}),
    }


@login_required
@require_POST
def workspace_require_mfa(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.OWNER)
    require_recent_authentication(request)
    form = RequireMfaForm(request.POST)
    if not access.workspace.is_default:
        messages.error(request, "Two-factor authentication is required from the default workspace, for its whole tree.")
    elif form.is_valid():
        try:
            workspace_set_require_mfa(
                workspace=access.workspace,
                require=form.cleaned_data["require_mfa"],
                actor=Actor.from_request(request),
                actor_has_mfa=user_has_mfa(request.user),
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(
                request,
                "Two-factor authentication is now required for every member."
                if access.workspace.require_mfa
                else "Two-factor authentication is no longer required.",
            )
    return redirect("workspace_settings", ws=ws)


@login_required
@require_POST
def sso_mapping_add(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    require_recent_authentication(request)
    form = SsoMappingForm(request.POST, roles=assignable_roles(access.role))
    if form.is_valid():
        try:
            mapping = sso_mapping_create(
                workspace=access.workspace, actor=Actor.from_request(request), actor_role=access.role, **form.cleaned_data
            )
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            messages.success(
                request, f"Members of the group “{mapping.group}” become {mapping.get_role_display().lower()}s at their next SSO sign-in."
            )
            return redirect("workspace_settings", ws=ws)
    return render(request, "console/settings_page.html", _settings_context(access, sso_form=form), status=400)


@login_required
@require_POST
def sso_mapping_remove(request: HttpRequest, ws: str, mapping: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    found = SsoGroupMapping.objects.filter(workspace=access.workspace, public_id=mapping).first()
    if found is None:
        raise Http404("No such mapping.")
    if found.role == Role.OWNER and access.role != Role.OWNER:
        messages.error(request, "Only an owner can remove a mapping to the owner role.")
    else:
        sso_mapping_delete(mapping=found, actor=Actor.from_request(request))
        messages.success(request, f"The group “{found.group}” is no longer mapped.")
    return redirect("workspace_settings", ws=ws)


def _members_context(access, *, invite_form=None, create_form=None) -> dict:
    roles = assignable_roles(access.role)
    memberships = list(access.workspace.memberships.select_related("user"))
    owner_count = sum(1 for m in memberships if m.role == Role.OWNER)
    pending = [i for i in access.workspace.invitations.filter(accepted_at=None, revoked_at=None) if invitations.invitation_is_open(i)]
    return {
        "access": access,
        "nav": "members",
        "memberships": memberships,
        "owner_count": owner_count,
        "roles": roles,
        "inherited_from": access.workspace.parent,
        "pending_invitations": pending if access.can_admin else [],
        "invite_form": invite_form or InvitationForm(roles=roles),
        "create_form": create_form or MemberCreateForm(roles=roles),
    }


@login_required
@require_GET
def members_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    return render(request, "console/members_page.html", _members_context(access))


@login_required
@require_POST
def invitation_create(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    require_recent_authentication(request)
    form = InvitationForm(request.POST, roles=assignable_roles(access.role))
    if not settings.EMAIL_ENABLED:
        form.add_error(None, "Email is not configured on this installation. Create the account with a one-time password instead.")
    elif form.is_valid():
        try:
            invitation, token = invitations.invitation_create(
                workspace=access.workspace, actor=Actor.from_request(request), actor_role=access.role, **form.cleaned_data
            )
        except ValidationError as exc:
            _add_service_errors(form, exc)
        else:
            accept_url = request.build_absolute_uri(reverse("invitation_open", kwargs={"token": token}))
            invitations.invitation_send(invitation=invitation, accept_url=accept_url)
            messages.success(
                request, f"Invitation sent to {invitation.email}. They join as {invitation.get_role_display().lower()} once they accept."
            )
            return redirect("members_page", ws=ws)
    return render(request, "console/members_page.html", _members_context(access, invite_form=form), status=400)


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, ws: str, invitation: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    found = Invitation.objects.filter(workspace=access.workspace, public_id=invitation).first()
    if found is None:
        raise Http404("No such invitation.")
    invitations.invitation_revoke(invitation=found, actor=Actor.from_request(request))
    messages.success(request, f"The invitation for {found.email} was revoked.")
    return redirect("members_page", ws=ws)


@require_GET
@never_cache
def invitation_open(request: HttpRequest, token: str) -> HttpResponse:
    """The emailed link: remember the invitation in the session, then continue on a URL without the token."""
    invitation = invitations.invitation_for_token(token)
    if invitation is None:
        return render(request, "console/invitation_page.html", {"invitation": None}, status=404)
    request.session[invitations.SESSION_KEY] = str(invitation.public_id)
    return redirect("invitation_accept")


@require_http_methods(["GET", "POST"])
@never_cache
def invitation_accept(request: HttpRequest) -> HttpResponse:
    invitation = invitations.pending_invitation_from_session(request)
    if invitation is None:
        return render(request, "console/invitation_page.html", {"invitation": None}, status=404)
    if request.method == "POST":
        if not request.user.is_authenticated:
            return redirect(f"{reverse('account_login')}?next={reverse('invitation_accept')}")
        if request.POST.get("decision") == "decline":
            request.session.pop(invitations.SESSION_KEY, None)
            messages.info(request, f"You declined the invitation to {invitation.workspace.name}.")
            return redirect("home")
        try:
            membership = invitations.invitation_accept(invitation=invitation, user=request.user, actor=Actor.from_request(request))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return redirect("home")
        request.session.pop(invitations.SESSION_KEY, None)
        messages.success(request, f"Welcome to {membership.workspace.name}. You are a {membership.get_role_display().lower()} here.")
        return redirect("workspace_overview", ws=membership.workspace.slug)
    context = {
        "invitation": invitation,
        "next": reverse("invitation_accept"),
        "sso_providers": _sso_providers(request),
    }
    return render(request, "console/invitation_page.html", context)


def _sso_providers(request: HttpRequest) -> list:
    return get_adapter().list_providers(request)


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
    require_recent_authentication(request)
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
@require_POST
def theme_set(request: HttpRequest) -> HttpResponse:
    """The theme toggle: htmx gets 204 (the page already switched its colours), a plain form goes back."""
    form = ThemeForm(request.POST)
    if not form.is_valid():
        return HttpResponse("Choose light, dark or system.", status=400, content_type="text/plain")
    user_set_theme(user=request.user, theme=form.cleaned_data["theme"])
    if request.htmx:
        return HttpResponse(status=204)
    # Back to the page the toggle was on (no address in the form: error pages must not echo theirs).
    back = request.headers.get("Referer", "")
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        back = reverse("home")
    return redirect(back)


class PasswordChangeView(AllauthPasswordChangeView):
    """allauth's password change, which also ends the one-time-password state of an account."""

    success_url = reverse_lazy("home")

    def form_valid(self, form):
        response = super().form_valid(form)
        user = form.user
        if user.must_change_password:
            user.must_change_password = False
            user.save(update_fields=["must_change_password"])
        return response
