from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import World
from usage.services import usage_rollup

from .usage_factory import event, make_deployment, make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_usage_page_filters_by_api_from_the_by_api_table(page, sign_in, screenshot):
    world = World()
    now = timezone.now()
    key = make_key(world.org, "backend")
    chat = make_deployment(world.org, "chat", price=("0.50", "1.50"), at=now - timedelta(days=30))
    embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=now - timedelta(days=30))
    moment = max(now - timedelta(seconds=5), now.replace(hour=0, minute=0, second=0, microsecond=1))
    for endpoint, deployment, prompt in (
        ("chat.completions", chat, 100),
        ("responses", chat, 200),
        ("messages", chat, 300),
        ("embeddings", embed, 4000),
    ):
        event(
            world.org,
            moment,
            key=key,
            deployment=deployment,
            prompt=prompt,
            completion=0 if endpoint == "embeddings" else 10,
            endpoint=endpoint,
        )
    usage_rollup(now=now + timedelta(minutes=1))

    sign_in("olivia")
    page.goto(f"/w/{world.org.slug}/usage/")
    table = page.locator("[data-testid=by-endpoint]")
    assert "Anthropic Messages" in table.inner_text() and "Embeddings" in table.inner_text()
    table.scroll_into_view_if_needed()
    screenshot(page, "by-api")
    table.get_by_role("link", name="Embeddings").click()
    page.wait_for_selector("[data-testid=active-filters]:has-text('API: Embeddings')")
    assert page.locator("[data-total=tokens]").inner_text() == "4,000"
    assert page.locator("#id_endpoint").input_value() == "embeddings"
    screenshot(page, "filtered")


def test_billing_filters_by_api_on_a_phone_and_a_desktop(page, sign_in, screenshot):
    world = World()
    now = timezone.now()
    key = make_key(world.org, "backend")
    chat = make_deployment(world.org, "chat", price=("0.50", "1.50"), at=now - timedelta(days=30))
    moment = max(now - timedelta(seconds=5), now.replace(day=1, hour=0, minute=0, second=0, microsecond=1))
    for endpoint, prompt in (("chat.completions", 100_000), ("responses", 200_000)):
        event(world.org, moment, key=key, deployment=chat, prompt=prompt, completion=10_000, endpoint=endpoint)
    usage_rollup(now=now + timedelta(minutes=1))

    sign_in("olivia")
    page.goto(f"/w/{world.org.slug}/billing/")
    lines = page.locator("[data-testid=line-api]")
    assert sorted(lines.all_inner_texts()) == ["Chat completions", "Responses"]
    screenshot(page, "billing-by-api")
    page.select_option("#id_endpoint", "responses")
    page.click("[data-testid=month-picker] button[type=submit]")
    page.wait_for_selector("[data-testid=statement-api]")
    assert lines.all_inner_texts() == ["Responses"]
    assert page.locator("[data-testid=statement-total]").inner_text().startswith("0.12")  # 0.2 M × 0.50 + 0.01 M × 1.50 = 0.115
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()  # laid out for the phone from the start (no sidebar mid-transition)
    assert page.locator("#id_endpoint").input_value() == "responses"
    screenshot(page, "billing-responses-phone")
