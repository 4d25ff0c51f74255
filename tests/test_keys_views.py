"""Secrets pages: who may do what, what the pages show, and what a request may not smuggle in."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import AuditEvent
from keys.models import ApiKey, ApiKeyKind, ApiKeySecret, ByokCredential
from keys.services import api_key_revoke
from tests.factories import page_without_per_request_tokens
from tests.keys_helpers import ACTOR, make_key, make_scope
from usage.models import UsageEvent

RANK = {"viewer": 1, "developer": 2, "admin": 3, "owner": 4}
KEY_RE = re.compile(r"gh_live_[0-9A-Za-z]{46}")


def url(name: str, ws: str = "acme", **kwargs) -> str:
    return reverse(name, kwargs={"ws": ws, **kwargs})


# (url name, method, needs a key / credential, minimum role)
MATRIX = [
    ("secrets_page", "get", None, "viewer"),
    ("api_key_detail", "get", "key", "viewer"),
    ("byok_page", "get", None, "viewer"),
    ("api_key_create", "get", None, "developer"),
    ("api_key_create", "post", None, "developer"),
    ("api_key_validate", "post", None, "developer"),
    ("api_key_edit", "get", "key", "developer"),
    ("api_key_edit", "post", "key", "developer"),
    ("api_key_edit_validate", "post", "key", "developer"),
    ("api_key_rotate", "post", "key", "developer"),
    ("api_key_revoke", "post", "key", "developer"),
    ("byok_create", "get", None, "admin"),
    ("byok_create", "post", None, "admin"),
    ("byok_edit", "get", "credential", "admin"),
    ("byok_edit", "post", "credential", "admin"),
    ("byok_delete", "post", "credential", "admin"),
]


@pytest.mark.parametrize(("name", "method", "param", "min_role"), MATRIX)
@pytest.mark.parametrize("who", ["owner", "admin", "developer", "viewer", "outsider", "sub_member"])
def test_role_matrix(world, client_for, name, method, param, min_role, who):
    scope = make_scope(world)
    api_key, _ = make_key(world.org, name="matrix")
    kwargs = {"key": api_key.public_id} if param == "key" else {"credential": scope.byok.public_id} if param == "credential" else {}
    response = getattr(client_for(world.user(who)), method)(url(name, **kwargs), {}, HTTP_HX_REQUEST="true", HTTP_HX_TRIGGER_NAME="name")
    if who in ("outsider", "sub_member"):
        assert response.status_code == 404
    elif RANK[who] >= RANK[min_role]:
        assert response.status_code in (200, 302, 400), response.status_code
    else:
        assert response.status_code == 403
    if response.status_code in (403, 404):
        api_key.refresh_from_db()
        assert api_key.revoked_at is None and api_key.secrets.count() == 1
        assert ByokCredential.objects.filter(pk=scope.byok.pk).exists()


def test_outsider_gets_404_for_a_key_exactly_like_a_missing_one(world, client_for):
    api_key, _ = make_key(world.org)
    client = client_for(world.outsider)
    existing = client.get(url("api_key_detail", key=api_key.public_id))
    missing = client.get(url("api_key_detail", key=uuid.uuid4()))
    assert existing.status_code == missing.status_code == 404
    assert page_without_per_request_tokens(existing.content) == page_without_per_request_tokens(missing.content)


def test_a_key_of_another_workspace_is_404_even_through_your_own_workspace(world, client_for):
    globex_key, _ = make_key(world.other_org, name="globex-key")
    client = client_for(world.owner)
    for name, method in [("api_key_detail", "get"), ("api_key_edit", "get"), ("api_key_rotate", "post"), ("api_key_revoke", "post")]:
        assert (
            getattr(client, method)(url(name, key=globex_key.public_id), {"grace": "none", "expected_hint": globex_key.hint}).status_code
            == 404
        )
    globex_key.refresh_from_db()
    assert globex_key.revoked_at is None and globex_key.secrets.count() == 1


def test_hidden_test_call_keys_never_appear_and_cannot_be_reached(world, client_for):
    hidden, _ = make_key(world.org, name="console-test-call", kind=ApiKeyKind.TEST_CALL)
    make_key(world.org, name="visible")
    client = client_for(world.owner)
    page = client.get(url("secrets_page"))
    assert "visible" in page.content.decode() and "console-test-call" not in page.content.decode()
    assert page.context["counts"]["all"] == 1
    assert client.get(url("api_key_detail", key=hidden.public_id)).status_code == 404
    assert client.post(url("api_key_revoke", key=hidden.public_id)).status_code == 404


def create_form(scope, **overrides) -> dict:
    data = {
        "name": "billing",
        "description": "Billing service",
        "deployments": [scope.qwen.public_id, scope.llama.public_id],
        "router_providers": [scope.router.slug],
        "byok_credentials": [scope.byok.public_id],
        "tpm_limit": "60000",
        "yearly_token_limit": "10000000",
        "ip_allowlist": "192.168.1.1, 10.0.0.0/8\n2001:DB8::/32",
        "expires_at": (timezone.now() + dt.timedelta(days=30)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M"),
    }
    return {**data, **overrides}


def test_developer_creates_a_key_with_every_field(world, client_for):
    scope = make_scope(world)
    response = client_for(world.developer).post(url("api_key_create"), create_form(scope), follow=True)
    assert response.status_code == 200, response.content.decode()[:2000]
    html = response.content.decode()
    key = KEY_RE.search(html).group(0)
    api_key = ApiKey.objects.get(name="billing")
    assert api_key.hint.endswith(key[-4:]) and api_key.created_by == world.developer
    assert api_key.ip_allowlist == ["192.168.1.1/32", "10.0.0.0/8", "2001:db8::/32"]
    assert api_key.deployments.count() == 2 and api_key.router_providers.count() == 1 and api_key.byok_credentials.count() == 1
    assert (api_key.tpm_limit, api_key.yearly_token_limit) == (60000, 10_000_000)
    assert 'data-copy="new-key"' in html and "only time the key is shown" in html


def test_expiry_is_read_in_the_workspace_time_zone(world, client_for):
    world.org.time_zone = "Asia/Tokyo"
    world.org.save(update_fields=["time_zone"])
    year = timezone.now().year + 1
    client_for(world.developer).post(url("api_key_create"), {"name": "tz", "all_models": "on", "expires_at": f"{year}-06-01T09:00"})
    assert ApiKey.objects.get(name="tz").expires_at == dt.datetime(year, 6, 1, 0, 0, tzinfo=dt.UTC)


def test_the_examples_hand_off_posts_the_key_and_never_puts_it_in_a_url(world, client_for):
    """Contract with the deployments page: POST field `api_key` to /w/<ws>/deployments/<public_id>/?tab=examples."""
    scope = make_scope(world)
    response = client_for(world.developer).post(url("api_key_create"), create_form(scope), follow=True)
    html = response.content.decode()
    key = KEY_RE.search(html).group(0)
    forms = re.findall(
        r'<form method="post" action="([^"]+)"[^>]*>\s*<input type="hidden" name="csrfmiddlewaretoken"[^>]*>'
        r'<input type="hidden" name="api_key" value="([^"]+)">',
        html,
    )
    assert [action for action, _ in forms] == [f"/w/acme/deployments/{d.public_id}/?tab=examples" for d in (scope.llama, scope.qwen)]
    assert all(value == key for _, value in forms)
    assert not re.search(r'(href|action|src)="[^"]*' + key, html)


def test_following_the_examples_hand_off_renders_the_examples_with_the_key(world, client_for):
    scope = make_scope(world)
    client = client_for(world.developer)
    html = client.post(url("api_key_create"), create_form(scope, deployments=[scope.qwen.public_id]), follow=True).content.decode()
    key = KEY_RE.search(html).group(0)
    action, token = re.search(
        r'<form method="post" action="([^"]+)"[^>]*>\s*<input type="hidden" name="csrfmiddlewaretoken" value="([^"]+)">'
        r'<input type="hidden" name="api_key"',
        html,
    ).groups()
    response = client.post(action.replace("&amp;", "&"), {"csrfmiddlewaretoken": token, "api_key": key})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    assert key in response.content.decode() and scope.qwen.model_id in response.content.decode()
    assert key not in client.get(action.replace("&amp;", "&")).content.decode()  # that page view only


@pytest.mark.parametrize(
    ("extra", "stored_attr"),
    [
        ({"workspace": "globex"}, "workspace"),
        ({"workspace_id": "3"}, "workspace"),
        ({"created_by": "1"}, "created_by"),
        ({"owner": "olivia"}, "owner"),
        ({"kind": "test_call"}, "kind"),
        ({"revoked_at": "2020-01-01T00:00"}, "revoked_at"),
        ({"hint": "gh_live_…fake"}, "hint"),
        ({"public_id": str(uuid.uuid4())}, "public_id"),
        ({"last_used_ip": "1.2.3.4"}, "last_used_ip"),
    ],
)
def test_privileged_fields_are_refused_and_nothing_is_stored(world, client_for, extra, stored_attr):
    scope = make_scope(world)
    events_before = AuditEvent.objects.count()
    response = client_for(world.developer).post(url("api_key_create"), {**create_form(scope), **extra})
    assert response.status_code == 400
    assert "This form does not accept" in response.content.decode() and "Nothing was saved" in response.content.decode()
    assert not KEY_RE.search(response.content.decode())
    assert not ApiKey.objects.exists() and not ApiKeySecret.objects.exists()
    assert AuditEvent.objects.count() == events_before


def test_edit_refuses_privileged_fields_and_changes_nothing(world, client_for):
    api_key, _ = make_key(world.org, tpm_limit=100)
    response = client_for(world.developer).post(
        url("api_key_edit", key=api_key.public_id), {"all_models": "on", "tpm_limit": "999", "name": "renamed", "workspace": "globex"}
    )
    assert response.status_code == 400
    api_key.refresh_from_db()
    assert (api_key.name, api_key.tpm_limit, api_key.workspace) == ("app", 100, world.org)


def test_another_workspaces_deployment_or_credential_is_refused(world, client_for):
    scope = make_scope(world)
    globex_byok = ByokCredential.objects.create(
        workspace=world.other_org, name="g", provider="p", base_url="https://x.test", api_key_encrypted="x", api_key_last4="abcd"
    )
    client = client_for(world.developer)
    for bad in (
        {"deployments": [scope.globex.public_id]},
        {"byok_credentials": [globex_byok.public_id]},
        {"router_providers": ["no-such-provider"]},
    ):
        response = client.post(url("api_key_create"), create_form(scope, **bad))
        assert response.status_code == 400
        assert "is not one of the available choices" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_sub_workspace_member_creates_keys_from_granted_models(world, client_for):
    scope = make_scope(world)
    client = client_for(world.sub_member)
    page = client.get(url("api_key_create", ws="acme-research")).content.decode()
    assert "Llama 3.1 8B" in page and "Research model" in page and "Qwen3 0.6B" not in page
    assert "All models granted to this sub-workspace" in page
    response = client.post(url("api_key_create", ws="acme-research"), {"name": "r", "deployments": [scope.llama.public_id]}, follow=True)
    assert response.status_code == 200 and ApiKey.objects.get(name="r").workspace == world.sub


def test_form_errors_name_the_problem_and_store_nothing(world, client_for):
    scope = make_scope(world)
    response = client_for(world.developer).post(
        url("api_key_create"), create_form(scope, name="my key", tpm_limit="0", ip_allowlist="10.0.0.1/8", expires_at="2020-01-01T00:00")
    )
    html = response.content.decode()
    assert response.status_code == 400
    for message in (
        "The name may not contain a space.",
        "TPM: use a whole number from 1",
        "“10.0.0.1/8” has host bits set",
        "The expiry must be in the future.",
    ):
        assert message in html
    response = client_for(world.developer).post(url("api_key_create"), {"name": "empty-scope"})
    assert response.status_code == 400 and "Choose what this key may call" in response.content.decode()
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize(
    ("field", "data", "expected"),
    [
        ("name", {"name": "my key"}, "The name may not contain a space."),
        ("name", {"name": "bad#"}, "The name may not contain “#”."),
        ("name", {"name": "taken"}, "A key named “taken” already exists"),
        ("name", {"name": "fresh-name"}, "✓ “fresh-name” is available."),
        ("ip_allowlist", {"ip_allowlist": "10.0.0.1/8"}, "has host bits set; the network is 10.0.0.0/8."),
        ("ip_allowlist", {"ip_allowlist": "::ffff:10.0.0.1, 10.0.0.0/8"}, "✓ 2 entries, saved as: <code>10.0.0.1/32, 10.0.0.0/8</code>"),
        ("ip_allowlist", {"ip_allowlist": ""}, "any address may use this key"),
        ("expires_at", {"expires_at": "2020-01-01T00:00"}, "The expiry must be in the future."),
        ("expires_at", {"expires_at": "soon"}, "Enter a date and time such as"),
        ("tpm_limit", {"tpm_limit": "-1"}, "TPM: use a whole number from 1"),
        ("tpm_limit", {"tpm_limit": "60000"}, "✓ 60,000 tokens per minute."),
    ],
)
def test_inline_validation_returns_the_field_feedback_partial(world, client_for, field, data, expected):
    make_key(world.org, name="taken")
    before = ApiKey.objects.count()
    response = client_for(world.developer).post(url("api_key_validate"), data, HTTP_HX_REQUEST="true", HTTP_HX_TRIGGER_NAME=field)
    html = response.content.decode()
    assert response.status_code == 200 and expected in html
    assert "<html" not in html and "<form" not in html  # only the fragment
    assert ApiKey.objects.count() == before


def test_inline_validation_refuses_unknown_fields(world, client_for):
    response = client_for(world.developer).post(url("api_key_validate"), {}, HTTP_HX_REQUEST="true", HTTP_HX_TRIGGER_NAME="workspace")
    assert response.status_code == 400


def test_create_form_wires_inline_validation(world, client_for):
    html = client_for(world.developer).get(url("api_key_create")).content.decode()
    assert f'hx-post="{url("api_key_validate")}"' in html
    assert 'hx-target="#feedback-name"' in html and 'id="feedback-name"' in html
    assert "letters A–Z and a–z, digits 0–9, and - _ . : @" in html


def test_edit_updates_limits_and_keeps_name(world, client_for):
    scope = make_scope(world)
    api_key, _ = make_key(world.org, all_models=False, deployments=[scope.qwen], tpm_limit=100, ip_allowlist="10.0.0.0/8")
    client = client_for(world.developer)
    page = client.get(url("api_key_edit", key=api_key.public_id)).content.decode()
    assert "10.0.0.0/8" in page and 'value="100"' in page
    response = client.post(
        url("api_key_edit", key=api_key.public_id),
        {
            "deployments": [scope.qwen.public_id],
            "tpm_limit": "250",
            "yearly_token_limit": "5000",
            "ip_allowlist": "10.0.0.0/8",
        },
    )
    assert response.status_code == 302
    api_key.refresh_from_db()
    assert (api_key.name, api_key.tpm_limit, api_key.yearly_token_limit) == ("app", 250, 5000)
    event = AuditEvent.objects.get(action="api_key.updated")
    assert event.details == {"tpm_limit": [100, 250], "yearly_token_limit": [None, 5000]} and event.actor == world.developer


def test_editing_a_key_leaves_its_seconds_precise_expiry_alone(world, client_for):
    expires = timezone.now().replace(microsecond=0) + dt.timedelta(days=20, seconds=17)
    api_key, _ = make_key(world.org, expires_at=expires)
    client = client_for(world.developer)
    page = client.get(url("api_key_edit", key=api_key.public_id)).content.decode()
    shown = re.search(r'name="expires_at" value="([^"]+)"', page).group(1)
    client.post(url("api_key_edit", key=api_key.public_id), {"all_models": "on", "expires_at": shown, "description": "x"})
    api_key.refresh_from_db()
    assert api_key.expires_at == expires and api_key.description == "x"


def test_revoked_key_cannot_be_edited_or_rotated_in_the_console(world, client_for):
    api_key, _ = make_key(world.org)
    api_key_revoke(api_key=api_key, actor=ACTOR)
    client = client_for(world.developer)
    assert client.get(url("api_key_edit", key=api_key.public_id)).status_code == 302
    response = client.post(url("api_key_rotate", key=api_key.public_id), {"grace": "none", "expected_hint": api_key.hint}, follow=True)
    assert "This key is revoked" in response.content.decode() and api_key.secrets.count() == 1
    detail = client.get(url("api_key_detail", key=api_key.public_id)).content.decode()
    assert "Revoked on" in detail and "Rotate secret" not in detail and "Edit settings" not in detail


def test_revoke_in_the_console(world, client_for):
    api_key, _ = make_key(world.org)
    response = client_for(world.developer).post(url("api_key_revoke", key=api_key.public_id), follow=True)
    assert "Revoked “app”" in response.content.decode()
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert AuditEvent.objects.get(action="api_key.revoked").actor == world.developer


def test_viewer_reads_but_sees_no_buttons_that_change_keys(world, client_for):
    api_key, _ = make_key(world.org)
    client = client_for(world.viewer)
    listing = client.get(url("secrets_page")).content.decode()
    detail = client.get(url("api_key_detail", key=api_key.public_id)).content.decode()
    assert "app" in listing and "Create API key" not in listing
    assert "Rotate secret" not in detail and "Revoke key" not in detail and "Edit settings" not in detail


def test_list_shows_hint_scope_limits_usage_and_status(world, client_for):
    scope = make_scope(world)
    api_key, key = make_key(
        world.org,
        name="svc",
        all_models=False,
        deployments=[scope.qwen],
        router_providers=[scope.router],
        all_byok=True,
        tpm_limit=60000,
        yearly_token_limit=10_000_000,
        ip_allowlist="10.0.0.0/8, 192.168.1.1",
    )
    now = timezone.now()
    for i, (when, tokens) in enumerate(
        [(now, 1200), (now - dt.timedelta(days=1), 300), (dt.datetime(now.year - 1, 12, 31, 12, tzinfo=dt.UTC), 99999)]
    ):
        UsageEvent.objects.create(
            request_id=f"r{i}", created_at=when, workspace=world.org, api_key=api_key, model="m", total_tokens=tokens, status_code=200
        )
    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now, last_used_ip="203.0.113.9")
    response = client_for(world.viewer).get(url("secrets_page"))
    html = response.content.decode()
    row = response.context["rows"][0]
    assert row.used_this_year == 1500 and row.scope == ["Qwen3 0.6B", "Router: OpenRouter", "All BYOK"]
    for text in (api_key.hint, "60K", "1.5K", "10M", "10.0.0.0/8", "192.168.1.1/32", "203.0.113.9", "tests", 'class="badge badge-ok"'):
        assert text in html, text
    assert key not in html


def test_used_this_year_follows_the_workspace_time_zone(world, client_for):
    world.org.time_zone = "Pacific/Auckland"  # UTC+13 in January
    world.org.save(update_fields=["time_zone"])
    api_key, _ = make_key(world.org)
    year = timezone.now().astimezone(world.org.tz).year
    # 11:00 UTC on 31 Dec of last year is already 1 Jan in Auckland: it counts for this year.
    UsageEvent.objects.create(
        request_id="nz",
        created_at=dt.datetime(year - 1, 12, 31, 11, tzinfo=dt.UTC),
        workspace=world.org,
        api_key=api_key,
        model="m",
        total_tokens=42,
        status_code=200,
    )
    UsageEvent.objects.create(
        request_id="nz2",
        created_at=dt.datetime(year - 1, 12, 31, 10, 59, tzinfo=dt.UTC),
        workspace=world.org,
        api_key=api_key,
        model="m",
        total_tokens=1000,
        status_code=200,
    )
    assert client_for(world.owner).get(url("secrets_page")).context["rows"][0].used_this_year == 42


def status_world(world):
    now = timezone.now()
    make_key(world.org, name="fresh")
    make_key(world.org, name="soon", expires_at=now + dt.timedelta(days=3))
    later, _ = make_key(world.org, name="later", expires_at=now + dt.timedelta(days=3))
    ApiKey.objects.filter(pk=later.pk).update(expires_at=now - dt.timedelta(days=1))  # expired since
    revoked, _ = make_key(world.org, name="gone")
    api_key_revoke(api_key=revoked, actor=ACTOR)


@pytest.mark.parametrize(
    ("status", "names"),
    [
        ("", {"fresh", "soon", "later", "gone"}),
        ("active", {"fresh"}),
        ("expiring", {"soon"}),
        ("expired", {"later"}),
        ("revoked", {"gone"}),
    ],
)
def test_filter_by_status(world, client_for, status, names):
    status_world(world)
    response = client_for(world.viewer).get(url("secrets_page"), {"status": status})
    assert {row.api_key.name for row in response.context["rows"]} == names
    assert response.context["counts"] == {"all": 4, "active": 1, "expiring": 1, "expired": 1, "revoked": 1}


def test_expiry_warning_in_the_list_and_on_the_overview(world, client_for):
    status_world(world)
    client = client_for(world.viewer)
    listing = client.get(url("secrets_page")).content.decode()
    assert "1 key expires within 7 days." in listing
    overview = client.get(url("workspace_overview")).content.decode()
    notice = re.search(
        r'<section class="callout" role="status" data-testid="overview-expiring-keys">(.*?)</section>', overview, re.S
    ).group(1)
    assert ">soon</a>" in notice
    assert "later" not in notice and "fresh" not in notice and "gone" not in notice  # only keys still live and expiring


def test_overview_without_expiring_keys_shows_no_warning(world, client_for):
    make_key(world.org, name="fresh")
    assert "overview-expiring-keys" not in client_for(world.viewer).get(url("workspace_overview")).content.decode()


@pytest.mark.parametrize(
    ("q", "names"),
    [
        ("", {"a_b", "axb", "100%", "x"}),
        ("_", {"a_b"}),
        ("%", set()),
        ("A_B", {"a_b"}),
        ("x", {"axb", "x"}),
        ("\\", set()),
        ("' OR 1=1 --", set()),
    ],
)
def test_search_by_name_is_literal(world, client_for, q, names):
    for name in ("a_b", "axb", "x"):
        make_key(world.org, name=name)
    ApiKey.objects.create(workspace=world.org, name="100%", hint="h")  # a legacy name: search must still treat % literally
    response = client_for(world.viewer).get(url("secrets_page"), {"q": q})
    assert response.status_code == 200
    assert {row.api_key.name for row in response.context["rows"]} == (names if q != "%" else {"100%"})


def test_search_length_is_bounded(world, client_for):
    response = client_for(world.viewer).get(url("secrets_page"), {"q": "x" * 65})
    assert response.status_code == 400 and "Search for at most 64 characters" in response.content.decode()
    response = client_for(world.viewer).get(url("secrets_page"), {"status": "bogus"})
    assert response.status_code == 400


def test_htmx_search_returns_only_the_list(world, client_for):
    make_key(world.org, name="alpha")
    make_key(world.org, name="beta")
    response = client_for(world.viewer).get(url("secrets_page"), {"q": "alp"}, HTTP_HX_REQUEST="true")
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="key-list">') and "alpha" in html and "beta" not in html
    assert "HX-Request" in response["Vary"]


def test_list_query_count_does_not_grow_with_keys(world, client_for, django_assert_num_queries):
    """12: session, user, workspace, role, page count, keys, 3 scope prefetches, usage sum, status counts, switcher."""
    scope = make_scope(world)
    client = client_for(world.viewer)

    def add(n):
        for i in range(n):
            api_key, _ = make_key(
                world.org,
                name=f"k{ApiKey.objects.count()}-{i}",
                all_models=False,
                deployments=[scope.qwen],
                router_providers=[scope.router],
                byok_credentials=[scope.byok],
            )
            UsageEvent.objects.create(
                request_id=str(uuid.uuid4()),
                created_at=timezone.now(),
                workspace=world.org,
                api_key=api_key,
                model="m",
                total_tokens=5,
                status_code=200,
            )

    add(2)
    with django_assert_num_queries(13):  # 12 + the shell's budget banner
        client.get(url("secrets_page"))
    add(30)
    with django_assert_num_queries(13):
        response = client.get(url("secrets_page"))
    assert len(response.context["rows"]) == 32


def test_pagination(world, client_for):
    for i in range(52):
        ApiKey.objects.create(workspace=world.org, name=f"bulk{i}", hint="h", all_models=True)
    client = client_for(world.viewer)
    assert len(client.get(url("secrets_page")).context["rows"]) == 50
    assert len(client.get(url("secrets_page"), {"page": 2}).context["rows"]) == 2


def test_csrf_is_enforced_on_key_actions(world):
    api_key, _ = make_key(world.org)
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    for name in ("api_key_rotate", "api_key_revoke", "api_key_edit", "api_key_edit_validate"):
        response = client.post(url(name, key=api_key.public_id), {"grace": "none", "expected_hint": api_key.hint, "all_models": "on"})
        assert response.status_code == 403 and b"CSRF" in response.content
    assert client.post(url("api_key_create"), {"name": "csrf", "all_models": "on"}).status_code == 403
    api_key.refresh_from_db()
    assert api_key.revoked_at is None and api_key.secrets.count() == 1 and not ApiKey.objects.filter(name="csrf").exists()
