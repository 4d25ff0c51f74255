from django.urls import path

from keys import views

urlpatterns = [
    path("", views.secrets_page, name="secrets_page"),
]
