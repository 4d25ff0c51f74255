"""What an admin sees of accounting in the browser: the reconciliation drift banner."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.conftest import World
from usage.models import UsageDaily
from usage.services import usage_reconcile, usage_rollup

from .usage_factory import event, make_deployment, make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_sees_drift_banner_until_the_numbers_add_up_again(page, sign_in, screenshot, monkeypatch):
    monkeypatch.setattr("usage.tasks.usage_rollup.delay", lambda *a, **k: None)
    world = World()
    key, chat = make_key(world.sub, "research"), make_deployment(world.org, "chat", at=timezone.now() - timedelta(days=3))
    for i in range(5):
        event(world.sub, timezone.now() - timedelta(days=1, minutes=i), key=key, deployment=chat)
    usage_rollup()
    UsageDaily.objects.filter(workspace=world.sub).update(requests=3)  # rows that no longer match the events
    assert not usage_reconcile(days=3).ok

    sign_in("adam")
    banner = page.locator("[data-testid=usage-drift-banner]")
    assert banner.is_visible()
    assert "Usage totals do not add up" in banner.inner_text() and "Research on" in banner.inner_text()
    screenshot(page, "drift-banner")

    usage_rollup()  # the reconciliation marked the day dirty; the next rollup recomputes it
    assert usage_reconcile(days=3).ok
    page.reload()
    assert page.locator("[data-testid=usage-drift-banner]").count() == 0
