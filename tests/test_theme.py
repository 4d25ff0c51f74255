"""The theme toggle's endpoint without JavaScript: a plain form POST, answered with a redirect back."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import Theme

pytestmark = pytest.mark.django_db


def test_plain_form_stores_the_choice_and_goes_back_to_the_page(world, client_for):
    client = client_for(world.developer)
    assert world.developer.theme == Theme.SYSTEM
    page = reverse("usage_page", kwargs={"ws": "acme"})
    response = client.post(reverse("theme_set"), {"theme": "dark"}, HTTP_REFERER=f"http://testserver{page}?range=48h")
    assert response.status_code == 302 and response.url == f"http://testserver{page}?range=48h"
    world.developer.refresh_from_db()
    assert world.developer.theme == Theme.DARK
    assert b'<html lang="en" data-theme="dark">' in client.get(page).content


def test_htmx_gets_no_content(world, client_for):
    response = client_for(world.viewer).post(reverse("theme_set"), {"theme": "light"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 204
    world.viewer.refresh_from_db()
    assert world.viewer.theme == Theme.LIGHT


def test_another_site_as_referer_goes_home_instead(world, client_for):
    response = client_for(world.developer).post(reverse("theme_set"), {"theme": "light"}, HTTP_REFERER="https://evil.example/")
    assert response.status_code == 302 and response.url == reverse("home")


@pytest.mark.parametrize("value", ["purple", "", "DARK"])
def test_unknown_theme_is_refused_and_changes_nothing(world, client_for, value):
    response = client_for(world.developer).post(reverse("theme_set"), {"theme": value})
    assert response.status_code == 400
    assert response.content == b"Choose light, dark or system."
    world.developer.refresh_from_db()
    assert world.developer.theme == Theme.SYSTEM


def test_signed_out_visitors_are_sent_to_sign_in(client, world):
    response = client.post(reverse("theme_set"), {"theme": "dark"})
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


def test_get_is_not_allowed(world, client_for):
    assert client_for(world.developer).get(reverse("theme_set")).status_code == 405


def test_signed_out_pages_follow_the_browser(client, world):
    assert b'<html lang="en" data-theme="system">' in client.get(reverse("account_login")).content
