from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from adminapi.api import admin_api_urls
from console import api_reference, audit_views, views

# The admin signs in through the console's sign-in (throttling, MFA), not through its own form.
admin.site.login = secure_admin_login(admin.site.login)

workspace_patterns = [
    path("", views.workspace_overview, name="workspace_overview"),
    path("settings/", views.workspace_settings, name="workspace_settings"),
    path("settings/mfa/", views.workspace_require_mfa, name="workspace_require_mfa"),
    path("settings/sso/", views.sso_mapping_add, name="sso_mapping_add"),
    path("settings/sso/<uuid:mapping>/remove/", views.sso_mapping_remove, name="sso_mapping_remove"),
    path("sub-workspaces/new/", views.sub_workspace_create, name="sub_workspace_create"),
    path("sub-workspaces/<slug:sub>/archive/", views.sub_workspace_set_archived, {"archived": True}, name="sub_workspace_archive"),
    path("sub-workspaces/<slug:sub>/unarchive/", views.sub_workspace_set_archived, {"archived": False}, name="sub_workspace_unarchive"),
    path("sub-workspaces/<slug:sub>/delete/", views.sub_workspace_delete, name="sub_workspace_delete"),
    path("members/", views.members_page, name="members_page"),
    path("members/invite/", views.invitation_create, name="invitation_create"),
    path("members/invitations/<uuid:invitation>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("members/create/", views.member_create, name="member_create"),
    path("members/<uuid:member>/role/", views.member_role, name="member_role"),
    path("members/<uuid:member>/remove/", views.member_remove, name="member_remove"),
    path("audit/", audit_views.audit_log_page, name="audit_page"),
    path("audit/export.csv", audit_views.audit_log_export, name="audit_export"),
    path("api-reference/", api_reference.api_reference_page, name="api_reference"),
    path("settings/admin-api/", include("adminapi.console_urls")),
    path("secrets/", include("keys.urls")),
    path("deployments/", include("deployments.urls")),
    path("", include("usage.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    # allauth's own change view, extended to end the one-time-password state; the old address redirects.
    path("accounts/password/change/", views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password/", RedirectView.as_view(pattern_name="password_change"), name="password_change_old"),
    path("accounts/theme/", views.theme_set, name="theme_set"),
    path("accounts/", include("allauth.urls")),
    path("invitations/accept/", views.invitation_accept, name="invitation_accept"),
    path("invitations/<str:token>/", views.invitation_open, name="invitation_open"),
    path("w/<slug:ws>/", include(workspace_patterns)),
    # The admin REST API (adminapi/): admin keys only, no cookies, no CSRF.
    path("api/admin/v1/", admin_api_urls()),
    path("installation/router-providers/", include("keys.router_provider_urls")),
    path("admin/", admin.site.urls),
]
