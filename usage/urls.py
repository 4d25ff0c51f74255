from django.urls import path

from usage import budget_views, views

urlpatterns = [
    path("usage/", views.usage_page, name="usage_page"),
    path("usage/export.csv", views.usage_export, name="usage_export"),
    path("usage/events.csv", views.usage_flat_export, name="usage_flat_export"),
    path("billing/", views.billing_page, name="billing_page"),
    path("billing/export.csv", views.billing_export, name="billing_export"),
]

# Budgets and the overview page's panel (usage/budget_views.py).
urlpatterns += [
    path("billing/budget/", budget_views.budget_edit, name="budget_edit"),
    path("billing/budget/remove/", budget_views.budget_delete, name="budget_delete"),
    path("usage/overview-panel/", budget_views.usage_overview_panel, name="usage_overview_panel"),
]
