"""Archiving and deleting a sub-workspace: the gateway refuses its keys at once on every process
(live processes, PostgreSQL, Redis, the demo model), its history stays readable to the default
workspace's admins, unarchiving restores it, and only a sub-workspace without usage can be deleted."""

from __future__ import annotations

import re

import httpx
import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from console.audit import Actor
from console.models import AuditEvent, Membership, Workspace
from console.services import workspace_archive, workspace_delete, workspace_unarchive
from deployments.services import model_grant_add
from keys.changes import GENERATION_KEY
from keys.models import ApiKey
from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways = gateway_support.demo, gateway_support.gateways  # live-process fixtures
ACTOR = Actor.system("tests")


@pytest.fixture
def deployment(world, demo):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    model_grant_add(deployment=deployment, workspace=world.sub, actor=ACTOR)
    return deployment


def post(server, key: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def generation(api_key_id: int) -> int:
    return int(redis_client().hget(GENERATION_KEY, str(api_key_id)) or 0)


def test_archiving_refuses_the_sub_workspaces_keys_on_every_process_and_unarchiving_restores(world, deployment, gateways):
    _, plaintext = make_key(world.sub, all_models=True)
    _, org_plaintext = make_key(world.org, all_models=True)
    body = chat_body(deployment.model_id, max_tokens=5)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]  # cached in both

    workspace_archive(workspace=world.sub, actor=ACTOR)

    # No waiting: the archive bumped the keys' generations, which every admission compares.
    refused = [post(server, plaintext, body) for server in gateways]
    assert [r.status_code for r in refused] == [403, 403]
    for r in refused:
        assert r.json() == {
            "error": {
                "message": "This key belongs to an archived workspace; its keys are refused until an admin unarchives it.",
                "type": "permission_error",
                "param": None,
                "code": "workspace_archived",
            }
        }
    # Only the archived workspace is affected: its parent's keys work.
    assert [post(server, org_plaintext, body).status_code for server in gateways] == [200, 200]
    # The refusals are on the archived workspace's record, with their reason.
    assert UsageEvent.objects.filter(workspace=world.sub, error_code="workspace_archived").count() == 2

    workspace_unarchive(workspace=world.sub, actor=ACTOR)
    assert [post(server, plaintext, body).status_code for server in gateways] == [200, 200]


def test_archive_and_unarchive_are_audited_on_both_sides_and_bump_every_key(world):
    key, _ = make_key(world.sub, all_models=True)
    before = generation(key.id)
    assert world.sub.archived_at is None

    workspace_archive(workspace=world.sub, actor=ACTOR)
    world.sub.refresh_from_db()
    assert world.sub.archived_at is not None
    assert generation(key.id) == before + 1
    assert AuditEvent.objects.filter(workspace=world.org, action="sub_workspace.archived", target_label="Research").count() == 1
    assert AuditEvent.objects.filter(workspace=world.sub, action="workspace.archived").count() == 1

    workspace_archive(workspace=world.sub, actor=ACTOR)  # again: nothing changes, nothing is recorded twice
    assert AuditEvent.objects.filter(workspace=world.org, action="sub_workspace.archived").count() == 1
    assert generation(key.id) == before + 1

    workspace_unarchive(workspace=world.sub, actor=ACTOR)
    world.sub.refresh_from_db()
    assert world.sub.archived_at is None
    assert generation(key.id) == before + 2
    assert AuditEvent.objects.filter(workspace=world.org, action="sub_workspace.unarchived").count() == 1


def test_a_default_workspace_cannot_be_archived_or_deleted(world):
    with pytest.raises(ValidationError):
        workspace_archive(workspace=world.org, actor=ACTOR)
    with pytest.raises(ValidationError):
        workspace_delete(workspace=world.org, actor=ACTOR)
    world.org.refresh_from_db()
    assert world.org.archived_at is None


def test_archived_sub_workspace_is_read_only_and_seen_by_default_admins_only(world, client_for):
    workspace_archive(workspace=world.sub, actor=ACTOR)
    overview = reverse("workspace_overview", kwargs={"ws": "acme-research"})
    usage = reverse("usage_page", kwargs={"ws": "acme-research"})
    audit = reverse("audit_page", kwargs={"ws": "acme-research"})
    billing = reverse("billing_page", kwargs={"ws": "acme-research"})

    for user in (world.owner, world.admin):
        client = client_for(user)
        assert client.get(overview).status_code == 200
        assert client.get(usage).status_code == 200
        assert client.get(audit).status_code == 200
        assert client.get(billing).status_code == 200
        # Writes are refused while archived, with the reason.
        response = client.post(reverse("api_key_create", kwargs={"ws": "acme-research"}), {"name": "late", "all_models": "on"})
        assert response.status_code == 403
        assert not ApiKey.objects.filter(name="late").exists()

    # Its own members no longer see it (it is gone from their switcher too), nor do developers of the parent.
    assert client_for(world.sub_member).get(overview).status_code == 404
    assert client_for(world.developer).get(overview).status_code == 404
    assert not Workspace.objects.visible_to(world.sub_member).filter(pk=world.sub.pk).exists()

    workspace_unarchive(workspace=world.sub, actor=ACTOR)
    assert client_for(world.sub_member).get(overview).status_code == 200


