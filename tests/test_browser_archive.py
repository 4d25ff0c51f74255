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


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_audit_log_filters_pages_exports_and_is_reached_from_the_overview(page, sign_in, screenshot, viewport, monkeypatch):
    import csv
    import io

    import console.audit_log as audit_log
    from console.audit import Actor, audit_record

    monkeypatch.setattr(audit_log, "PAGE_SIZE", 4)
    world = World()
    for i in range(6):
        audit_record(
            workspace=world.org,
            actor=Actor(user=None, label="deploy-bot"),
            action="deployment.updated",
            target=world.sub,
            details={"step": i},
        )
    page.set_viewport_size(VIEWPORTS[viewport])
    sign_in("olivia")

    # The newest entry on the overview opens the log filtered to its target, with the entry marked.
    newest = AuditEvent.objects.filter(workspace=world.org).order_by("-created_at", "-id").first()
    page.locator("[data-testid=recent-activity] a").first.click()
    page.wait_for_url(f"**/w/acme/audit/?target={newest.target_id}&event={newest.id}#event-{newest.id}")
    assert page.locator(f"#event-{newest.id}.highlight").is_visible()
    screenshot(page, f"{viewport}-audit-from-overview")

    page.goto("/w/acme/")
    page.click("[data-testid=activity-all]")
    page.wait_for_url("**/w/acme/audit/")
    page.select_option("#id_actor", "deploy-bot")
    page.fill("#id_q", "step")
    page.click("[data-testid=audit-filters] button:has-text('Apply')")
    page.wait_for_url("**/audit/?q=step&actor=deploy-bot**")
    assert page.locator("[data-testid=audit-table] tbody tr").count() == 4
    screenshot(page, f"{viewport}-audit-filtered")

    page.click("[data-testid=audit-older]")
    page.wait_for_url("**after=**")
    assert "actor=deploy-bot" in page.url  # the filters follow the pages
    assert page.locator("[data-testid=audit-table] tbody tr").count() == 2
    screenshot(page, f"{viewport}-audit-older")

    with page.expect_download() as info:
        page.click("[data-testid=audit-csv]")
    rows = list(csv.reader(io.StringIO(open(info.value.path(), encoding="utf-8").read())))
    assert info.value.suggested_filename.startswith("audit-acme-filtered-")
    assert [r[1] for r in rows[1:]] == ["deploy-bot"] * 6


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_usage_own_usage_filter_and_flat_csv_download(page, sign_in, screenshot, viewport):
    import csv
    import io
    from datetime import timedelta

    from django.utils import timezone

    from tests.usage_factory import event, make_deployment, make_key
    from usage.services import usage_rollup

    world = World()
    now = timezone.now()
    chat = make_deployment(world.org, "chat", at=now - timedelta(days=30))
    for ws, key in ((world.org, make_key(world.org, "backend")), (world.sub, make_key(world.sub, "research"))):
        event(ws, now - timedelta(hours=1), key=key, deployment=chat)
    usage_rollup(now=now)
    page.set_viewport_size(VIEWPORTS[viewport])
    sign_in("olivia")
    page.goto("/w/acme/usage/")
    page.select_option("#id_workspace", "acme")
    page.wait_for_url("**workspace=acme**")
    page.wait_for_selector("[data-testid=active-filters]:has-text('Acme (own usage)')")
    screenshot(page, f"{viewport}-usage-own")

    with page.expect_download() as info:
        page.click("[data-testid=usage-flat-csv]")
    assert info.value.suggested_filename.startswith("usage-flat-acme-own-")
    rows = list(csv.DictReader(io.StringIO(open(info.value.path(), encoding="utf-8").read())))
    assert [(r["workspace"], r["key_name"], r["requests"]) for r in rows] == [("acme", "backend", "1")]


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_api_reference_is_reached_from_a_deployments_api_tab(page, sign_in, screenshot, viewport, settings):
    from tests.factories import make_deployment

    world = World()
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1", name="Chat")
    page.set_viewport_size(VIEWPORTS[viewport])
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    sign_in("dev")
    page.goto(f"/w/acme/deployments/{deployment.public_id}/?tab=api")
    page.click("[data-testid=api-reference-link]")
    page.wait_for_url("**/w/acme/api-reference/")
    assert page.locator("[data-testid=reference-base-url]").inner_text() == settings.PUBLIC_BASE_URL + "/v1"
    assert page.locator("[data-testid=api-reference] h2#request-flow-and-errors").is_visible()
    screenshot(page, f"{viewport}-api-reference")
    page.click("[data-testid=reference-toc] a[href='#limits']")
    assert page.evaluate("location.hash") == "#limits"
    # What a reader sees after following the link (the viewport, not the whole long page).
    from tests.conftest import ARTIFACTS

    page.screenshot(path=str(ARTIFACTS / "screenshots" / f"api-reference-{viewport}-limits-viewport.png"))
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e]  # nothing the CSP blocked
