"""An installation admin manages a router provider in Chromium: from the console's sidebar to the
list, add with a default price, grant to a workspace, price one model, edit (key never shown)."""

from __future__ import annotations

import pytest

from console.models import Membership, Role
from keys.models import RouterProvider, RouterProviderGrant, RouterProviderPrice
from lib.crypto import decrypt
from tests.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

UPSTREAM_KEY = "sk-or-v1-operator-0123456789"


def test_installation_admin_adds_grants_and_prices_a_router_provider(page, sign_in, screenshot):
    world = World()
    world.owner.is_staff = True
    world.owner.save(update_fields=["is_staff"])
    assert Membership.objects.get(user=world.owner, workspace=world.org).role == Role.OWNER

    sign_in("olivia")
    screenshot(page, "0-console-link")
    page.click("[data-testid=nav-router-providers]")
    page.wait_for_selector("text=No router providers yet")
    screenshot(page, "1-empty")

    page.click("[data-testid=add-router-provider]")
    page.fill("#id_name", "OpenRouter")
    page.fill("#id_slug", "openrouter")
    page.fill("#id_base_url", "https://openrouter.example/api/v1")
    page.fill("#id_api_key", UPSTREAM_KEY)
    page.fill("#id_model_names", "openai/gpt-4o-mini\nanthropic/claude-3.5-haiku")
    page.fill("#id_input_per_million", "0.15")
    page.fill("#id_output_per_million", "0.60")
    screenshot(page, "2-add-form")
    page.click("button:has-text('Add provider')")
    page.wait_for_selector("[data-testid=grant-form]")
    assert UPSTREAM_KEY not in page.content()
    screenshot(page, "3-detail-new")

    page.select_option("#id_workspace", label="Acme (default)")
    page.click("[data-testid=grant-form] button:has-text('Grant')")
    page.wait_for_selector("[data-grant=acme]")
    page.fill("#id_model_name", "openai/gpt-4o-mini")
    page.fill("[data-testid=price-form] #id_input_per_million", "0.20")
    page.fill("[data-testid=price-form] #id_output_per_million", "0.80")
    page.click("button:has-text('Set price')")
    page.wait_for_selector("text=Saved the price for openai/gpt-4o-mini")
    screenshot(page, "4-detail-granted-priced")

    page.click("a.btn:has-text('Edit')")
    assert page.input_value("#id_api_key") == "" and UPSTREAM_KEY not in page.content()
    screenshot(page, "5-edit")
    page.click("text=Cancel")
    page.click("[data-testid=nav-router-providers]")
    page.wait_for_selector("[data-testid=router-providers-table]")
    screenshot(page, "6-list")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()  # a fresh load at phone width, not the desktop sidebar sliding away
    page.wait_for_selector("[data-testid=router-providers-table]")
    screenshot(page, "7-list-mobile")
    page.goto("/installation/router-providers/openrouter/")
    page.wait_for_selector("[data-testid=price-form]")
    screenshot(page, "8-detail-mobile")

    provider = RouterProvider.objects.get(slug="openrouter")
    assert decrypt(provider.api_key_encrypted) == UPSTREAM_KEY
    assert RouterProviderGrant.objects.filter(provider=provider, workspace=world.org).exists()
    assert set(RouterProviderPrice.objects.values_list("model_name", flat=True)) == {"", "openai/gpt-4o-mini"}
