"""Router providers are granted to workspaces and priced (issue 13, "Router providers are free to
anyone"). On the old main any developer could scope a key to an installation-wide provider, which
spends the operator's upstream key, and its calls were recorded at cost 0, so budgets never saw
them. Now an installation admin grants a provider to workspaces, keys can scope only granted
providers, the gateway honours the grant, and each call is costed with the provider's price."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from deployments.models import UpstreamKind
from deployments.services import deployment_create
from gateway.keyload import load_key
from keys import tokens
from keys.changes import local_generations
from keys.models import ApiKey, RouterProvider, RouterProviderGrant, RouterProviderPrice
from keys.router_providers import (
    router_provider_create,
    router_provider_grant,
    router_provider_price_in_force,
    router_provider_price_set,
    router_provider_revoke,
    router_provider_update,
)
from keys.services import api_key_create, api_key_update
from lib.crypto import decrypt, encrypt
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, wait_for
from usage.budgets import budget_spend
from usage.models import UsageEvent
from usage.services import usage_rollup

OPERATOR = Actor.system("operator")


@pytest.fixture
def provider(db) -> RouterProvider:
    return RouterProvider.objects.create(
        slug="openrouter",
        name="OpenRouter",
        base_url="https://openrouter.example/api/v1",
        api_key_encrypted=encrypt("sk-or-operator-key-0123"),
        model_names=["openai/gpt-4o-mini"],
    )


def entry_for(plaintext: str):
    return load_key(tokens.digest(plaintext, settings.API_KEY_PEPPER))


# ---- grants -----------------------------------------------------------------------------------


def test_a_developer_cannot_scope_a_provider_not_granted_to_the_workspace(world, provider):
    developer = Actor(user=world.developer, label="dev")
    with pytest.raises(ValidationError) as caught:
        api_key_create(workspace=world.org, actor=developer, name="spender", router_providers=[provider])
    assert caught.value.message_dict["router_providers"] == ["The router provider “OpenRouter” is not available to this workspace."]
    assert not ApiKey.objects.filter(name="spender").exists()


def test_a_granted_provider_can_be_scoped_and_only_by_that_workspace(world, provider):
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    key, _ = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="router", router_providers=[provider])
    assert list(key.router_providers.all()) == [provider]
    # A grant to the organisation is not a grant to its sub-workspaces or to other tenants.
    for workspace in (world.sub, world.other_org):
        with pytest.raises(ValidationError, match="not available to this workspace"):
            api_key_create(workspace=workspace, actor=Actor.system("tests"), name="router", router_providers=[provider])
    assert AuditEvent.objects.filter(workspace=world.org, action="router_provider.granted", target_id=str(provider.pk)).count() == 1


def test_key_form_offers_only_granted_providers(world, provider, client_for):
    page = client_for(world.developer).get(f"/w/{world.org.slug}/secrets/new/")
    assert page.status_code == 200 and b"openrouter/" not in page.content
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    assert b"openrouter/" in client_for(world.developer).get(f"/w/{world.org.slug}/secrets/new/").content


def test_revoking_a_grant_unscopes_the_workspaces_keys_and_tells_gateways(world, provider, django_capture_on_commit_callbacks):
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    router_provider_grant(provider=provider, workspace=world.other_org, actor=OPERATOR)
    mine, _ = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="mine", router_providers=[provider], all_models=True)
    theirs, _ = api_key_create(workspace=world.other_org, actor=Actor.system("tests"), name="theirs", router_providers=[provider])
    before = local_generations[mine.id]
    with django_capture_on_commit_callbacks(execute=True):
        router_provider_revoke(provider=provider, workspace=world.org, actor=OPERATOR)
    assert list(mine.router_providers.all()) == [] and list(theirs.router_providers.all()) == [provider]
    assert local_generations[mine.id] == before + 1
    event = AuditEvent.objects.get(workspace=world.org, action="router_provider.revoked")
    assert event.details == {"slug": "openrouter", "keys_unscoped": ["mine"]}
    # Revoking again changes nothing.
    router_provider_revoke(provider=provider, workspace=world.org, actor=OPERATOR)
    assert AuditEvent.objects.filter(action="router_provider.revoked").count() == 1


def test_deployments_route_only_through_granted_providers(world, provider):
    admin = Actor(user=world.admin, label="adam")
    fields = dict(workspace=world.org, actor=admin, name="Routed", model_id="routed", upstream_kind=UpstreamKind.ROUTER)
    with pytest.raises(ValidationError, match="granted to this workspace"):
        deployment_create(**fields, router_provider=provider)
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    assert deployment_create(**fields, router_provider=provider).router_provider == provider


def test_gateway_ignores_scopes_without_a_grant(world, provider):
    # A scope written before grants existed (or past the services) gives nothing at the gateway.
    key, plaintext = make_key(world.org)
    key.router_providers.set([provider])
    assert "openrouter/openai/gpt-4o-mini" not in entry_for(plaintext).routes
    RouterProviderGrant.objects.create(provider=provider, workspace=world.org)
    assert "openrouter/openai/gpt-4o-mini" in entry_for(plaintext).routes
    provider.is_active = False
    provider.save(update_fields=["is_active"])
    assert "openrouter/openai/gpt-4o-mini" not in entry_for(plaintext).routes


def test_gateway_ignores_a_router_deployment_whose_grant_was_revoked(world, provider):
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    deployment = deployment_create(
        workspace=world.org, actor=OPERATOR, name="Routed", model_id="routed", upstream_kind=UpstreamKind.ROUTER, router_provider=provider
    )
    _, plaintext = make_key(world.org, all_models=True)
    assert entry_for(plaintext).routes["routed"].deployment_id == deployment.id
    router_provider_revoke(provider=provider, workspace=world.org, actor=OPERATOR)
    assert "routed" not in entry_for(plaintext).routes


# ---- prices -----------------------------------------------------------------------------------


def test_gateway_route_carries_the_providers_prices(world, provider):
    RouterProviderGrant.objects.create(provider=provider, workspace=world.org)
    provider.model_names = []  # any model: a wildcard route
    provider.save(update_fields=["model_names"])
    router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="1.00", output_per_million="2.00")
    router_provider_price_set(provider=provider, actor=OPERATOR, model_name="openai/gpt-4o", input_per_million="5", output_per_million="15")
    key, plaintext = make_key(world.org)
    key.router_providers.set([provider])
    entry = entry_for(plaintext)
    now = timezone.now().timestamp() + 1
    default = entry.route_for("openrouter/some/other-model").price_at(now)
    own = entry.route_for("openrouter/openai/gpt-4o").price_at(now)
    assert (default.input_per_million, default.output_per_million) == (Decimal("1.00"), Decimal("2.00"))
    assert (own.input_per_million, own.output_per_million) == (Decimal("5"), Decimal("15"))


def test_price_versions_follow_the_deployment_rules(world, provider):
    now = timezone.now()
    first = router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="1", output_per_million="2")
    assert router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="1", output_per_million="2") == first
    later = router_provider_price_set(
        provider=provider, actor=OPERATOR, input_per_million="3", output_per_million="4", effective_from=now + timedelta(days=1)
    )
    assert router_provider_price_in_force(provider, "any/model", now + timedelta(minutes=1)) == first
    assert router_provider_price_in_force(provider, "any/model", now + timedelta(days=2)) == later
    with pytest.raises(ValidationError, match="cannot start in the past"):
        router_provider_price_set(
            provider=provider, actor=OPERATOR, input_per_million="1", output_per_million="1", effective_from=now - timedelta(hours=1)
        )
    with pytest.raises(ValidationError, match="priced in USD"):
        router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="1", output_per_million="1", currency="EUR")
    with pytest.raises(ValidationError, match="between 0 and"):
        router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="-1", output_per_million="1")
    assert RouterProviderPrice.objects.count() == 2


demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway


@pytest.mark.django_db(transaction=True)
def test_router_calls_are_costed_and_count_towards_the_budget(world, gateway, demo):
    provider = router_provider_create(
        actor=OPERATOR,
        name="Demo router",
        slug="demo-router",
        base_url=demo.url + "/v1",
        api_key=UPSTREAM_KEY,
        model_names="gatehouse-demo",
        input_per_million="2.00",
        output_per_million="6.00",
    )
    router_provider_grant(provider=provider, workspace=world.org, actor=OPERATOR)
    _, plaintext = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="router", router_providers=[provider])
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body("demo-router/gatehouse-demo"),
        headers={"authorization": f"Bearer {plaintext}"},
        timeout=20,
    )
    assert response.status_code == 200, response.text
    event = wait_for(lambda: UsageEvent.objects.filter(model="demo-router/gatehouse-demo").first())
    assert (event.prompt_tokens, event.completion_tokens) == (7, 19)
    assert event.cost == Decimal("0.000128000")  # 7 × 2.00 + 19 × 6.00 per million (0 on the old main)
    assert (event.input_price_per_million, event.currency) == (Decimal("2.00"), "USD")

    usage_rollup(now=timezone.now() + timedelta(minutes=5))
    month = timezone.now().astimezone(world.org.tz).date().replace(day=1)
    assert budget_spend(world.org, month, "USD") == Decimal("0.000128000")


@pytest.mark.django_db(transaction=True)
def test_an_ungranted_provider_is_a_404_at_the_gateway(world, gateway, demo):
    provider = RouterProvider.objects.create(
        slug="demo-router", name="Demo", base_url=demo.url + "/v1", api_key_encrypted=encrypt(UPSTREAM_KEY), model_names=["gatehouse-demo"]
    )
    key, plaintext = make_key(world.org)
    key.router_providers.set([provider])  # as the old main allowed any developer to do
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body("demo-router/gatehouse-demo"),
        headers={"authorization": f"Bearer {plaintext}"},
        timeout=20,
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


# ---- provider management (services) -----------------------------------------------------------


def test_create_and_update_keep_the_upstream_key_encrypted_and_validate(world, settings):
    provider = router_provider_create(
        actor=OPERATOR, name="OpenRouter", slug="openrouter", base_url="https://openrouter.example/api/v1", api_key="sk-or-v1-abcdef0123"
    )
    assert decrypt(provider.api_key_encrypted) == "sk-or-v1-abcdef0123" and "abcdef" not in provider.api_key_encrypted
    assert RouterProviderPrice.objects.get(provider=provider).input_per_million == 0  # said explicitly
    updated = router_provider_update(
        provider=provider,
        actor=OPERATOR,
        name="OpenRouter EU",
        base_url="https://eu.openrouter.example/api/v1",
        model_names="",
        is_active=True,
    )
    assert decrypt(updated.api_key_encrypted) == "sk-or-v1-abcdef0123"  # empty key: kept
    with pytest.raises(ValidationError) as caught:
        router_provider_create(actor=OPERATOR, name="", slug="byok", base_url="http://169.254.169.254/v1", api_key="short")
    assert set(caught.value.message_dict) >= {"name", "base_url"}
    with pytest.raises(ValidationError, match="reserved"):
        router_provider_create(actor=OPERATOR, name="X", slug="byok", base_url="https://x.example/v1", api_key="sk-0123456789")
    settings.UPSTREAM_ALLOWED_NETWORKS = ("public", "private")
    with pytest.raises(ValidationError, match="loopback"):
        router_provider_update(
            provider=provider, actor=OPERATOR, name="x", base_url="http://127.0.0.1:6379/v1", model_names="", is_active=True
        )
    assert RouterProvider.objects.count() == 1


def test_key_update_cannot_add_an_ungranted_provider(world, provider):
    key, _ = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="app", all_models=True)
    with pytest.raises(ValidationError, match="not available"):
        api_key_update(
            api_key=key,
            actor=Actor.system("tests"),
            description="",
            all_models=True,
            deployments=[],
            router_providers=[provider],
            all_byok=False,
            byok_credentials=[],
            tpm_limit=None,
            yearly_token_limit=None,
            ip_allowlist=[],
            expires_at=None,
        )


# ---- the data migration -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_migration_grants_providers_to_workspaces_already_using_them(world):
    before, after = [("keys", "0002_key_name_rules_and_limits")], [("keys", "0003_router_provider_grants_and_prices")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    # The grant and price tables are gone; the rows written here live in tables 0003 does not touch.
    used = RouterProvider.objects.create(slug="used", name="Used", base_url="https://used.example/v1")
    routed = RouterProvider.objects.create(slug="routed", name="Routed", base_url="https://routed.example/v1")
    RouterProvider.objects.create(slug="unused", name="Unused", base_url="https://unused.example/v1")
    for workspace, name in ((world.org, "a"), (world.org, "b"), (world.other_org, "c")):
        make_key(workspace, name=name)[0].router_providers.add(used)
    make_deployment(world.sub, base_url="", model_id="r", upstream_kind="router", router_provider=routed)

    executor = MigrationExecutor(connection)
    executor.migrate(after)
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest state for the other tests

    grants = set(RouterProviderGrant.objects.values_list("provider__slug", "workspace__slug"))
    assert grants == {("used", "acme"), ("used", "globex"), ("routed", "acme-research")}
    # What worked before works after: the keys still reach the provider at the gateway.
    key = ApiKey.objects.get(name="c")
    plaintext = tokens.generate()
    key.secrets.create(digest=tokens.digest(plaintext, settings.API_KEY_PEPPER), hint="x")
    assert "used" in entry_for(plaintext).router_wildcards


def test_price_effective_from_is_stored_as_given(world, provider):
    at = datetime(2030, 1, 1, tzinfo=UTC)
    price = router_provider_price_set(provider=provider, actor=OPERATOR, input_per_million="1", output_per_million="1", effective_from=at)
    assert price.effective_from == at
