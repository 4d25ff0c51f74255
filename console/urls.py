from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from console import views

workspace_patterns = [
    path("", views.workspace_overview, name="workspace_overview"),
    path("settings/", views.workspace_settings, name="workspace_settings"),
    path("sub-workspaces/new/", views.sub_workspace_create, name="sub_workspace_create"),
    path("members/", views.members_page, name="members_page"),
    path("members/add/", views.member_add, name="member_add"),
    path("members/create/", views.member_create, name="member_create"),
    path("members/<uuid:member>/role/", views.member_role, name="member_role"),
    path("members/<uuid:member>/remove/", views.member_remove, name="member_remove"),
    path("audit/", views.audit_page, name="audit_page"),
    path("secrets/", include("keys.urls")),
    path("deployments/", include("deployments.urls")),
    path("", include("usage.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("accounts/password/", views.PasswordChangeView.as_view(), name="password_change"),
    path("w/<slug:ws>/", include(workspace_patterns)),
    path("installation/router-providers/", include("keys.router_provider_urls")),
    path("admin/", admin.site.urls),
]
