"""A person manages an API key in Chromium: create with every field, copy, list, edit, rotate, revoke."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.utils import timezone

from console.models import AuditEvent
from keys import tokens
from keys.models import ApiKey
from keys.selectors import api_key_secret_for_presented, secret_is_valid
from keys.services import api_key_revoke
from tests.conftest import World
from tests.keys_helpers import ACTOR, make_key, make_scope

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

KEY_RE = re.compile(r"gh_live_[0-9A-Za-z]{46}")


def test_developer_creates_copies_edits_rotates_and_revokes_a_key(page, sign_in, screenshot):
    world = World()
    scope = make_scope(world)
    make_key(world.org, name="nightly-batch", tpm_limit=20000, expires_at=timezone.now() + dt.timedelta(days=3))
    old, _ = make_key(world.org, name="old-ci", all_models=False, deployments=[scope.qwen])
    api_key_revoke(api_key=old, actor=ACTOR)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.on("dialog", lambda dialog: dialog.accept())

    sign_in("dev")
    assert "nightly-batch" in page.locator("[data-testid=overview-expiring-keys]").inner_text()
    screenshot(page, "0-overview-expiring")
    page.click("[data-testid=nav-secrets]")
    page.wait_for_selector("[data-testid=keys-table]")
    assert "1 key expires within 7 days." in page.locator("[data-testid=expiring-warning]").inner_text()
    screenshot(page, "1-list-before")

    # Create, with the name checked as it is typed.
    page.click("[data-testid=create-key]")
    page.wait_for_url("**/secrets/new/")
    page.wait_for_load_state("load")  # htmx binds its listeners on load; typing earlier is checked on submit only
    page.fill("#id_name", "billing service")
    page.wait_for_selector("#feedback-name .errorlist")
    assert "The name may not contain a space." in page.locator("#feedback-name").inner_text()
    page.fill("#id_name", "billing-service")
    page.wait_for_selector("#feedback-name .ok")
    assert "“billing-service” is available." in page.locator("#feedback-name").inner_text()
    page.fill("#id_description", "Invoices and receipts worker")
    page.check("label:has-text('Qwen3 0.6B') input")
    page.check("label:has-text('OpenRouter') input")
    page.check("label:has-text('team-openai') input")
    page.fill("#id_tpm_limit", "60000")
    page.fill("#id_yearly_token_limit", "10000000")
    page.fill("#id_ip_allowlist", "10.0.0.1/8")
    page.wait_for_selector("#feedback-ip_allowlist .errorlist")
    assert "has host bits set; the network is 10.0.0.0/8." in page.locator("#feedback-ip_allowlist").inner_text()
    page.fill("#id_ip_allowlist", "192.168.1.1, 10.0.0.0/8\n::ffff:172.16.0.0/108")
    page.wait_for_selector("#feedback-ip_allowlist .ok")
    assert "192.168.1.1/32, 10.0.0.0/8, 172.16.0.0/12" in page.locator("#feedback-ip_allowlist").inner_text()
    expires = (timezone.now() + dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M")
    page.fill("#id_expires_at", expires)
    page.wait_for_selector("#feedback-expires_at .ok")
    screenshot(page, "2-create-form")
    page.click("[data-testid=submit]")

    # Shown once; copy it.
    page.wait_for_selector("[data-testid=new-key]")
    key = page.locator("[data-testid=new-key]").inner_text().strip()
    assert tokens.is_well_formed(key)
    page.click("[data-testid=copy-key]")
    page.wait_for_selector("[data-testid=copy-key]:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == key
    assert page.locator("[data-testid=examples-link]").count() == 1
    screenshot(page, "3-shown-once")
    with page.context.expect_page() as opened:
        page.click("[data-testid=examples-link]")
    examples = opened.value
    examples.wait_for_load_state()
    assert key in examples.content() and "/deployments/" in examples.url and key not in examples.url
    screenshot(examples, "3b-examples-with-key")
    examples.close()

    api_key = ApiKey.objects.get(name="billing-service")
    assert api_key.created_by == world.developer and api_key.description == "Invoices and receipts worker"
    assert [d.model_id for d in api_key.deployments.all()] == ["@acme/Qwen/Qwen3-0.6B"]
    assert [p.slug for p in api_key.router_providers.all()] == ["openrouter"]
    assert [c.name for c in api_key.byok_credentials.all()] == ["team-openai"]
    assert (api_key.tpm_limit, api_key.yearly_token_limit) == (60000, 10_000_000)
    assert api_key.ip_allowlist == ["192.168.1.1/32", "10.0.0.0/8", "172.16.0.0/12"]
    assert api_key.expires_at.strftime("%Y-%m-%dT%H:%M") == expires  # acme's time zone is UTC

    # The list shows the hint only.
    page.click("[data-testid=done]")
    row = page.locator("tr[data-key='billing-service']")
    row.wait_for()
    assert row.locator("[data-testid=hint]").inner_text() == f"gh_live_…{key[-4:]}"
    assert row.locator("[data-testid=status]").inner_text() == "Active"
    assert key not in page.content()
    page.reload()
    assert key not in page.content()
    screenshot(page, "4-list-with-key")

    # Edit its limits.
    row.locator("a").first.click()
    page.click("[data-testid=edit-key]")
    page.fill("#id_tpm_limit", "120000")
    page.fill("#id_yearly_token_limit", "50000000")
    screenshot(page, "5-edit")
    page.click("[data-testid=submit]")
    page.wait_for_selector(".flash-success")
    assert page.locator("[data-testid=tpm]").inner_text() == "120,000 tokens per minute"
    assert key not in page.content()
    screenshot(page, "6-detail-after-edit")

    # Rotate with a 24-hour grace period.
    page.select_option("#id_grace", "24h")
    page.click("[data-testid=rotate-form] button")
    page.wait_for_selector("[data-testid=new-key]")
    new_key = page.locator("[data-testid=new-key]").inner_text().strip()
    assert tokens.is_well_formed(new_key) and new_key != key
    assert "The previous secret keeps working until" in page.locator("[data-testid=grace-note]").inner_text()
    screenshot(page, "7-rotated")
    now = timezone.now()
    assert secret_is_valid(api_key_secret_for_presented(key), now) and secret_is_valid(api_key_secret_for_presented(new_key), now)
    assert not secret_is_valid(api_key_secret_for_presented(key), now + dt.timedelta(hours=24, seconds=5))

    # Revoke.
    page.click("text=Key details")
    page.click("[data-testid=revoke-form] button")
    page.wait_for_selector(".flash-success")
    assert page.locator("h1 [data-testid=status]").inner_text() == "Revoked"
    assert not secret_is_valid(api_key_secret_for_presented(new_key), timezone.now())
    screenshot(page, "8-revoked")
    assert [e.action for e in AuditEvent.objects.filter(target_id=str(api_key.public_id)).order_by("id")] == [
        "api_key.created",
        "api_key.updated",
        "api_key.rotated",
        "api_key.revoked",
    ]

    page.click("text=Secrets")
    page.click("[data-status=revoked]")
    page.wait_for_selector("tr[data-key='billing-service']")
    assert page.locator("tr[data-key='old-ci']").count() == 1 and page.locator("tr[data-key='nightly-batch']").count() == 0


def test_viewer_and_empty_states(page, sign_in, screenshot):
    World()
    sign_in("vera")
    page.click("[data-testid=nav-secrets]")
    assert "No API keys yet" in page.locator(".empty h2").inner_text()
    assert page.locator("[data-testid=create-key]").count() == 0
    screenshot(page, "empty-list-viewer")
    page.click("text=BYOK credentials")
    assert "No BYOK credentials" in page.locator(".empty h2").inner_text()
    screenshot(page, "empty-byok-viewer")


def test_admin_adds_byok_credential_and_live_search(page, sign_in, screenshot):
    world = World()
    scope = make_scope(world)
    for name in ("search-alpha", "search-beta", "other"):
        make_key(world.org, name=name, all_models=False, deployments=[scope.llama])
    sign_in("adam")
    page.goto("/w/acme/secrets/")
    page.fill("#id_q", "alp")
    page.locator("tr[data-key='search-beta']").wait_for(state="detached")
    assert page.locator("[data-testid=keys-table] tbody tr").count() == 1
    assert page.locator("tr[data-key='search-alpha']").count() == 1
    assert "q=alp" in page.url
    screenshot(page, "live-search")
    page.click("text=BYOK credentials")
    page.click("[data-testid=add-byok]")
    page.fill("#id_name", "anthropic")
    page.fill("#id_provider", "Anthropic")
    page.fill("#id_base_url", "https://api.anthropic.com/v1")
    page.fill("#id_api_key", "sk-ant-api03-SECRET-zz99")
    page.fill("#id_model_names", "claude-3-5-haiku-latest\nclaude-sonnet-4-0")
    screenshot(page, "byok-form")
    page.click("[data-testid=byok-form] button[type=submit]")
    page.wait_for_selector("tr[data-credential=anthropic]")
    assert "…zz99" in page.locator("tr[data-credential=anthropic]").inner_text()
    assert "sk-ant-api03-SECRET" not in page.content()
    screenshot(page, "byok-list")
