from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.conftest import World
from usage.services import usage_rollup

from .usage_factory import event, make_deployment, make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_usage_range_updates_table_then_billing_shows_split(page, sign_in, screenshot):
    world = World()
    now = timezone.now()
    key, sub_key = make_key(world.org, "backend"), make_key(world.sub, "research")
    chat = make_deployment(world.org, "chat", price=("0.50", "1.50"), at=now - timedelta(days=60))
    for day in range(8):
        for i in range(day + 2):
            event(world.org, now - timedelta(days=day, minutes=i), key=key, deployment=chat, prompt=20_000 + 500 * i, completion=3_000 * i)
        event(world.sub, now - timedelta(days=day, minutes=5), key=sub_key, deployment=chat, prompt=9_000, completion=12_000)
    usage_rollup(now=now)
    today = now.date()

    sign_in("olivia")
    page.goto("/w/acme/usage/")
    page.wait_for_selector("[data-testid=by-key]")
    all_requests = page.locator("[data-total=requests]").inner_text()
    assert all_requests == str(sum(d + 3 for d in range(8)))
    assert page.locator("figure.chart rect.chart-bar").count() == 3 * 30
    screenshot(page, "1-usage-30-days")

    page.fill("#id_start", (today - timedelta(days=1)).isoformat())
    page.locator("#id_start").dispatch_event("change")
    expect(page.locator("[data-total=requests]")).to_have_text("7")
    assert "start=" in page.url
    assert page.locator("figure.chart").first.locator("rect.chart-bar").count() == 2
    assert page.locator("[data-testid=by-workspace] tbody tr").count() == 2
    screenshot(page, "2-usage-2-days")

    page.click("text=Billing")
    page.wait_for_selector("[data-testid=statement]")
    assert page.locator("[data-testid=section-acme]").is_visible()
    assert page.locator("[data-testid=section-acme-research]").is_visible()
    screenshot(page, "3-billing")
