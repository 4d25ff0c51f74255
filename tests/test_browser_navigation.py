"""Navigation in the browser: tab URLs, history, the keyboard menu and skip link, at desktop and phone widths."""

from __future__ import annotations

import pytest

from tests.conftest import World
from tests.factories import make_deployment

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(params=list(VIEWPORTS))
def sized_page(page, request):
    page.set_viewport_size(VIEWPORTS[request.param])
    return page


def current_tab(page) -> str:
    return page.locator("section.tab-panel").get_attribute("data-testid").removeprefix("tab-")


def test_deployment_tab_urls_follow_clicks_reload_and_back(sized_page, sign_in, screenshot):
    page = sized_page
    world = World()
    deployment = make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name="Qwen3")
    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/")
    visited = ["overview"]
    for tab in ["api", "examples", "test", "usage"]:
        page.click(f"[data-testid=detail-tabs] [data-tab={tab}]")
        page.wait_for_selector(f"[data-testid=tab-{tab}]")
        assert page.url.endswith(f"?tab={tab}"), (tab, page.url)
        assert page.locator("[data-testid=detail-tabs] [aria-current=page]").get_attribute("data-tab") == tab
        visited.append(tab)
    screenshot(page, "usage-tab")

    page.reload()
    assert current_tab(page) == "usage"

    # Back, first from htmx's snapshot cache, then with that cache emptied (it keeps 10 pages and
    # drops what does not fit in sessionStorage): the server must answer a history restore with
    # the whole page, not the panel alone.
    page.go_back()
    page.wait_for_selector("section.tab-panel[data-testid=tab-test]")
    assert page.url.endswith("?tab=test")
    page.evaluate("sessionStorage.removeItem('htmx-history-cache')")
    for tab in reversed(visited[:-2]):
        page.go_back()
        page.wait_for_selector(f"section.tab-panel[data-testid=tab-{tab}]")
        assert page.url.endswith(f"?tab={tab}" if tab != "overview" else "/")
        assert page.locator(".sidebar").count() == 1 and page.locator("h1").inner_text().startswith("Qwen3")
        assert page.locator("[data-testid=detail-tabs] [aria-current=page]").get_attribute("data-tab") == tab
    screenshot(page, "back-to-overview")
