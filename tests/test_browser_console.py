from __future__ import annotations

import pytest

from console.models import AuditEvent, Invitation, Membership, Role
from tests.conftest import World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_owner_signs_in_switches_workspace_and_invites_member(page, sign_in, screenshot):
    world = World()

    sign_in("olivia")
    assert page.locator("h1").inner_text() == "Acme"
    screenshot(page, "1-overview")

    page.click("[data-testid=workspace-switcher] summary")
    page.click("text=Research")
    page.wait_for_url("**/w/acme-research/")
    assert page.locator(".switcher-name").inner_text() == "Research"

    page.click("text=Members")
    page.fill("#id_email", "nina@example.com")
    page.select_option("form[action$='members/invite/'] #id_role", "viewer")
    page.click("text=Send invitation")
    page.wait_for_selector("tr[data-invitation='nina@example.com']")
    assert "Invitation sent to nina@example.com" in page.locator(".flash").inner_text()
    screenshot(page, "2-member-invited")

    # Nothing changes until nina accepts (tests/test_browser_signin.py follows the email's link).
    assert not Membership.objects.filter(workspace=world.sub, user__email="nina@example.com").exists()
    assert Invitation.objects.get(workspace=world.sub, email="nina@example.com").role == Role.VIEWER
    assert AuditEvent.objects.filter(workspace=world.sub, action="invitation.created", actor=world.owner).exists()

    # Secrets is in the bottom-left corner of the shell.
    secrets_box = page.locator("[data-testid=nav-secrets]").bounding_box()
    assert secrets_box["x"] < 100 and secrets_box["y"] > 700


def test_admin_creates_sub_workspace_in_browser(page, sign_in, screenshot):
    World()
    sign_in("adam")
    page.click(".page-head a:has-text('New sub-workspace')")
    page.fill("#id_name", "Sales")
    page.select_option("#id_time_zone", "Europe/Berlin")
    page.click("button:has-text('Create sub-workspace')")
    page.wait_for_url("**/w/sales/members/")
    assert "Sub-workspace “Sales” created" in page.locator(".flash").inner_text()
    screenshot(page, "sub-workspace-created")
