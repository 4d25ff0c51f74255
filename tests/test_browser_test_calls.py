"""The Test call tab in a real browser: Run, watch it stream through htmx polling, see the result."""

from __future__ import annotations

import pytest

from deployments.models import TestCall, TestCallStatus
from tests.conftest import World
from tests.factories import make_deployment
from tests.gateway_support import UPSTREAM_KEY
from tests.test_deployments_test_calls import ANSWER, QUESTION, demo, gateway, gateways, worker_routed  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_developer_runs_a_test_call_and_sees_it_finish(page, sign_in, screenshot, demo, worker_routed):  # noqa: F811
    world = World()
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")

    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/?tab=test")
    assert page.locator("[data-testid=test-call-empty]").is_visible()
    page.evaluate("window.__sameDocument = true")
    page.fill("#id_system_prompt", "Answer briefly.")
    page.fill("#id_prompt", QUESTION)
    page.fill("#id_max_tokens", "64")
    page.click("[data-testid=test-call-run]")
    result = page.locator("[data-testid=test-call-result][data-status=done]")
    result.wait_for(timeout=60_000)
    assert page.locator("[data-testid=test-call-output]").inner_text() == ANSWER
    assert "Time to first token" in page.locator("[data-testid=test-call-facts]").inner_text()
    call = TestCall.objects.get()
    assert call.status == TestCallStatus.DONE
    # The finished call is in the history below without a reload (swapped in out of band).
    row = page.locator(f"[data-testid=test-call-history] tr[data-test-call='{call.public_id}']")
    row.locator("text=Done").wait_for(timeout=5_000)
    assert page.locator("[data-testid=test-call-history] tbody tr").count() == 1
    assert QUESTION[:20] in row.inner_text() and f"{call.latency_ms} ms" in row.inner_text()
    assert page.evaluate("window.__sameDocument") is True
    screenshot(page, "done")
    page.reload()
    assert page.locator("[data-testid=test-call-history] tbody tr").count() == 1
    screenshot(page, "history")


def test_an_embedding_test_call_shows_dimensions_and_tokens_in_the_browser(page, sign_in, screenshot, demo, worker_routed):  # noqa: F811
    world = World()
    deployment = make_deployment(
        world.org,
        base_url=demo.url + "/v1",
        upstream_api_key=UPSTREAM_KEY,
        upstream_model="gatehouse-demo",
        kind="embedding",
        output_price="0",
    )

    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/?tab=test")
    assert page.locator("#id_temperature").count() == 0  # nothing to sample for an embedding
    page.fill("#id_prompt", "Embed these five words please")
    page.click("[data-testid=test-call-run]")
    page.locator("[data-testid=test-call-result][data-status=done]").wait_for(timeout=60_000)
    assert page.locator("[data-testid=test-call-output]").inner_text().startswith("16 dimensions")
    result = page.locator("[data-testid=test-call-result]").inner_text()
    assert "16 dimensions" in result and "5 in" in result
    screenshot(page, "embedding-done")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    screenshot(page, "embedding-history-phone")
