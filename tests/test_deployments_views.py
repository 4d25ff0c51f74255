"""Deployments pages: who sees and changes what, grants, the details tabs, and a key shown once."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent, Role, User
from console.services import membership_add
from deployments.models import Deployment, DeploymentPrice, DeploymentStatus, ModelGrant
from deployments.services import deployment_create, model_grant_add
from keys import tokens
from usage.models import UsageEvent

SYSTEM = Actor.system("tests")


def make(workspace, **kwargs) -> Deployment:
    values = {
        "workspace": workspace,
        "actor": SYSTEM,
        "name": "Qwen",
        "model_id": "@acme/Qwen/Qwen3-0.6B",
        "upstream_base_url": "http://10.0.0.5:8000/v1/secret-path",
        "upstream_api_key": "sk-upstream-abcdefgh-7777",
        "input_per_million": "0.5",
        "output_per_million": "1.5",
    }
    values.update(kwargs)
    return deployment_create(**values)


@pytest.fixture
def deployment(world) -> Deployment:
    return make(world.org)


def url(name: str, ws: str = "acme", deployment: Deployment | None = None, **kwargs) -> str:
    kw = {"ws": ws, **kwargs}
    if deployment is not None:
        kw["deployment"] = deployment.public_id
    return reverse(name, kwargs=kw)


# (url name, method, needs a deployment, minimum role on the default workspace)
MATRIX = [
    ("deployments_page", "get", False, Role.VIEWER),
    ("deployment_detail", "get", True, Role.VIEWER),
    ("deployment_create", "get", False, Role.ADMIN),
    ("deployment_create", "post", False, Role.ADMIN),
    ("deployment_edit", "get", True, Role.ADMIN),
    ("deployment_edit", "post", True, Role.ADMIN),
    ("deployment_price", "post", True, Role.ADMIN),
    ("deployment_stop", "post", True, Role.ADMIN),
    ("deployment_start", "post", True, Role.ADMIN),
    ("grants_page", "get", False, Role.ADMIN),
    ("grants_save", "post", True, Role.ADMIN),
]
RANK = {"viewer": 1, "developer": 2, "admin": 3, "owner": 4}


@pytest.mark.parametrize(("name", "method", "with_deployment", "min_role"), MATRIX)
@pytest.mark.parametrize("who", ["owner", "admin", "developer", "viewer", "outsider", "sub_member"])
def test_role_matrix_on_default_workspace(world, deployment, client_for, name, method, with_deployment, min_role, who):
    target = url(name, deployment=deployment if with_deployment else None)
    response = getattr(client_for(world.user(who)), method)(target, {})
    if who in ("outsider", "sub_member"):
        assert response.status_code == 404
    elif RANK[who] >= RANK[min_role]:
        assert response.status_code in (200, 302, 400)
    else:
        assert response.status_code == 403


def test_outsider_gets_the_same_404_for_an_existing_and_a_missing_deployment(world, deployment, client_for):
    client = client_for(world.outsider)
    existing = client.get(url("deployment_detail", deployment=deployment))
    missing = client.get(reverse("deployment_detail", kwargs={"ws": "acme", "deployment": uuid.uuid4()}))
    assert existing.status_code == missing.status_code == 404
    # and through their own workspace, another organisation's deployment does not exist either
    assert client.get(url("deployment_detail", ws="globex", deployment=deployment)).status_code == 404


def test_sub_workspace_sees_only_granted_deployments(world, client_for):
    granted, hidden = make(world.org, name="Granted", model_id="granted-model"), make(world.org, name="Hidden", model_id="hidden-model")
    model_grant_add(deployment=granted, workspace=world.sub, actor=SYSTEM)
    client = client_for(world.sub_member)
    page = client.get(url("deployments_page", ws="acme-research"))
    assert [d.model_id for d in page.context["deployments"]] == ["granted-model"]
    assert b"hidden-model" not in page.content
    assert client.get(url("deployment_detail", ws="acme-research", deployment=granted)).status_code == 200
    # Not granted: a 404, indistinguishable from a deployment that does not exist.
    assert client.get(url("deployment_detail", ws="acme-research", deployment=hidden)).status_code == 404

    # The default workspace may call both.
    owner_page = client_for(world.owner).get(url("deployments_page"))
    assert {d.model_id for d in owner_page.context["deployments"]} == {"granted-model", "hidden-model"}


def test_sub_workspace_admin_may_use_but_not_manage_a_granted_deployment(world, deployment, client_for):
    boss = User.objects.create_user("rita", "rita@example.com", "x")
    membership_add(workspace=world.sub, user=boss, role=Role.ADMIN, actor=SYSTEM)
    model_grant_add(deployment=deployment, workspace=world.sub, actor=SYSTEM)
    client = client_for(boss)
    assert client.get(url("deployment_detail", ws="acme-research", deployment=deployment)).status_code == 200
    assert client.get(url("deployment_edit", ws="acme-research", deployment=deployment)).status_code == 403
    assert client.post(url("deployment_stop", ws="acme-research", deployment=deployment)).status_code == 403
    assert client.get(url("grants_page", ws="acme-research")).status_code == 403
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.RUNNING


def test_default_admin_manages_a_sub_workspace_deployment(world, client_for):
    own = make(world.sub, name="Team model", model_id="team-model")
    client = client_for(world.admin)
    assert client.get(url("deployment_edit", deployment=own)).status_code == 200
    assert client.post(url("deployment_stop", deployment=own)).status_code == 302
    assert Deployment.objects.get(pk=own.pk).status == DeploymentStatus.STOPPED


def test_admin_creates_a_deployment_through_the_form(world, client_for):
    response = client_for(world.admin).post(
        url("deployment_create"),
        {
            "name": "Llama",
            "model_id": 'llama "3" \\ 8b',
            "upstream_kind": "endpoint",
            "upstream_base_url": "http://192.168.1.9:8000/v1",
            "upstream_api_key": "sk-live-zzzz-1234",
            "timeout_seconds": "60",
            "input_per_million": "0.25",
            "output_per_million": "0.75",
            "currency": "usd",
        },
    )
    deployment = Deployment.objects.get()
    assert response.status_code == 302 and response.url == url("deployment_detail", deployment=deployment)
    assert deployment.model_id == 'llama "3" \\ 8b' and deployment.upstream_api_key_last4 == "1234"
    assert DeploymentPrice.objects.get(deployment=deployment).currency == "USD"
    assert AuditEvent.objects.filter(action="deployment.created", actor=world.admin).exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("upstream_base_url", "http://169.254.169.254/latest", "cloud metadata service"),
        ("upstream_base_url", "ftp://10.0.0.1/", "Only http:// and https://"),
        ("model_id", "", "This field is required"),
        ("input_per_million", "-1", "greater than or equal to 0"),
        ("currency", "DOLLARS", "three-letter"),
        ("tokenizer_path", "/nonexistent/tokenizer.json", "No tokenizer file at /nonexistent/tokenizer.json"),
        ("tokenizer_path", "models/tokenizer.json", "Give an absolute path"),
    ],
)
def test_create_form_errors_change_nothing(world, client_for, field, value, message):
    data = {
        "name": "Llama",
        "model_id": "llama",
        "upstream_kind": "endpoint",
        "upstream_base_url": "http://10.0.0.1/v1",
        "timeout_seconds": "60",
        "input_per_million": "0",
        "output_per_million": "0",
        "currency": "USD",
        field: value,
    }
    response = client_for(world.admin).post(url("deployment_create"), data)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action__startswith="deployment.").exists()


def test_edit_keeps_the_stored_key_when_the_field_is_empty(world, deployment, client_for):
    response = client_for(world.admin).post(
        url("deployment_edit", deployment=deployment),
        {
            "name": "Qwen v2",
            "model_id": deployment.model_id,
            "upstream_kind": "endpoint",
            "upstream_base_url": "http://10.0.0.5:8000/v1",
            "upstream_api_key": "",
            "timeout_seconds": "30",
        },
    )
    assert response.status_code == 302
    deployment.refresh_from_db()
    assert (deployment.name, deployment.timeout_seconds, deployment.upstream_api_key_last4) == ("Qwen v2", 30, "7777")


def test_edit_page_never_renders_the_upstream_key(world, deployment, client_for):
    content = client_for(world.admin).get(url("deployment_edit", deployment=deployment)).content.decode()
    assert "sk-upstream-abcdefgh" not in content and deployment.upstream_api_key_encrypted not in content
    assert "…7777" in content


def test_price_change_through_the_page_adds_a_version(world, deployment, client_for):
    response = client_for(world.admin).post(
        url("deployment_price", deployment=deployment), {"input_per_million": "0.9", "output_per_million": "2.7", "currency": "USD"}
    )
    assert response.status_code == 302
    assert list(
        DeploymentPrice.objects.filter(deployment=deployment).order_by("effective_from").values_list("input_per_million", flat=True)
    ) == [Decimal("0.5"), Decimal("0.9")]
    backdated = (timezone.localtime(timezone.now() - timedelta(days=1), world.org.tz)).strftime("%Y-%m-%dT%H:%M")
    response = client_for(world.admin).post(
        url("deployment_price", deployment=deployment),
        {"input_per_million": "5", "output_per_million": "5", "currency": "USD", "effective_from": backdated},
    )
    assert response.status_code == 400 and "cannot start in the past" in response.content.decode()
    assert DeploymentPrice.objects.filter(deployment=deployment).count() == 2


def test_stop_and_start_from_the_page_are_audited(world, deployment, client_for):
    client = client_for(world.owner)
    assert client.post(url("deployment_stop", deployment=deployment)).status_code == 302
    assert "stopped: the gateway refuses calls" in client.get(url("deployment_detail", deployment=deployment)).content.decode()
    assert client.post(url("deployment_start", deployment=deployment)).status_code == 302
    assert list(
        AuditEvent.objects.filter(action__in=["deployment.stopped", "deployment.started"]).order_by("id").values_list("action", flat=True)
    ) == ["deployment.stopped", "deployment.started"]


def test_grants_page_sets_which_sub_workspaces_may_call(world, deployment, client_for):
    client = client_for(world.admin)
    page = client.get(url("grants_page"))
    assert page.status_code == 200 and b"Research" in page.content
    response = client.post(url("grants_save", deployment=deployment), {"workspaces": ["acme-research"]})
    assert response.status_code == 302
    assert ModelGrant.objects.filter(deployment=deployment, workspace=world.sub, granted_by=world.admin).exists()
    assert client_for(world.sub_member).get(url("deployment_detail", ws="acme-research", deployment=deployment)).status_code == 200

    client = client_for(world.admin)
    assert client.post(url("grants_save", deployment=deployment), {}).status_code == 302
    assert not ModelGrant.objects.exists()
    assert list(
        AuditEvent.objects.filter(workspace=world.org, action__startswith="model_grant.").order_by("id").values_list("action", flat=True)
    ) == ["model_grant.added", "model_grant.removed"]


def test_grants_cannot_reach_another_organisation(world, deployment, client_for):
    response = client_for(world.admin).post(url("grants_save", deployment=deployment), {"workspaces": ["globex"]})
    assert response.status_code == 400
    assert not ModelGrant.objects.exists()


def test_details_page_shows_upstream_host_only(world, deployment, client_for):
    content = client_for(world.viewer).get(url("deployment_detail", deployment=deployment)).content.decode()
    assert "10.0.0.5:8000" in content
    assert "secret-path" not in content and "sk-upstream" not in content and "7777" not in content  # viewers: not even last4


def test_api_call_tab_lists_the_three_call_paths(world, deployment, client_for, settings):
    settings.PUBLIC_BASE_URL = "https://gw.example.com"
    content = client_for(world.viewer).get(url("deployment_detail", deployment=deployment) + "?tab=api").content.decode()
    assert "https://gw.example.com/v1</code>" in content
    assert f"https://gw.example.com/v1/{world.org.public_id}/deployments/{deployment.public_id}/chat/completions" in content
    assert "X-Apig-AppCode" in content
    assert "https://gw.example.com/api/v2/chat/completions" in content and "Authorization: Bearer" in content


def test_sub_workspace_api_tab_uses_its_own_id_as_project_id(world, deployment, client_for):
    model_grant_add(deployment=deployment, workspace=world.sub, actor=SYSTEM)
    content = (
        client_for(world.sub_member).get(url("deployment_detail", ws="acme-research", deployment=deployment) + "?tab=api").content.decode()
    )
    assert f"/v1/{world.sub.public_id}/deployments/{deployment.public_id}/" in content


@pytest.mark.parametrize("tab", ["overview", "api", "examples", "test", "usage"])
def test_tabs_work_as_links_and_as_htmx_fragments(world, deployment, client_for, tab):
    client = client_for(world.viewer)
    full = client.get(url("deployment_detail", deployment=deployment), {"tab": tab})
    assert full.status_code == 200 and b"<html" in full.content and f'data-testid="tab-{tab}"'.encode() in full.content
    fragment = client.get(url("deployment_detail", deployment=deployment), {"tab": tab}, headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and b"<html" not in fragment.content
    assert f'data-testid="tab-{tab}"'.encode() in fragment.content
    assert "HX-Request" in fragment["Vary"]


def test_usage_tab_loads_this_deployments_usage_for_a_viewer(world, deployment, client_for):
    client = client_for(world.viewer)
    page = client.get(url("deployment_detail", deployment=deployment), {"tab": "usage"}).content.decode()
    usage_url = f"/w/{world.org.slug}/usage/?deployment={deployment.public_id}"
    assert f'hx-get="{usage_url}"' in page
    tab = client.get(usage_url, headers={"HX-Request": "true", "HX-Target": "deployment-usage"})
    assert tab.status_code == 200 and tab.context["scope"].deployment_id == deployment.id
    assert b'data-testid="deployment-usage"' in tab.content and b"<html" not in tab.content


def test_a_posted_key_is_rendered_into_the_examples_for_that_response_only(world, deployment, client_for, caplog):
    key = tokens.generate()
    client = client_for(world.developer)
    response = client.post(url("deployment_detail", deployment=deployment), {"api_key": key, "lang": "node"})
    assert response.status_code == 200
    assert response.context["lang"] == "node"
    assert "no-store" in response["Cache-Control"]
    content = response.content.decode()
    assert f"api_key=&quot;{key}&quot;" in content  # HTML-escaped inside the <pre>
    assert "os.environ" not in content
    assert key not in response.get("Location", "") and key not in str(response.cookies)
    assert key not in caplog.text
    # The next plain view reads the key from the environment again: nothing was stored.
    again = client.get(url("deployment_detail", deployment=deployment), {"tab": "examples"}).content.decode()
    assert key not in again and "os.environ[&quot;GATEHOUSE_API_KEY&quot;]" in again
    digest_like = [str(v) for v in AuditEvent.objects.values_list("details", flat=True)]
    assert not any(key in v for v in digest_like)


@pytest.mark.parametrize("bad", ["", "gh_live_short", "sk-" + "a" * 50, tokens.generate()[:-1] + "!", "'; DROP TABLE x; --"])
def test_a_malformed_posted_key_is_refused_and_never_echoed(world, deployment, client_for, bad):
    response = client_for(world.developer).post(url("deployment_detail", deployment=deployment), {"api_key": bad})
    assert response.status_code == 400
    content = response.content.decode()
    assert "not a Gatehouse API key" in content and "os.environ" in content
    if bad:
        assert bad not in content


def test_posting_a_key_needs_csrf(world, deployment):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.developer)
    response = client.post(url("deployment_detail", deployment=deployment), {"api_key": tokens.generate()})
    assert response.status_code == 403


def test_list_shows_status_price_and_requests_today(world, client_for):
    running = make(world.org, name="A", model_id="model-a")
    stopped = make(world.org, name="B", model_id="model-b", input_per_million="2", output_per_million="4")
    stopped.status = DeploymentStatus.STOPPED
    stopped.save(update_fields=["status"])
    model_grant_add(deployment=running, workspace=world.sub, actor=SYSTEM)
    now = timezone.now()
    for i, (ws, when) in enumerate([(world.org, now), (world.org, now), (world.sub, now), (world.org, now - timedelta(days=2))]):
        UsageEvent.objects.create(request_id=f"r{i}", created_at=when, workspace=ws, deployment=running, model="model-a", status_code=200)

    page = client_for(world.viewer).get(url("deployments_page"))
    rows = {d.model_id: d for d in page.context["deployments"]}
    assert rows["model-a"].requests_today == 3  # the organisation's traffic today, both workspaces
    assert rows["model-b"].requests_today == 0
    assert str(rows["model-b"].price_input) == "2.000000"
    assert b'badge-muted">Stopped' in page.content and b'badge-ok">Running' in page.content
    sub_page = client_for(world.sub_member).get(url("deployments_page", ws="acme-research"))
    assert [d.requests_today for d in sub_page.context["deployments"]] == [1]  # only its own traffic


def test_list_and_overview_show_when_health_was_checked_and_why_it_failed(world, client_for):
    checked = timezone.now() - timedelta(minutes=3, seconds=5)
    rows = {
        "running": ("model-ok", DeploymentStatus.RUNNING, "", checked),
        "down": ("model-down", DeploymentStatus.UNREACHABLE, "Cannot connect: [Errno 111] Connection refused", checked),
        "failed": ("model-failed", DeploymentStatus.FAILED, "HTTP 500 from the upstream. " + "x" * 200, checked),
        "stopped": ("model-stopped", DeploymentStatus.STOPPED, "", checked),
        "new": ("model-new", DeploymentStatus.RUNNING, "", None),
    }
    made = {}
    for name, (model_id, status, error, at) in rows.items():
        made[name] = make(world.org, name=name, model_id=model_id)
        Deployment.objects.filter(id=made[name].id).update(status=status, last_error=error, last_checked_at=at)
    client = client_for(world.viewer)

    page = client.get(url("deployments_page")).content.decode()
    cells = {name: _row(page, d) for name, d in made.items()}

    assert "checked" in cells["running"] and ">3 min ago</time>" in cells["running"] and "health-error" not in cells["running"]
    assert "Connection refused" in cells["down"] and ">3 min ago</time>" in cells["down"]
    shown = cells["failed"].split('data-testid="health-error"')[1].split("</div>")[0]
    assert shown.endswith("…") and len(shown.split(">", 1)[1]) == 90  # truncated in the list
    assert f'title="HTTP 500 from the upstream. {"x" * 200}"' in shown  # the whole text on hover
    assert "checked" not in cells["stopped"]  # stopped deployments are not probed: an old time would mislead
    assert "not checked yet" in cells["new"]

    overview = client.get(url("deployment_detail", deployment=made["failed"])).content.decode()
    assert "x" * 200 in overview and ">3 min ago</time>" in overview  # the overview shows the whole error


def _row(page: str, deployment: Deployment) -> str:
    start = page.index(f'data-deployment="{deployment.public_id}"')
    return page[start : page.index("</tr>", start)]


def test_list_page_query_count_does_not_grow_with_deployments(world, client_for, django_assert_num_queries):
    client = client_for(world.viewer)
    make(world.org, name="One", model_id="one")
    client.get(url("deployments_page"))  # warm the session
    with django_assert_num_queries(7) as one:  # 6 + the shell's budget banner
        client.get(url("deployments_page"))
    for i in range(6):
        make(world.org, name=f"M{i}", model_id=f"m-{i}")
    with django_assert_num_queries(7) as many:
        response = client.get(url("deployments_page"))
    assert len(response.context["deployments"]) == 7
    assert len(one.captured_queries) == len(many.captured_queries)


def test_grants_page_query_count_is_bounded(world, client_for, django_assert_max_num_queries):
    for i in range(5):
        make(world.org, name=f"M{i}", model_id=f"m-{i}")
    client = client_for(world.admin)
    with django_assert_max_num_queries(9):
        assert client.get(url("grants_page")).status_code == 200
