from django.urls import path

from adminapi import views

urlpatterns = [
    path("", views.admin_keys_page, name="admin_keys_page"),
    path("<uuid:key>/rotate/", views.admin_key_rotate, name="admin_key_rotate"),
    path("<uuid:key>/revoke/", views.admin_key_revoke, name="admin_key_revoke"),
    path("reference/", views.api_reference_page, name="admin_api_reference"),
]
