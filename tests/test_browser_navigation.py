"""Navigation in the browser: tab URLs, history, the keyboard menu and skip link, at desktop and phone widths."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, World
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


def focused(page) -> dict:
    return page.evaluate(
        """() => { const e = document.activeElement;
        return {tag: e.tagName, text: (e.getAttribute('aria-label') || e.innerText || '').trim(), id: e.id,
                inSidebar: !!e.closest('#sidebar'), visible: !!(e.offsetWidth || e.offsetHeight) && getComputedStyle(e).visibility !== 'hidden'}; }"""
    )


def test_phone_menu_opens_from_the_keyboard_and_hidden_links_take_no_focus(page, sign_in, screenshot):
    World()
    page.set_viewport_size(VIEWPORTS["phone"])
    sign_in("olivia")
    page.goto("/w/acme/")
    assert not page.locator("#sidebar").is_visible()

    # The first Tab reaches the skip link; it moves focus past the menu to the page's content.
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Skip to content" and focused(page)["visible"]
    screenshot(page, "1-skip-link")
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"

    # Walking the whole page with Tab never lands in the closed sidebar.
    page.goto("/w/acme/")
    seen = []
    for _ in range(40):
        page.keyboard.press("Tab")
        seen.append(focused(page))
    assert not [f for f in seen if f["inSidebar"]], [f["text"] for f in seen if f["inSidebar"]]
    assert all(f["visible"] for f in seen if f["tag"] != "BODY")

    # The menu is a real button: Tab to it, Enter opens it, focus goes into it.
    page.goto("/w/acme/")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Menu"
    button = page.locator("[data-nav-toggle]")
    assert button.get_attribute("aria-expanded") == "false" and button.get_attribute("aria-controls") == "sidebar"
    page.keyboard.press("Enter")
    assert button.get_attribute("aria-expanded") == "true"
    page.wait_for_selector("#sidebar a:has-text('Deployments')", state="visible")
    assert focused(page)["inSidebar"]
    screenshot(page, "2-menu-open")
    while focused(page)["text"] != "Deployments":
        page.keyboard.press("Tab")
        assert focused(page)["inSidebar"]
    page.keyboard.press("Enter")
    page.wait_for_url("**/w/acme/deployments/")

    # Escape closes it again and gives focus back to the button.
    page.locator("[data-nav-toggle]").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#sidebar a:has-text('Usage')", state="visible")
    page.keyboard.press("Escape")
    assert page.locator("[data-nav-toggle]").get_attribute("aria-expanded") == "false"
    assert focused(page)["text"] == "Menu"
    page.wait_for_selector("#sidebar", state="hidden")
    screenshot(page, "3-menu-closed")


@pytest.mark.parametrize(
    "path", ["/w/acme/", "/w/acme/secrets/", "/accounts/password/change/", "/w/nope/", "/installation/router-providers/"]
)
def test_every_page_starts_with_a_skip_link_at_desktop_width(page, sign_in, path):
    world = World()
    world.owner.is_staff = True
    world.owner.save(update_fields=["is_staff"])
    page.set_viewport_size(VIEWPORTS["desktop"])
    sign_in("olivia")
    page.goto(path)
    page.keyboard.press("Tab")
    assert focused(page)["text"] == "Skip to content"
    page.keyboard.press("Enter")
    assert focused(page)["id"] == "main"
    # At desktop width the sidebar is always there and reachable.
    assert not page.locator("[data-nav-toggle]").is_visible()


def test_test_call_form_refuses_temperature_2_like_the_gateway(sized_page, sign_in, screenshot):
    from deployments.models import TestCall

    page = sized_page
    world = World()
    deployment = make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name="Qwen3")
    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/?tab=test")
    page.fill("[data-testid=test-call-form] [name=prompt]", "Hello")
    page.fill("[data-testid=test-call-form] [name=temperature]", "2")
    page.click("[data-testid=test-call-run]")
    field = page.locator("[data-testid=test-call-form] [name=temperature]")
    assert field.evaluate("e => e.validity.rangeOverflow")
    assert "1.99" in field.evaluate("e => e.validationMessage")
    screenshot(page, "temperature-2-refused")
    assert not TestCall.objects.exists()
    field.fill("1.99")
    assert field.evaluate("e => e.checkValidity()")


def test_reloading_the_new_key_page_creates_nothing_and_shows_the_secret_no_more(sized_page, sign_in, screenshot):
    from keys import tokens
    from keys.models import ApiKey

    page = sized_page
    World()
    sign_in("dev")
    page.goto("/w/acme/secrets/new/")
    page.wait_for_load_state("load")
    page.fill("#id_name", "reload-me")
    page.check("#id_all_models")
    page.click("[data-testid=submit]")
    page.wait_for_selector("[data-testid=new-key]")
    key = page.locator("[data-testid=new-key]").inner_text().strip()
    assert tokens.is_well_formed(key) and key not in page.url
    assert page.url.endswith("/secret/")
    screenshot(page, "1-shown-once")

    page.reload()  # a GET now, not the form's POST again
    assert "already exists" not in page.content()
    assert key not in page.content()
    assert "was shown once and cannot be shown again" in page.locator(".flash").inner_text()
    assert ApiKey.objects.filter(name="reload-me").count() == 1
    screenshot(page, "2-after-reload")
    page.go_back()
    assert key not in page.content()


def test_secrets_search_is_in_the_address_bar_and_survives_reload_and_back(sized_page, sign_in, screenshot):
    from tests.factories import make_key

    page = sized_page
    world = World()
    for name in ["billing-service", "billing-batch", "crm-sync"]:
        make_key(world.org, name=name)
    sign_in("dev")
    page.goto("/w/acme/secrets/")
    page.wait_for_load_state("load")
    page.locator("#id_q").press_sequentially("billing")
    page.wait_for_selector("#key-list tr:has-text('crm-sync')", state="detached")
    page.wait_for_url("**/secrets/?q=billing")
    rows = page.locator("#key-list tbody tr")
    assert rows.count() == 2
    screenshot(page, "1-searched")

    page.reload()
    assert page.locator("#id_q").input_value() == "billing"
    assert page.locator("#key-list tbody tr").count() == 2

    # The status filter keeps the search, and the search keeps the status filter.
    page.click("[data-status=active]")
    page.wait_for_url("**/secrets/?status=active&q=billing")
    page.fill("#id_q", "crm")
    page.wait_for_url("**/secrets/?status=active&q=crm")
    assert page.locator("#key-list tbody tr").count() == 1
    page.evaluate("sessionStorage.removeItem('htmx-history-cache')")  # Back must not depend on htmx's snapshot
    page.go_back()
    page.wait_for_url("**/secrets/?status=active&q=billing")
    page.wait_for_selector("#key-list tbody tr:has-text('billing-batch')")
    assert page.locator(".sidebar").count() == 1 and page.locator("#id_q").input_value() == "billing"
    assert page.locator("#key-list tbody tr").count() == 2
    screenshot(page, "2-back")


def test_time_zone_is_found_by_typing_part_of_its_name(sized_page, sign_in, screenshot):
    from console.models import Workspace

    page = sized_page
    World()
    sign_in("adam")
    page.goto("/w/acme/sub-workspaces/new/")
    page.fill("#id_name", "Mumbai Office")
    search = page.get_by_label("Search time zones")
    search.fill("kolk")
    assert page.locator("#id_time_zone").input_value() == "Asia/Kolkata"
    visible = page.locator("#id_time_zone option:not([hidden])")
    assert visible.count() == 1
    assert page.locator("#id_time_zone optgroup:not([hidden])").evaluate_all("gs => gs.map(g => g.label)") == ["Asia"]
    screenshot(page, "1-filtered")
    search.press("Enter")  # does not submit the form
    assert page.url.endswith("/sub-workspaces/new/")
    search.fill("")
    assert page.locator("#id_time_zone option:not([hidden])").count() > 400
    page.click("button:has-text('Create sub-workspace')")
    page.wait_for_url("**/w/mumbai-office/members/")
    assert Workspace.objects.get(slug="mumbai-office").time_zone == "Asia/Kolkata"


def test_model_permissions_warn_before_unsaved_ticks_are_lost(sized_page, sign_in, screenshot):
    from deployments.models import ModelGrant

    page = sized_page
    world = World()
    deployment = make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name="Qwen3")
    sign_in("adam")
    page.goto("/w/acme/deployments/grants/")
    page.wait_for_load_state("load")
    note = page.locator("[data-unsaved-note]")
    assert not note.is_visible()
    row = page.locator(f"tr[data-deployment='{deployment.public_id}']")
    tick = row.locator("input[type=checkbox]")

    # A tick shows that the row is not saved yet.
    tick.check()
    assert note.is_visible() and "Unsaved changes" in note.inner_text()
    assert "unsaved" in row.get_attribute("class")
    screenshot(page, "1-unsaved")

    # Leaving asks first; staying keeps the tick.
    dialogs = []

    def stay(dialog):
        dialogs.append(dialog.type)
        dialog.dismiss()

    page.on("dialog", stay)
    with page.expect_event("dialog"):
        page.locator("#main a:has-text('Deployments')").first.click(no_wait_after=True)
    assert dialogs == ["beforeunload"]
    assert page.url.endswith("/deployments/grants/") and tick.is_checked()

    # Unticking again is no change: nothing to warn about.
    tick.uncheck()
    assert not note.is_visible()
    tick.check()

    # Save: saved, and leaving afterwards asks nothing.
    row.locator("button:has-text('Save')").click()
    page.wait_for_load_state("load")
    assert ModelGrant.objects.filter(deployment=deployment, workspace=world.sub).exists()
    assert not page.locator("[data-unsaved-note]").is_visible()
    page.locator("#main a:has-text('Deployments')").first.click()
    page.wait_for_url("**/w/acme/deployments/")
    assert dialogs == ["beforeunload"]
    screenshot(page, "2-saved-and-left")


def test_without_javascript_the_phone_sidebar_is_in_the_page(chromium, live_server, screenshot):
    World()
    context = chromium.new_context(base_url=live_server.url, viewport=VIEWPORTS["phone"], java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto("/accounts/login/")
        page.fill("#id_login", "olivia")
        page.fill("#id_password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url("**/w/acme/")
        assert not page.locator("[data-nav-toggle]").is_visible()  # it needs app.js: not offered
        deployments = page.locator("#sidebar a:has-text('Deployments')")
        assert deployments.is_visible()
        screenshot(page, "no-js-phone")
        deployments.click()
        page.wait_for_url("**/w/acme/deployments/")
    finally:
        context.close()


def test_list_tables_become_labelled_cards_at_phone_width(page, sign_in, screenshot):
    """At 390 px the secrets, members, deployments, replicas, audit and admin-key tables show every column
    (one labelled card per row) instead of scrolling sideways past the screen's edge."""
    from console.audit import Actor
    from deployments.services import deployment_create
    from tests.adminapi_support import make_admin_key
    from tests.factories import make_key

    world = World()
    deployment = deployment_create(
        workspace=world.org, actor=Actor.system("tests"), name="Qwen3", model_id="@acme/qwen3", upstream_base_url="http://10.0.0.5:8000/v1"
    )
    make_key(world.org, name="billing-service", all_models=True, ip_allowlist=["10.0.0.0/8"])
    make_admin_key(world.org, name="terraform")
    page.set_viewport_size(VIEWPORTS["phone"])
    sign_in("olivia")
    for name, path, table in (
        ("secrets", "/w/acme/secrets/", "keys-table"),
        ("members", "/w/acme/members/", "members-table"),
        ("deployments", "/w/acme/deployments/", "deployments-table"),
        ("replicas", f"/w/acme/deployments/{deployment.public_id}/", "replica-table"),
        ("audit", "/w/acme/audit/", "audit-table"),
        ("admin-keys", "/w/acme/settings/admin-api/", "admin-keys-table"),
    ):
        page.goto(path)
        wrap = page.locator(f"[data-testid={table}]").locator("xpath=..")
        sizes = wrap.evaluate("e => [e.scrollWidth, e.clientWidth]")
        assert sizes[0] <= sizes[1], (name, sizes)  # nothing hidden to the right
        first_label = page.locator(f"[data-testid={table}] tbody td[data-label]").first
        assert first_label.evaluate("e => getComputedStyle(e, '::before').content") not in ("none", "normal", ""), name
        screenshot(page, f"phone-{name}")
    page.set_viewport_size(VIEWPORTS["desktop"])
    page.goto("/w/acme/secrets/")
    assert page.locator("[data-testid=keys-table] thead").is_visible()  # a table again at desktop width
