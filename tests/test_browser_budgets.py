from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.conftest import World
from usage.models import Budget
from usage.services import usage_rollup

from .usage_factory import event, make_deployment, make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_sets_a_budget_and_sees_the_progress_bar_and_overview_panels(page, sign_in, screenshot):
    world = World()
    now = timezone.now()
    key = make_key(world.org, "backend")
    chat = make_deployment(world.org, "chat", price=("10000", "0"), at=now - timedelta(days=60))  # a cent a token
    event(
        world.org, now - timedelta(seconds=2), key=key, deployment=chat, prompt=4200, completion=0
    )  # 42.00, today (also just after midnight)
    usage_rollup(now=now)

    sign_in("olivia")
    page.goto("/w/acme/billing/")
    expect(page.locator("[data-testid=budget-none]")).to_be_visible()
    page.click("[data-testid=budget-edit]")
    page.fill("#id_amount", "-3")
    page.click("text=Save budget")
    expect(page.locator("#field-amount .errorlist")).to_contain_text("at least 0.01")
    assert not Budget.objects.exists()
    screenshot(page, "1-form-error")

    page.fill("#id_amount", "50")
    page.check("#id_block_requests")
    page.click("text=Save budget")
    page.wait_for_url("**/w/acme/billing/")
    progress = page.locator("[data-testid=budget-card] [data-testid=budget-progress-acme]")
    expect(progress.locator("[data-testid=budget-percent]")).to_have_text("84 %")
    assert progress.locator("meter.budget-meter.level-80").get_attribute("value") == "42.00"
    expect(page.locator("[data-testid=budget-banner]")).to_contain_text("84 % of the monthly budget used")
    screenshot(page, "2-billing-with-budget")

    page.click("text=Overview")
    expect(page.locator("[data-testid=usage-panel] [data-today=requests]")).to_have_text("1")
    expect(page.locator("[data-testid=usage-panel] [data-testid=budget-percent]")).to_have_text("84 %")
    expect(page.locator("[data-testid=deployments-all-healthy]")).to_be_visible()
    expect(page.locator("[data-testid=keys-none-expiring]")).to_be_visible()
    screenshot(page, "3-overview-panels")

    page.click("text=Usage")
    expect(page.locator("[data-testid=budget-card] [data-testid=budget-percent]")).to_have_text("84 %")
    screenshot(page, "4-usage-with-budget")

    event(world.org, timezone.now(), key=key, deployment=chat, prompt=1000, completion=0)  # 52.00 of 50.00
    usage_rollup()
    page.click("text=Billing")
    expect(page.locator("[data-testid=budget-banner]")).to_contain_text("Monthly budget used up")
    expect(page.locator("[data-testid=budget-card] [data-testid=budget-blocking]")).to_be_visible()
    screenshot(page, "5-billing-blocked")

    # A sub-workspace member learns that requests are blocked, without the organisation's figures.
    page.click("text=Sign out")
    sign_in("sam")
    page.goto("/w/acme-research/")
    banner = page.locator("[data-testid=budget-banner]")
    expect(banner).to_contain_text("Requests are blocked")
    assert "52" not in banner.inner_text() and "%" not in banner.inner_text()
    expect(page.locator("[data-testid=usage-panel] [data-testid=panel-no-budget]")).to_be_visible()
    screenshot(page, "6-sub-workspace-blocked")
