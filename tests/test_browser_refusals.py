"""A developer asks "why does my app get 429?" and finds the answer in the console: refusals made
through a real gateway process, rolled up, read in Chromium on the Usage page and the key's page."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests import gateway_support
from tests.conftest import ARTIFACTS, World
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body
from usage.services import usage_rollup

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

HUGE = "The quick brown fox jumps over the lazy dog. " * 300  # more than the key's 200 tokens a minute


def test_refusals_are_explained_on_the_usage_page_and_the_keys_page(page, sign_in, screenshot, demo, gateway):
    world = World()
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    billing, billing_secret = make_key(world.org, name="billing", deployments=[deployment], tpm_limit=200)
    office, office_secret = make_key(world.org, name="office-only", all_models=True, ip_allowlist=["10.0.0.0/8"])

    def call(secret: str, body: dict) -> int:
        headers = {"authorization": f"Bearer {secret}"}
        return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30).status_code

    assert [call(billing_secret, chat_body(deployment.model_id, HUGE)) for _ in range(3)] == [429] * 3
    assert call(billing_secret, chat_body("gpt-4o")) == 404
    assert call(billing_secret, chat_body(deployment.model_id, max_tokens=5)) == 200
    assert [call(office_secret, chat_body(deployment.model_id)) for _ in range(2)] == [403] * 2
    usage_rollup()

    sign_in("olivia")
    page.goto("/w/acme/usage/?range=48h")
    reasons = page.get_by_test_id("errors-by-reason")
    expect(reasons).to_be_visible()
    expect(reasons.locator("tbody tr")).to_have_count(3)
    first = reasons.locator("tbody tr").first
    expect(first).to_contain_text("429")
    expect(first).to_contain_text("Tokens-per-minute limit reached")
    expect(first).to_contain_text("billing")
    expect(page.locator("[data-total=errors]")).to_have_text("6")
    expect(page.locator("[data-total=answered]")).to_have_text("1")
    # One answered call at 0.50/1.50 per million tokens costs a few millionths: shown, not 0.00.
    cost = page.locator("[data-total=cost]").inner_text().split()[0]
    assert cost.startswith("0.0000") and cost.strip("0.") != ""
    reasons.scroll_into_view_if_needed()
    screenshot(page, "usage-errors")
    shots = ARTIFACTS / "screenshots"
    reasons.screenshot(path=str(shots / "refusals-errors-by-reason.png"))
    page.locator(".charts").screenshot(path=str(shots / "refusals-small-amount-charts.png"))

    # The key that hit the limit narrows the page to it.
    first.get_by_role("link", name="billing").click()
    expect(page.get_by_test_id("active-filters")).to_contain_text("billing")
    expect(reasons.locator("tbody tr")).to_have_count(2)  # its 429s and its 404; the 403s were another key's

    page.goto(f"/w/acme/secrets/{office.public_id}/")
    last = page.get_by_test_id("last-refused")
    expect(last).to_contain_text("403")
    expect(last).to_contain_text("Client IP not in the key's allowlist")
    expect(last).to_contain_text("127.0.0.1")
    expect(page.get_by_test_id("recent-refusals")).to_contain_text("2 × 403")
    expect(page.get_by_test_id("last-used")).to_contain_text("Never")
    screenshot(page, "key-page")

    page.goto(f"/w/acme/secrets/{billing.public_id}/")
    expect(page.get_by_test_id("last-used")).not_to_contain_text("Never")
    expect(page.get_by_test_id("last-refused")).to_contain_text("Model not in the key's scope")
    screenshot(page, "key-page-used-and-refused")
