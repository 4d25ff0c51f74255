from django.urls import path

from keys import router_provider_views as views

urlpatterns = [
    path("", views.router_providers_page, name="router_providers_page"),
    path("new/", views.router_provider_add, name="router_provider_add"),
    path("<slug:provider>/", views.router_provider_detail, name="router_provider_detail"),
    path("<slug:provider>/edit/", views.router_provider_edit, name="router_provider_edit"),
    path("<slug:provider>/grants/", views.router_provider_grant_add, name="router_provider_grant_add"),
    path("<slug:provider>/grants/<uuid:workspace>/revoke/", views.router_provider_grant_revoke, name="router_provider_grant_revoke"),
    path("<slug:provider>/prices/", views.router_provider_price_add, name="router_provider_price_add"),
]
