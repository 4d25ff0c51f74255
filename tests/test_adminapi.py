"""The admin API through Django's test client: admin keys, refusals, one error shape, idempotent
creates, cursor pagination, the rate limit, and the role matrix with the 404-for-outsiders walk
over every operation the published schema lists."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from adminapi.api import api
from adminapi.models import AdminKey, AdminKeySecret, IdempotentRequest
from adminapi.services import admin_key_revoke, admin_key_rotate
from console.audit import Actor
from console.models import AuditEvent, Invitation, Membership, User, Workspace
from keys import tokens
from keys.models import ApiKey
from lib.redis import redis_client
from tests.adminapi_support import call, make_admin_key
from tests.factories import make_deployment, make_key
from usage.services import budget_set


@pytest.fixture
def api_client():
    return Client(enforce_csrf_checks=True)


# ---- admin keys --------------------------------------------------------------------------------


def test_admin_key_is_stored_as_a_digest_with_its_own_prefix(world):
    admin_key, plaintext = make_admin_key(world.org)
    assert plaintext.startswith("gh_admin_") and tokens.is_well_formed(plaintext, tokens.ADMIN_PREFIX)
    assert not tokens.is_well_formed(plaintext)  # an admin key is not an application key
    secret = AdminKeySecret.objects.get(admin_key=admin_key)
    assert secret.digest == tokens.digest(plaintext, "test-pepper-" + "y" * 32) and plaintext not in secret.digest
    assert admin_key.hint == f"gh_admin_…{plaintext[-4:]}"
    event = AuditEvent.objects.get(action="admin_key.created")
    assert plaintext not in str(event.details)


def test_application_key_and_garbage_get_401_json(world, api_client):
    _, app_key = make_key(world.org, all_models=True)
    for key in (app_key, "gh_admin_nope", None):
        response = call(api_client, "get", "/workspaces", key)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
        assert response["Content-Type"] == "application/json; charset=utf-8"


def test_signed_in_browser_session_cannot_call_the_api(world, client_for):
    browser = client_for(world.owner)  # a real session cookie, as a signed-in browser has
    assert browser.get(reverse("workspace_settings", kwargs={"ws": "acme"})).status_code == 200
    response = browser.get("/api/admin/v1/workspaces")
    assert response.status_code == 401 and response.json()["error"]["code"] == "unauthenticated"
    before = Workspace.objects.count()
    response = browser.post("/api/admin/v1/workspaces/acme/sub-workspaces", {"name": "X", "slug": "x-sub"}, content_type="application/json")
    assert response.status_code == 401 and Workspace.objects.count() == before


def test_admin_key_answers_without_csrf_token_and_sets_no_cookie(world, api_client):
    _, key = make_admin_key(world.org)
    response = call(api_client, "post", "/workspaces/acme/sub-workspaces", key, {"name": "Platform", "slug": "acme-platform"})
    assert response.status_code == 201, response.content
    assert not response.cookies


def test_revoked_expired_rotated_and_disallowed_ip_admin_keys_are_refused(world, api_client):
    revoked, revoked_key = make_admin_key(world.org, name="revoked")
    admin_key_revoke(admin_key=revoked, actor=Actor.system("tests"))
    rotated, old_key = make_admin_key(world.org, name="rotated")
    new_key = admin_key_rotate(admin_key=rotated, actor=Actor.system("tests"), grace=dt.timedelta(0))
    _, walled_key = make_admin_key(world.org, name="walled", ip_allowlist=["10.0.0.0/8"])
    expiring, expiring_key = make_admin_key(world.org, name="expiring", expires_at=timezone.now() + dt.timedelta(hours=1))
    AdminKey.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    for key, words in ((revoked_key, "revoked"), (old_key, "grace"), (walled_key, "address"), (expiring_key, "expired")):
        response = call(api_client, "get", "/workspaces", key)
        assert response.status_code == 401 and words in response.json()["error"]["message"]
    assert call(api_client, "get", "/workspaces", new_key).status_code == 200


def test_console_creates_rotates_and_revokes_admin_keys_and_audits_them(world, client_for):
    client = client_for(world.admin)
    url = reverse("admin_keys_page", kwargs={"ws": "acme"})
    assert client.get(url).status_code == 200
    response = client.post(url, {"name": "terraform", "role": "viewer", "ip_allowlist": "", "expires_at": ""})
    assert response.status_code == 200
    plaintext = re.search(rb"gh_admin_[0-9A-Za-z]{46}", response.content).group().decode()
    admin_key = AdminKey.objects.get(name="terraform")
    assert (admin_key.role, admin_key.workspace) == ("viewer", world.org)
    assert plaintext.encode() not in client.get(url).content  # shown once
    rotated = client.post(reverse("admin_key_rotate", kwargs={"ws": "acme", "key": admin_key.public_id}), {"grace": "none"})
    new = re.search(rb"gh_admin_[0-9A-Za-z]{46}", rotated.content).group().decode()
    assert new != plaintext
    assert call(Client(), "get", "/workspaces", plaintext).status_code == 401
    assert call(Client(), "get", "/workspaces", new).status_code == 200
    client.post(reverse("admin_key_revoke", kwargs={"ws": "acme", "key": admin_key.public_id}))
    assert call(Client(), "get", "/workspaces", new).status_code == 401
    actions = list(AuditEvent.objects.filter(target_type="adminkey").order_by("id").values_list("action", "actor_label"))
    assert actions == [("admin_key.created", "adam"), ("admin_key.rotated", "adam"), ("admin_key.revoked", "adam")]
    # Only admins manage admin keys.
    assert client_for(world.viewer).get(url).status_code == 403
    assert client_for(world.outsider).get(url).status_code == 404


def test_reference_page_renders_every_operation_from_the_schema(world, client_for):
    response = client_for(world.viewer).get(reverse("admin_api_reference", kwargs={"ws": "acme"}))
    assert response.status_code == 200
    schema = api.get_openapi_schema(path_prefix="/api/admin/v1")
    operations = [(m.upper(), p) for p, ms in schema["paths"].items() for m in ms]
    assert response.content.count(b'data-testid="operation"') == len(operations)
    for method, path in operations:
        assert f"<summary><code>{method} {path}</code>".encode() in response.content
    assert b"<script>" not in response.content and b"cdn" not in response.content.lower()


def test_schema_is_openapi_3_1_and_needs_no_key(api_client):
    response = api_client.get("/api/admin/v1/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.1")
    assert schema["components"]["securitySchemes"]["AdminKeyAuth"]["scheme"] == "bearer"


# ---- behaviour ---------------------------------------------------------------------------------


def test_audit_log_names_the_admin_key_as_actor(world, api_client):
    admin_key, key = make_admin_key(world.org, name="tf")
    response = call(api_client, "patch", "/workspaces/acme-research", key, {"name": "Research & Dev"})
    assert response.status_code == 200 and response.json()["name"] == "Research & Dev"
    event = AuditEvent.objects.get(action="workspace.updated")
    assert event.actor is None and event.actor_label == f"admin key tf ({admin_key.hint})"
    listed = call(api_client, "get", "/workspaces/acme-research/audit-events?action=workspace", key).json()
    assert [e["actor"] for e in listed["data"]][0] == event.actor_label


def test_validation_errors_use_one_shape_and_change_nothing(world, api_client):
    _, key = make_admin_key(world.org)
    before = Workspace.objects.count()
    taken = call(api_client, "post", "/workspaces/acme/sub-workspaces", key, {"name": "Dup", "slug": "acme-research"})
    assert taken.status_code == 422
    assert taken.json()["error"]["code"] == "validation_failed" and "slug" in taken.json()["error"]["fields"]
    malformed = call(api_client, "post", "/workspaces/acme/sub-workspaces", key, {"name": 5})
    assert malformed.status_code == 422 and malformed.json()["error"]["code"] == "invalid_request"
    assert Workspace.objects.count() == before


def test_idempotency_key_replays_the_first_response_and_refuses_a_different_body(world, api_client):
    _, key = make_admin_key(world.org)
    body = {"name": "ci", "all_models": True}
    first = call(api_client, "post", "/workspaces/acme/api-keys", key, body, HTTP_IDEMPOTENCY_KEY="run-42")
    assert first.status_code == 201 and first.json()["secret"].startswith("gh_live_")
    again = call(api_client, "post", "/workspaces/acme/api-keys", key, body, HTTP_IDEMPOTENCY_KEY="run-42")
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json()["api_key"] == first.json()["api_key"] and again.json()["secret"] is None  # the secret is never stored
    assert ApiKey.objects.filter(name="ci").count() == 1
    other = call(api_client, "post", "/workspaces/acme/api-keys", key, {"name": "ci2", "all_models": True}, HTTP_IDEMPOTENCY_KEY="run-42")
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    assert not ApiKey.objects.filter(name="ci2").exists()
    # A failed create stores nothing: the retry runs again, and a corrected body may use the same key.
    bad = call(api_client, "post", "/workspaces/acme/api-keys", key, {"name": "bad name"}, HTTP_IDEMPOTENCY_KEY="run-43")
    assert bad.status_code == 422
    assert (
        call(api_client, "post", "/workspaces/acme/api-keys", key, {"name": "bad name"}, HTTP_IDEMPOTENCY_KEY="run-43").status_code == 422
    )
    fixed = call(api_client, "post", "/workspaces/acme/api-keys", key, {"name": "good", "all_models": True}, HTTP_IDEMPOTENCY_KEY="run-43")
    assert fixed.status_code == 201 and "Idempotent-Replayed" not in fixed
    # Records are kept a day: after that the key may be used for a new create.
    IdempotentRequest.objects.filter(key="run-42").update(created_at=timezone.now() - dt.timedelta(hours=25))
    later = call(api_client, "post", "/workspaces/acme/api-keys", key, {"name": "ci3", "all_models": True}, HTTP_IDEMPOTENCY_KEY="run-42")
    assert later.status_code == 201 and later.json()["secret"]
    assert IdempotentRequest.objects.filter(key="run-42").count() == 1


def test_member_created_with_a_one_time_password_shown_once(world, api_client):
    _, key = make_admin_key(world.org)
    body = {"username": "robot-ops", "email": "ops@example.com", "role": "developer"}
    first = call(api_client, "post", "/workspaces/acme/members", key, body, HTTP_IDEMPOTENCY_KEY="m1")
    assert first.status_code == 201, first.content
    password = first.json()["one_time_password"]
    user = User.objects.get(username="robot-ops")
    assert user.must_change_password and user.check_password(password) and password not in user.password
    again = call(api_client, "post", "/workspaces/acme/members", key, body, HTTP_IDEMPOTENCY_KEY="m1")
    assert again.json()["one_time_password"] is None and again.json()["member"] == first.json()["member"]
    assert not IdempotentRequest.objects.filter(response_body__icontains=password).exists()
    owner = call(api_client, "post", "/workspaces/acme/members", key, {"username": "boss", "role": "owner"})
    assert owner.status_code == 422 and "role" in owner.json()["error"]["fields"]  # an admin cannot make an owner
    taken = call(api_client, "post", "/workspaces/acme/members", key, {"username": "robot-ops"})
    assert taken.status_code == 422 and "username" in taken.json()["error"]["fields"]


def test_unknown_paths_and_methods_answer_in_the_error_shape(world, api_client):
    _, key = make_admin_key(world.org)
    missing = call(api_client, "get", "/no-such-thing", key)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = call(api_client, "delete", "/workspaces", key)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed" and "GET" in wrong["Allow"]


def test_cursor_pagination_walks_every_row_once(world, api_client):
    _, key = make_admin_key(world.org)
    for i in range(5):
        make_key(world.org, name=f"page-{i}")
    seen, cursor = [], None
    while True:
        page = call(api_client, "get", "/workspaces/acme/api-keys?limit=2" + (f"&cursor={cursor}" if cursor else ""), key).json()
        seen += [k["name"] for k in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"page-{i}" for i in range(5)]
    assert call(api_client, "get", "/workspaces/acme/api-keys?cursor=%%%", key).json()["error"]["code"] == "invalid_cursor"


def test_rate_limit_per_admin_key(world, api_client, settings):
    settings.ADMIN_API_REQUESTS_PER_MINUTE = 3
    busy, key = make_admin_key(world.org, name="busy")
    _, other = make_admin_key(world.org, name="quiet")
    # Frozen inside one minute, so every request lands in the same window; the window's counter
    # in Redis is cleared first (a run in the same minute may have used this key id).
    start = timezone.now().replace(second=5, microsecond=0)
    redis_client().delete(f"ratelimit:adminapi:{busy.pk}:{int(start.timestamp() // 60)}")
    with time_machine.travel(start, tick=False):
        statuses = [call(api_client, "get", "/workspaces", key).status_code for _ in range(5)]
        limited = call(api_client, "get", "/workspaces", key)
        assert call(api_client, "get", "/workspaces", other).status_code == 200  # per key, not per client
    assert statuses == [200, 200, 200, 429, 429]
    assert limited.json()["error"]["code"] == "rate_limited" and limited["Retry-After"] == "55"
    with time_machine.travel(start + dt.timedelta(minutes=1), tick=False):
        assert call(api_client, "get", "/workspaces", key).status_code == 200  # a new minute


def test_archiving_through_the_api_refuses_the_sub_workspace_key_and_its_gateway_keys(world, api_client):
    _, org_key = make_admin_key(world.org)
    _, sub_key = make_admin_key(world.sub)
    assert call(api_client, "get", "/workspaces/acme-research", sub_key).status_code == 200
    archived = call(api_client, "post", "/workspaces/acme/sub-workspaces/acme-research/archive", org_key)
    assert archived.status_code == 200 and archived.json()["archived_at"]
    assert AuditEvent.objects.filter(action__contains="archived").exists()
    # Kept for the default workspace's admins only, read-only.
    assert call(api_client, "get", "/workspaces/acme-research", sub_key).status_code == 404
    assert call(api_client, "get", "/workspaces/acme-research/usage", org_key).status_code == 200
    assert call(api_client, "patch", "/workspaces/acme-research", org_key, {"name": "No"}).status_code == 403
    assert call(api_client, "post", "/workspaces/acme/sub-workspaces/acme-research/unarchive", org_key).json()["archived_at"] is None
    assert call(api_client, "get", "/workspaces/acme-research", sub_key).status_code == 200


@pytest.mark.parametrize("path", ["/workspaces/acme/deployments", "/workspaces/acme/api-keys", "/workspaces/acme/members"])
def test_list_query_count_does_not_grow_with_rows(world, api_client, path):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, key = make_admin_key(world.org)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert call(api_client, "get", path, key).status_code == 200
        return len(queries)

    def add(i: int) -> None:
        deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1", model_id=f"@acme/q-{i}")
        make_key(world.org, name=f"q-{i}", deployments=[deployment])
        Membership.objects.create(workspace=world.org, user=User.objects.create_user(f"q{i}"), role="viewer")

    count()  # records the key's last use (at most one write a minute), so later calls only read
    add(0)
    one = count()
    for i in range(1, 6):
        add(i)
    assert count() == one


def test_patch_deployment_changes_only_the_given_fields_and_audits(world, api_client):
    _, key = make_admin_key(world.org)
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1", model_id="@acme/old", description="keep me")
    from deployments.models import DeploymentReplica

    DeploymentReplica.objects.create(deployment=deployment, base_url="http://127.0.0.1:9/v1")
    response = call(
        api_client, "patch", f"/workspaces/acme/deployments/{deployment.public_id}", key, {"name": "New name", "model_id": "@acme/new"}
    )
    assert response.status_code == 200, response.content
    assert (response.json()["name"], response.json()["model_id"], response.json()["description"]) == ("New name", "@acme/new", "keep me")
    deployment.refresh_from_db()
    assert (deployment.upstream_base_url, deployment.timeout_seconds) == ("http://127.0.0.1:9/v1", 120)
    event = AuditEvent.objects.get(action="deployment.updated")
    assert set(event.details) == {"name", "model_id"}
    bad = call(api_client, "patch", f"/workspaces/acme/deployments/{deployment.public_id}", key, {"name": "  "})
    assert bad.status_code == 422 and bad.json()["error"]["fields"]["name"]


def test_sub_workspace_admin_key_reaches_only_its_sub_workspace(world, api_client):
    _, key = make_admin_key(world.sub)
    assert [w["slug"] for w in call(api_client, "get", "/workspaces", key).json()["data"]] == ["acme-research"]
    assert call(api_client, "get", "/workspaces/acme", key).status_code == 404
    assert call(api_client, "get", "/workspaces/acme-research/members", key).status_code == 200


# ---- the role matrix and the outsider walk, over every operation in the schema ----------------

# (method, path) → the role an admin key needs; every operation the schema lists must be here.
MIN_ROLE = {
    ("GET", "/workspaces"): "viewer",
    ("GET", "/workspaces/{ws}"): "viewer",
    ("PATCH", "/workspaces/{ws}"): "admin",
    ("POST", "/workspaces/{ws}/sub-workspaces"): "admin",
    ("POST", "/workspaces/{ws}/sub-workspaces/{sub}/archive"): "admin",
    ("POST", "/workspaces/{ws}/sub-workspaces/{sub}/unarchive"): "admin",
    ("GET", "/workspaces/{ws}/members"): "viewer",
    ("POST", "/workspaces/{ws}/members"): "admin",
    ("PATCH", "/workspaces/{ws}/members/{member_id}"): "admin",
    ("DELETE", "/workspaces/{ws}/members/{member_id}"): "admin",
    ("GET", "/workspaces/{ws}/invitations"): "viewer",
    ("POST", "/workspaces/{ws}/invitations"): "admin",
    ("DELETE", "/workspaces/{ws}/invitations/{invitation_id}"): "admin",
    ("GET", "/workspaces/{ws}/audit-events"): "viewer",
    ("GET", "/workspaces/{ws}/deployments"): "viewer",
    ("POST", "/workspaces/{ws}/deployments"): "admin",
    ("GET", "/workspaces/{ws}/deployments/{deployment_id}"): "viewer",
    ("PATCH", "/workspaces/{ws}/deployments/{deployment_id}"): "admin",
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/stop"): "admin",
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/start"): "admin",
    ("GET", "/workspaces/{ws}/deployments/{deployment_id}/prices"): "viewer",
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/prices"): "admin",
    ("GET", "/workspaces/{ws}/deployments/{deployment_id}/replicas"): "admin",
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/replicas"): "admin",
    ("PATCH", "/workspaces/{ws}/deployments/{deployment_id}/replicas/{replica_id}"): "admin",
    ("DELETE", "/workspaces/{ws}/deployments/{deployment_id}/replicas/{replica_id}"): "admin",
    ("GET", "/workspaces/{ws}/deployments/{deployment_id}/grants"): "admin",
    ("PUT", "/workspaces/{ws}/deployments/{deployment_id}/grants/{sub}"): "admin",
    ("DELETE", "/workspaces/{ws}/deployments/{deployment_id}/grants/{sub}"): "admin",
    ("GET", "/workspaces/{ws}/api-keys"): "viewer",
    ("POST", "/workspaces/{ws}/api-keys"): "admin",
    ("GET", "/workspaces/{ws}/api-keys/{key_id}"): "viewer",
    ("PATCH", "/workspaces/{ws}/api-keys/{key_id}"): "admin",
    ("POST", "/workspaces/{ws}/api-keys/{key_id}/rotate"): "admin",
    ("POST", "/workspaces/{ws}/api-keys/{key_id}/revoke"): "admin",
    ("GET", "/workspaces/{ws}/budget"): "viewer",
    ("PUT", "/workspaces/{ws}/budget"): "admin",
    ("DELETE", "/workspaces/{ws}/budget"): "admin",
    ("GET", "/workspaces/{ws}/usage"): "viewer",
}
BODIES = {
    ("PATCH", "/workspaces/{ws}"): {"name": "Renamed"},
    ("POST", "/workspaces/{ws}/sub-workspaces"): {"name": "New", "slug": "acme-new"},
    ("PATCH", "/workspaces/{ws}/members/{member_id}"): {"role": "developer"},
    ("POST", "/workspaces/{ws}/members"): {"username": "newbie", "role": "viewer"},
    ("POST", "/workspaces/{ws}/invitations"): {"email": "new@example.com", "role": "viewer"},
    ("POST", "/workspaces/{ws}/deployments"): {"name": "D", "model_id": "@acme/new", "upstream_base_url": "http://127.0.0.1:9/v1"},
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/prices"): {"input_per_million": "1.5"},
    ("PATCH", "/workspaces/{ws}/deployments/{deployment_id}"): {"name": "Renamed", "timeout_seconds": 30},
    ("POST", "/workspaces/{ws}/deployments/{deployment_id}/replicas"): {"base_url": "http://127.0.0.1:10/v1"},
    ("PATCH", "/workspaces/{ws}/deployments/{deployment_id}/replicas/{replica_id}"): {"weight": 3},
    ("POST", "/workspaces/{ws}/api-keys"): {"name": "matrix", "all_models": True},
    ("PATCH", "/workspaces/{ws}/api-keys/{key_id}"): {"tpm_limit": 1000},
    ("POST", "/workspaces/{ws}/api-keys/{key_id}/rotate"): {"grace_seconds": 60},
    ("PUT", "/workspaces/{ws}/budget"): {"amount": "100.00", "currency": "USD"},
}


def _operations() -> list[tuple[str, str]]:
    schema = api.get_openapi_schema(path_prefix="")
    return [(method.upper(), path) for path, methods in schema["paths"].items() for method in methods]


def test_matrix_covers_every_operation_in_the_schema():
    assert sorted(_operations()) == sorted(MIN_ROLE)


def _fill(world, path: str) -> str:
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1", model_id=f"@acme/m-{Workspace.objects.count()}")
    from deployments.models import DeploymentReplica, ModelGrant

    DeploymentReplica.objects.create(deployment=deployment, base_url="http://127.0.0.1:9/v1")
    replica = DeploymentReplica.objects.create(deployment=deployment, base_url="http://127.0.0.1:11/v1")
    ModelGrant.objects.create(deployment=deployment, workspace=world.sub)
    api_key, _ = make_key(world.org, all_models=True)
    invitation = Invitation.objects.create(
        workspace=world.org, email="inv@example.com", role="viewer", token_digest="x" * 64, expires_at=timezone.now() + dt.timedelta(days=1)
    )
    budget_set(workspace=world.org, amount=Decimal("50"), currency="USD", block_requests=False, actor=Actor.system("tests"))
    membership = Membership.objects.get(workspace=world.org, user=world.viewer)
    values = {
        "ws": "acme",
        "member_id": membership.public_id,
        "invitation_id": invitation.public_id,
        "deployment_id": deployment.public_id,
        "replica_id": replica.public_id,
        "key_id": api_key.public_id,
        "sub": "acme-research",
    }
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]), path)


@pytest.mark.parametrize(("method", "path"), sorted(MIN_ROLE))
@pytest.mark.parametrize("who", ["admin", "viewer", "outsider", "sub_admin"])
def test_role_matrix_and_outsider_walk(world, api_client, method, path, who):
    holder = {"admin": world.org, "viewer": world.org, "outsider": world.other_org, "sub_admin": world.sub}[who]
    _, key = make_admin_key(holder, role="viewer" if who == "viewer" else "admin")
    url = _fill(world, path)
    audit_before = AuditEvent.objects.count()
    response = call(api_client, method, url, key, BODIES.get((method, path)))
    assert response["Content-Type"].startswith("application/json") or response.status_code == 204
    if path == "/workspaces":
        assert response.status_code == 200
    elif who in ("outsider", "sub_admin"):
        # Another organisation's key, or a sub-workspace's key asking about its default
        # workspace: exactly the answer for an id that does not exist.
        assert response.status_code == 404, response.content
        assert response.json() == {"error": {"code": "not_found", "message": "Not found.", "fields": None}}
        assert AuditEvent.objects.count() == audit_before
    elif who == "viewer" and MIN_ROLE[(method, path)] == "admin":
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "permission_denied"
        assert AuditEvent.objects.count() == audit_before
    else:
        assert response.status_code in (200, 201, 204), response.content


@pytest.mark.parametrize(("name", "min_rank"), [("admin_keys_page", 3), ("admin_api_reference", 1)])
@pytest.mark.parametrize("who", ["owner", "admin", "developer", "viewer", "outsider", "sub_member"])
def test_console_pages_role_matrix(world, client_for, name, min_rank, who):
    response = client_for(world.user(who)).get(reverse(name, kwargs={"ws": "acme"}))
    rank = {"owner": 4, "admin": 3, "developer": 2, "viewer": 1}.get(who)
    if rank is None:
        assert response.status_code == 404
    else:
        assert response.status_code == (200 if rank >= min_rank else 403)


def test_the_deployment_list_reads_prices_for_the_whole_page_at_once(world, api_client):
    """The price in force comes from one prefetch for a page, not a query per deployment, and
    equals what a single deployment's read says."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    _, key = make_admin_key(world.org, role="viewer")
    make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name="one", input_price="0.10", output_price="0.20")
    call(api_client, "get", "/workspaces/acme/deployments", key)  # the key's first use stamps it once
    counts = []
    for name in ("two", "three", "four"):
        with CaptureQueriesContext(connection) as queries:
            listed = call(api_client, "get", "/workspaces/acme/deployments", key)
        counts.append(len(queries))
        make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name=name, input_price="0.30", output_price="0.40")
    assert listed.status_code == 200
    assert counts[0] == counts[1] == counts[2], counts  # 1, 2 and 3 deployments: the same queries
    for row in listed.json()["data"]:
        single = call(api_client, "get", f"/workspaces/acme/deployments/{row['id']}", key).json()
        assert row == single
