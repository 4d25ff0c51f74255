"""The 403, 404 and 500 pages as a person sees them, at desktop and phone widths."""

from __future__ import annotations

import uuid

import pytest
from django.test import RequestFactory
from django.views import defaults

from tests.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("width", [1280, 390])
def test_error_pages_sit_in_the_console_shell(page, sign_in, screenshot, width):
    World()
    page.set_viewport_size({"width": width, "height": 860})
    sign_in("vera")  # a viewer of Acme

    page.goto("/w/acme/settings/")
    assert page.locator("h1").inner_text() == "You can't do that here"
    assert page.get_by_test_id("error-page").get_by_text("This needs the admin role or higher.").is_visible()
    screenshot(page, f"403-{width}")
    if width > 800:  # the sidebar lists her workspaces; on a phone it is behind the menu button
        assert page.locator(".sidebar").get_by_role("link", name="Acme").is_visible()

    page.goto(f"/w/acme/secrets/{uuid.uuid4()}/")
    assert page.locator("h1").inner_text() == "Page not found"
    screenshot(page, f"404-{width}")
    page.get_by_role("link", name="Go to your console").click()
    page.wait_for_url("**/w/acme/")

    # The 500 page is rendered by Django without a request; serve exactly that HTML under a URL
    # of the live server, so its stylesheet loads as it would in production.
    html = defaults.server_error(RequestFactory().get("/")).content.decode()
    page.route("**/server-error-preview", lambda route: route.fulfill(status=500, body=html, content_type="text/html"))
    page.goto("/server-error-preview")
    assert page.locator("h1").inner_text() == "Something went wrong on our side"
    assert page.evaluate("getComputedStyle(document.querySelector('.error-page')).borderRadius") == "10px"  # styled
    screenshot(page, f"500-{width}")