def test_delete_is_refused_for_a_sub_workspace_with_usage(world, deployment, gateways):
    _, plaintext = make_key(world.sub, all_models=True)
    assert post(gateways[0], plaintext, chat_body(deployment.model_id, max_tokens=5)).status_code == 200

    with pytest.raises(ValidationError, match="has usage"):
        workspace_delete(workspace=world.sub, actor=ACTOR)
    assert Workspace.objects.filter(pk=world.sub.pk).exists()
    assert not AuditEvent.objects.filter(action="sub_workspace.deleted").exists()


def test_delete_removes_an_unused_sub_workspace_and_records_it_in_the_default_workspace(world, gateways, deployment):
    key, plaintext = make_key(world.sub, all_models=True)
    sub_audit = AuditEvent.objects.filter(workspace=world.sub).count()
    assert sub_audit > 0  # the trigger would refuse deleting these outside an audited erasure

    workspace_delete(workspace=world.sub, actor=ACTOR)

    assert not Workspace.objects.filter(slug="acme-research").exists()
    assert not ApiKey.objects.filter(pk=key.pk).exists()
    assert not Membership.objects.filter(user=world.sub_member).exists()
    deleted = AuditEvent.objects.get(workspace=world.org, action="sub_workspace.deleted")
    assert deleted.details == {"slug": "acme-research", "members": 1, "keys": 1}
    assert post(gateways[0], plaintext, chat_body(deployment.model_id, max_tokens=5)).status_code == 401


# --- the console's buttons -------------------------------------------------------------------


def _url(name: str, sub: str = "acme-research", ws: str = "acme") -> str:
    return reverse(name, kwargs={"ws": ws, "sub": sub})


def test_default_admin_archives_unarchives_and_deletes_from_the_console(world, client_for):
    client = client_for(world.admin)
    overview = client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.decode()
    assert _url("sub_workspace_archive") in overview and _url("sub_workspace_delete") in overview

    response = client.post(_url("sub_workspace_archive"))
    assert response.status_code == 302
    world.sub.refresh_from_db()
    assert world.sub.archived_at is not None
    archived_page = client.get(reverse("workspace_overview", kwargs={"ws": "acme-research"})).content.decode()
    assert 'data-testid="archived-banner"' in archived_page

    assert client.post(_url("sub_workspace_unarchive")).status_code == 302
    world.sub.refresh_from_db()
    assert world.sub.archived_at is None

    assert client.post(_url("sub_workspace_delete")).status_code == 302
    assert not Workspace.objects.filter(slug="acme-research").exists()


@pytest.mark.parametrize("role", ["developer", "viewer", "sub_member", "outsider"])
def test_only_default_workspace_admins_may_archive_or_delete(world, client_for, role):
    client = client_for(world.user(role))
    expected = 403 if role in ("developer", "viewer") else 404  # members see the workspace; others must not learn it exists
    for name in ("sub_workspace_archive", "sub_workspace_unarchive", "sub_workspace_delete"):
        assert client.post(_url(name)).status_code == expected
    # Nor from the sub-workspace's own address, where its members are.
    assert client.post(_url("sub_workspace_archive", ws="acme-research")).status_code in (403, 404)
    world.sub.refresh_from_db()
    assert world.sub.archived_at is None
    assert not AuditEvent.objects.filter(action__startswith="sub_workspace.", action__endswith="archived").exists()


def test_a_sub_workspace_of_another_organisation_is_404(world, client_for):
    assert client_for(world.outsider).post(_url("sub_workspace_archive", ws="globex")).status_code == 404
    world.sub.refresh_from_db()
    assert world.sub.archived_at is None


def test_the_console_refuses_deleting_a_sub_workspace_with_usage(world, client_for):
    from django.utils import timezone

    from tests.usage_factory import event

    event(world.sub, timezone.now())
    client = client_for(world.owner)
    overview = client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.decode()
    assert _url("sub_workspace_delete") not in overview  # no Delete button for it
    response = client.post(_url("sub_workspace_delete"), follow=True)
    assert "cannot be deleted: it has usage" in response.content.decode()
    assert Workspace.objects.filter(slug="acme-research").exists()


def test_no_key_can_be_created_in_an_archived_sub_workspace(world):
    from keys.services import api_key_create

    workspace_archive(workspace=world.sub, actor=ACTOR)
    with pytest.raises(ValidationError, match="archived"):
        api_key_create(workspace=world.sub, actor=ACTOR, name="late", all_models=True)
    assert not ApiKey.objects.filter(workspace=world.sub).exists()


def test_the_switcher_marks_an_archived_sub_workspace_for_default_admins(world, client_for):
    workspace_archive(workspace=world.sub, actor=ACTOR)
    body = client_for(world.owner).get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.decode()
    assert re.search(r'href="/w/acme-research/" class="child">Research <small>archived</small></a>', body)
