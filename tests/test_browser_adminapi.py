"""A workspace admin manages admin keys and reads the API reference in Chromium, on a desktop and
a phone; the strict CSP holds (no console errors), and the key shown once then works on the API."""

from __future__ import annotations

import re

import httpx
import pytest

from adminapi.models import AdminKey
from console.models import AuditEvent
from tests.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ADMIN_KEY_RE = re.compile(r"gh_admin_[0-9A-Za-z]{46}")


@pytest.mark.parametrize("viewport", [(1440, 900), (390, 844)], ids=["desktop", "phone"])
def test_admin_creates_rotates_and_revokes_an_admin_key_and_reads_the_reference(page, sign_in, screenshot, live_server, viewport):
    World()
    page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in("adam")

    page.goto("/w/acme/settings/")
    page.locator("[data-testid=admin-api-settings]").get_by_role("link", name="Admin keys", exact=True).click()
    page.wait_for_url("**/settings/admin-api/")
    screenshot(page, "0-empty")
    page.fill("#id_name", "terraform")
    page.select_option("#id_role", "admin")
    page.fill("#id_ip_allowlist", "127.0.0.1")
    page.get_by_role("button", name="Create admin key").click()
    key = page.locator("[data-testid=new-key]").inner_text()
    assert ADMIN_KEY_RE.fullmatch(key)
    screenshot(page, "1-shown-once")
    answer = httpx.get(live_server.url + "/api/admin/v1/workspaces", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert answer.status_code == 200 and [w["slug"] for w in answer.json()["data"]] == ["acme", "acme-research"]

    page.get_by_role("link", name="I have stored the key — back to Admin API").click()
    row = page.locator("[data-admin-key=terraform]")
    assert "Admin" in row.inner_text() and key not in page.content()
    screenshot(page, "2-list")
    row.locator("select[name=grace]").select_option("none")
    row.get_by_role("button", name="Rotate").click()
    new_key = page.locator("[data-testid=new-key]").inner_text()
    assert ADMIN_KEY_RE.fullmatch(new_key) and new_key != key
    assert httpx.get(live_server.url + "/api/admin/v1/workspaces", headers={"authorization": f"Bearer {key}"}).status_code == 401
    page.get_by_role("link", name="I have stored the key — back to Admin API").click()
    page.locator("[data-admin-key=terraform]").get_by_role("button", name="Revoke").click()
    page.wait_for_selector("[data-admin-key=terraform] >> text=Revoked")
    assert httpx.get(live_server.url + "/api/admin/v1/workspaces", headers={"authorization": f"Bearer {new_key}"}).status_code == 401
    assert AdminKey.objects.get(name="terraform").revoked_at is not None
    assert AuditEvent.objects.filter(action__startswith="admin_key.").count() == 3
    screenshot(page, "3-revoked")

    page.goto("/w/acme/settings/admin-api/reference/")
    assert page.locator("[data-testid=operation]").count() >= 30
    operation = page.locator("details[data-testid=operation]", has_text="POST /api/admin/v1/workspaces/{ws}/api-keys").first
    operation.locator("summary").click()
    assert operation.get_by_text("Idempotency-Key").is_visible()
    screenshot(page, "4-reference")
    assert errors == []
