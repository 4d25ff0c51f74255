"""Installation admins manage router providers in the console (issue 16: "Router providers can
only be added in /admin/, and the console never links there"); everyone else gets 404."""

from __future__ import annotations

import pytest
from django.urls import reverse

from console.models import AuditEvent, User
from keys.models import RouterProvider, RouterProviderGrant, RouterProviderPrice
from lib.crypto import decrypt
from tests.conftest import PASSWORD

UPSTREAM_KEY = "sk-or-v1-operator-0123456789"


@pytest.fixture
def staff(db) -> User:
    return User.objects.create_user("ops", "ops@example.com", PASSWORD, is_staff=True)


@pytest.fixture
def provider(staff, client) -> RouterProvider:
    client.force_login(staff)
    response = client.post(
        reverse("router_provider_add"),
        {
            "name": "OpenRouter",
            "slug": "openrouter",
            "base_url": "https://openrouter.example/api/v1",
            "api_key": UPSTREAM_KEY,
            "model_names": "openai/gpt-4o-mini\nanthropic/claude-3.5-haiku",
            "is_active": "on",
            "input_per_million": "0.15",
            "output_per_million": "0.60",
            "currency": "usd",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    return RouterProvider.objects.get(slug="openrouter")


PAGES = [
    ("router_providers_page", {}),
    ("router_provider_add", {}),
    ("router_provider_detail", {"provider": "openrouter"}),
    ("router_provider_edit", {"provider": "openrouter"}),
]


@pytest.mark.parametrize(("name", "kwargs"), PAGES)
@pytest.mark.parametrize("who", ["owner", "admin", "developer", "outsider"])
def test_workspace_roles_get_404_on_installation_pages(world, provider, client_for, name, kwargs, who):
    # Owning a workspace is not owning the installation: the operator's upstream key is not theirs.
    assert client_for(world.user(who)).get(reverse(name, kwargs=kwargs)).status_code == 404


def test_anonymous_is_sent_to_sign_in(client, provider):
    client.logout()
    response = client.get(reverse("router_providers_page"))
    assert response.status_code == 302 and "/accounts/login/" in response.url


def test_staff_adds_a_provider_with_its_price_and_the_key_is_never_shown(staff, client, provider):
    assert decrypt(provider.api_key_encrypted) == UPSTREAM_KEY
    assert provider.model_names == ["openai/gpt-4o-mini", "anthropic/claude-3.5-haiku"]
    price = RouterProviderPrice.objects.get(provider=provider)
    assert (str(price.input_per_million), str(price.output_per_million), price.currency, price.model_name) == (
        "0.150000",
        "0.600000",
        "USD",
        "",
    )
    for name, kwargs in PAGES:
        html = client.get(reverse(name, kwargs=kwargs)).content.decode()
        assert UPSTREAM_KEY not in html and provider.api_key_encrypted not in html
    listing = client.get(reverse("router_providers_page")).content.decode()
    assert "OpenRouter" in listing and "0.15 · 0.60" in listing


def test_bad_input_is_shown_on_the_form_and_changes_nothing(staff, client, provider):
    response = client.post(
        reverse("router_provider_add"),
        {
            "name": "",
            "slug": "openrouter",
            "base_url": "http://169.254.169.254/v1",
            "api_key": "x",
            "input_per_million": "-1",
            "currency": "US",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "link-local" in html or "metadata" in html
    assert RouterProvider.objects.count() == 1


def test_edit_keeps_the_stored_key_when_left_empty_and_replaces_it_when_given(staff, client, provider):
    url = reverse("router_provider_edit", kwargs={"provider": "openrouter"})
    base = {"name": "OpenRouter EU", "base_url": "https://eu.openrouter.example/api/v1", "model_names": "", "is_active": "on"}
    assert client.post(url, {**base, "api_key": ""}).status_code == 302
    provider.refresh_from_db()
    assert (provider.name, provider.model_names, decrypt(provider.api_key_encrypted)) == ("OpenRouter EU", [], UPSTREAM_KEY)
    assert client.post(url, {**base, "api_key": "sk-or-v1-rotated-9876543210"}).status_code == 302
    provider.refresh_from_db()
    assert decrypt(provider.api_key_encrypted) == "sk-or-v1-rotated-9876543210"
    assert UPSTREAM_KEY not in client.get(url).content.decode()


def test_staff_grants_and_revokes_a_workspace(world, staff, client, provider):
    detail = reverse("router_provider_detail", kwargs={"provider": "openrouter"})
    assert "Research" in client.get(detail).content.decode()  # sub-workspaces can be granted too
    response = client.post(reverse("router_provider_grant_add", kwargs={"provider": "openrouter"}), {"workspace": str(world.org.public_id)})
    assert response.status_code == 302
    assert RouterProviderGrant.objects.filter(provider=provider, workspace=world.org).exists()
    assert AuditEvent.objects.filter(workspace=world.org, action="router_provider.granted", actor=staff).exists()
    bad = client.post(reverse("router_provider_grant_add", kwargs={"provider": "openrouter"}), {"workspace": "not-a-uuid"})
    assert bad.status_code == 400
    revoke = reverse("router_provider_grant_revoke", kwargs={"provider": "openrouter", "workspace": world.org.public_id})
    assert client.post(revoke).status_code == 302
    assert not RouterProviderGrant.objects.exists()
    assert AuditEvent.objects.filter(workspace=world.org, action="router_provider.revoked", actor=staff).exists()


def test_staff_sets_a_per_model_price_and_bad_prices_are_refused(staff, client, provider):
    url = reverse("router_provider_price_add", kwargs={"provider": "openrouter"})
    ok = client.post(url, {"model_name": "openai/gpt-4o-mini", "input_per_million": "0.2", "output_per_million": "0.8", "currency": "USD"})
    assert ok.status_code == 302
    assert RouterProviderPrice.objects.filter(provider=provider, model_name="openai/gpt-4o-mini").count() == 1
    refused = client.post(url, {"model_name": "", "input_per_million": "1", "output_per_million": "1", "currency": "EUR"})
    assert refused.status_code == 400 and "priced in USD" in refused.content.decode()
    past = client.post(url, {"input_per_million": "1", "output_per_million": "1", "currency": "USD", "effective_from": "2020-01-01T00:00"})
    assert past.status_code == 400 and "cannot start in the past" in past.content.decode()
    assert RouterProviderPrice.objects.count() == 2


def test_console_links_installation_admins_to_router_providers(world, client_for):
    overview = reverse("workspace_overview", kwargs={"ws": "acme"})
    assert b"nav-router-providers" not in client_for(world.owner).get(overview).content
    world.owner.is_staff = True
    world.owner.save(update_fields=["is_staff"])
    assert b"nav-router-providers" in client_for(world.owner).get(overview).content


def test_installation_admin_without_a_workspace_still_finds_the_page(staff, client):
    client.force_login(staff)
    home = client.get(reverse("home"), follow=True)
    assert b"nav-router-providers" in home.content
