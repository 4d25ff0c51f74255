from django.urls import path

from deployments import views

urlpatterns = [
    path("", views.deployments_page, name="deployments_page"),
]
