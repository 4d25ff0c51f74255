from django.urls import path

from deployments import views

urlpatterns = [
    path("", views.deployments_page, name="deployments_page"),
    path("new/", views.deployment_create_view, name="deployment_create"),
    path("import/", views.deployments_import_view, name="deployments_import"),
    path("overview-panel/", views.deployments_overview_panel, name="deployments_overview_panel"),
    path("grants/", views.grants_page, name="grants_page"),
    path("grants/<uuid:deployment>/", views.grants_save, name="grants_save"),
    path("grants/queue-priority/", views.queue_priority_save, name="queue_priority_save"),
    path("<uuid:deployment>/", views.deployment_detail, name="deployment_detail"),
    path("<uuid:deployment>/edit/", views.deployment_edit, name="deployment_edit"),
    path("<uuid:deployment>/price/", views.deployment_price, name="deployment_price"),
    path("<uuid:deployment>/stop/", views.deployment_stop_view, name="deployment_stop"),
    path("<uuid:deployment>/start/", views.deployment_start_view, name="deployment_start"),
    path("<uuid:deployment>/replicas/", views.replica_add_view, name="replica_add"),
    path("<uuid:deployment>/replicas/<uuid:replica>/", views.replica_edit_view, name="replica_edit"),
    path("<uuid:deployment>/replicas/<uuid:replica>/remove/", views.replica_remove_view, name="replica_remove"),
    path("<uuid:deployment>/test-calls/", views.test_call_run_view, name="test_call_run"),
    path("<uuid:deployment>/test-calls/<uuid:call>/", views.test_call_poll, name="test_call_poll"),
]
