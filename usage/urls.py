from django.urls import path

from usage import views

urlpatterns = [
    path("usage/", views.usage_page, name="usage_page"),
    path("usage/export.csv", views.usage_export, name="usage_export"),
    path("billing/", views.billing_page, name="billing_page"),
    path("billing/export.csv", views.billing_export, name="billing_export"),
]
