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
