from django.urls import path

from keys import views

urlpatterns = [
    path("", views.secrets_page, name="secrets_page"),
    path("overview-panel/", views.keys_overview_panel, name="keys_overview_panel"),
    path("new/", views.api_key_create, name="api_key_create"),
    path("new/validate/", views.api_key_validate, name="api_key_validate"),
    path("<uuid:key>/", views.api_key_detail, name="api_key_detail"),
    path("<uuid:key>/secret/", views.api_key_secret, name="api_key_secret"),
    path("<uuid:key>/edit/", views.api_key_edit, name="api_key_edit"),
    path("<uuid:key>/edit/validate/", views.api_key_edit_validate, name="api_key_edit_validate"),
    path("<uuid:key>/rotate/", views.api_key_rotate, name="api_key_rotate"),
    path("<uuid:key>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("byok/", views.byok_page, name="byok_page"),
    path("byok/new/", views.byok_create, name="byok_create"),
    path("byok/<uuid:credential>/edit/", views.byok_edit, name="byok_edit"),
    path("byok/<uuid:credential>/delete/", views.byok_delete, name="byok_delete"),
]
