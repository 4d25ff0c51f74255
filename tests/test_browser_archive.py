"""Archive, unarchive and delete a sub-workspace from the overview, in Chromium, at desktop and phone widths."""

from __future__ import annotations

import pytest

from console.models import AuditEvent, Workspace
from tests.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "mobile": {"width": 390, "height": 844}}


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_admin_archives_unarchives_and_deletes_a_sub_workspace(page, sign_in, screenshot, viewport):
    world = World()
    page.set_viewport_size(VIEWPORTS[viewport])
    asked: list[str] = []

    def confirm(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    sign_in("adam")
    row = page.locator("[data-testid=sub-workspace-acme-research]")
    screenshot(page, f"{viewport}-1-overview")

    row.locator("button:has-text('Archive')").click()
    page.wait_for_selector(".flash")
    assert asked and asked[-1].startswith("Archive Research?")
    assert "Research is archived" in page.locator(".flash").inner_text()
    assert row.locator(".badge:has-text('Archived')").is_visible()
    world.sub.refresh_from_db()
    assert world.sub.archived_at is not None
    screenshot(page, f"{viewport}-2-archived")

    # The archived workspace stays readable, with a banner that says why nothing can change.
    row.locator("a:has-text('Research')").click()
    page.wait_for_url("**/w/acme-research/")
    assert "Research is archived" in page.locator("[data-testid=archived-banner]").inner_text()
    screenshot(page, f"{viewport}-3-archived-workspace")

    page.goto("/w/acme/")
    row.locator("button:has-text('Unarchive')").click()
    page.wait_for_selector(".flash")
    assert "Research is active again" in page.locator(".flash").inner_text()
    world.sub.refresh_from_db()
    assert world.sub.archived_at is None

    # A declined confirmation changes nothing.
    page.remove_listener("dialog", confirm)
    page.once("dialog", lambda dialog: dialog.dismiss())
    row.locator("button:has-text('Delete')").click()
    assert Workspace.objects.filter(slug="acme-research").exists()

    page.on("dialog", confirm)
    row.locator("button:has-text('Delete')").click()
    page.wait_for_selector(".flash:has-text('was deleted')")
    assert asked[-1].startswith("Delete Research with its members, keys and audit log?")
    assert not Workspace.objects.filter(slug="acme-research").exists()
    assert AuditEvent.objects.filter(workspace=world.org, action="sub_workspace.deleted", actor=world.admin).exists()
    screenshot(page, f"{viewport}-4-deleted")
