"""Done-when for the admin API: a client generated from the schema a live server publishes
(openapi-python-client, run by the test) drives the whole story against a real gateway process,
the demo model upstream, PostgreSQL and Redis — create a sub-workspace, a priced deployment, grant
it, create a key, call the gateway with it, read the usage back, set a budget, rotate and revoke
the key — and every step shows in the console and the audit log."""

from __future__ import annotations

import csv
import importlib
import io
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.urls import reverse

from console.models import AuditEvent, Workspace
from deployments.models import Deployment
from keys.models import ApiKey
from tests import gateway_support
from tests.adminapi_support import make_admin_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, wait_for
from usage.amounts import amount_text
from usage.exports import METRICS
from usage.models import UsageEvent
from usage.services import usage_rollup

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways = gateway_support.demo, gateway_support.gateways  # live-process fixtures

PACKAGE = "gatehouse_admin_client"


@pytest.fixture
def generated(gateways, tmp_path):
    """The client package generated from the schema the running server publishes, imported."""
    schema = httpx.get(gateways[0].url + "/api/admin/v1/openapi.json", timeout=10)
    assert schema.status_code == 200
    (tmp_path / "schema.json").write_bytes(schema.content)
    venv_bin = Path(sys.executable).parent
    result = subprocess.run(
        [venv_bin / "openapi-python-client", "generate", "--path", "schema.json", "--output-path", PACKAGE, "--meta", "none"],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}"},  # it formats with ruff
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # every operation and schema was understood
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def _op(package, tag: str, name: str):
    return importlib.import_module(f"{PACKAGE}.api.{tag}.{name}")


def _chat(gateway, key: str, model: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body(model, "hi", max_tokens=20),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_generated_client_drives_the_whole_story(world, demo, gateways, generated, client_for):
    gateway = gateways[0]
    admin_key, admin_secret = make_admin_key(world.org, name="terraform")
    models = importlib.import_module(f"{PACKAGE}.models")
    client = generated.AuthenticatedClient(base_url=gateway.url, token=admin_secret, raise_on_unexpected_status=True)
    console = client_for(world.owner)

    # 1. A sub-workspace; a retry with the same Idempotency-Key creates nothing more.
    create_sub = _op(generated, "workspaces", "create_sub_workspace")
    body = models.SubWorkspaceIn(name="Platform", slug="acme-platform")
    sub = create_sub.sync(ws="acme", client=client, body=body, idempotency_key="tf-run-1/sub")
    assert (sub.slug, sub.parent) == ("acme-platform", "acme")
    retried = create_sub.sync_detailed(ws="acme", client=client, body=body, idempotency_key="tf-run-1/sub")
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true" and retried.parsed.id == sub.id
    assert Workspace.objects.filter(parent=world.org).count() == 2
    assert console.get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.count(b"Platform") >= 1

    # 2. A deployment on the demo model with a price, then a later price version.
    deployment = _op(generated, "deployments", "create_deployment").sync(
        ws="acme",
        client=client,
        body=models.DeploymentIn(
            name="Demo chat",
            model_id="@acme/demo-chat",
            upstream_base_url=demo.url + "/v1",
            upstream_model="gatehouse-demo",
            upstream_api_key=UPSTREAM_KEY,
            input_per_million="300",
            output_per_million="600",
        ),
        idempotency_key="tf-run-1/deployment",
    )
    assert deployment.status == "running" and Decimal(str(deployment.price.input_per_million)) == Decimal("300")
    prices = _op(generated, "deployments", "list_prices").sync(ws="acme", deployment_id=deployment.id, client=client)
    assert [Decimal(str(p.output_per_million)) for p in prices.data] == [Decimal("600")]
    page = console.get(reverse("deployment_detail", kwargs={"ws": "acme", "deployment": deployment.id}))
    assert page.status_code == 200 and b"@acme/demo-chat" in page.content

    # 3. Granted to the sub-workspace.
    grant = _op(generated, "grants", "put_grant").sync(ws="acme", deployment_id=deployment.id, sub="acme-platform", client=client)
    assert grant.workspace == "acme-platform"
    grants_page = console.get(reverse("grants_page", kwargs={"ws": "acme"}))
    assert grants_page.status_code == 200 and b"Platform" in grants_page.content

    # 4. An API key in the sub-workspace, scoped to the deployment; the secret comes back once.
    created = _op(generated, "api_keys", "create_api_key").sync(
        ws="acme-platform",
        client=client,
        body=models.ApiKeyIn(name="checkout-service", deployments=[deployment.id], tpm_limit=100_000),
        idempotency_key="tf-run-1/key",
    )
    app_secret = created.secret
    assert app_secret.startswith("gh_live_") and created.api_key.hint.endswith(app_secret[-4:])
    secrets_page = console.get(reverse("secrets_page", kwargs={"ws": "acme-platform"}))
    assert b"checkout-service" in secrets_page.content and app_secret.encode() not in secrets_page.content

    # 5. The key calls the model through the gateway. The admin key never calls models, and the
    #    application key never calls the admin API.
    answer = _chat(gateway, app_secret, "@acme/demo-chat")
    assert answer.status_code == 200, answer.text
    refused = _chat(gateway, admin_secret, "@acme/demo-chat")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    wrong_way = httpx.get(gateway.url + "/api/admin/v1/workspaces", headers={"authorization": f"Bearer {app_secret}"}, timeout=10)
    assert wrong_way.status_code == 401 and wrong_way.json()["error"]["code"] == "unauthenticated"

    # 6. Usage read back through the API equals the dashboard's and the CSV's numbers.
    assert wait_for(lambda: UsageEvent.objects.filter(workspace__slug="acme-platform").count() == 1)
    usage_rollup()  # the worker's pass
    get_usage = _op(generated, "usage", "get_usage")
    by_key = get_usage.sync(ws="acme-platform", client=client, group_by=models.GetUsageGroupBy.KEY)
    assert [(row.key, row.requests) for row in by_key.data] == [(str(created.api_key.id), 1)]
    api_cost = Decimal(str(by_key.data[0].cost_cents))
    assert api_cost > 0 and by_key.totals.requests == 1
    report = console.get(reverse("usage_page", kwargs={"ws": "acme-platform"})).context["report"]
    dashboard_row = next(r for r in report.by_key if r["api_key__public_id"] == created.api_key.id)
    assert (dashboard_row["requests"], dashboard_row["cost_cents"], dashboard_row["prompt_tokens"]) == (
        1,
        api_cost,
        by_key.data[0].prompt_tokens,
    )
    exported = list(csv.reader(io.StringIO(console.get(reverse("usage_export", kwargs={"ws": "acme-platform"})).content.decode())))
    csv_row = next(r for r in exported if len(r) > 1 and r[1] == str(created.api_key.id))
    # The CSV writes small amounts exactly and larger ones in the allocated cents (usage.amounts).
    assert int(csv_row[2]) == 1 and csv_row[2 + len(METRICS)] == amount_text(Decimal(str(by_key.data[0].cost)), api_cost)
    assert Decimal(str(by_key.data[0].cost)) == dashboard_row["cost"]
    by_day = get_usage.sync(ws="acme-platform", client=client)
    assert sum(Decimal(str(d.cost_cents)) for d in by_day.data) == api_cost
    from_org = get_usage.sync(ws="acme", client=client, group_by=models.GetUsageGroupBy.WORKSPACE)
    assert [(r.workspace, Decimal(str(r.cost_cents))) for r in from_org.data] == [("acme-platform", api_cost)]

    # 7. A monthly budget for the sub-workspace.
    budget = _op(generated, "budgets", "put_budget").sync(
        ws="acme-platform", client=client, body=models.BudgetIn(amount="25.00", currency="USD", block_requests=True)
    )
    assert Decimal(str(budget.amount)) == Decimal("25.00") and budget.block_requests
    assert b"25.00" in console.get(reverse("billing_page", kwargs={"ws": "acme-platform"})).content

    # 8. Rotate without grace: the old secret stops at the gateway, the new one works.
    rotated = _op(generated, "api_keys", "rotate_api_key").sync(
        ws="acme-platform", key_id=created.api_key.id, client=client, body=models.RotateIn(grace_seconds=0)
    )
    new_secret = rotated.secret
    assert new_secret != app_secret
    assert wait_for(lambda: _chat(gateway, app_secret, "@acme/demo-chat").status_code == 401)
    assert _chat(gateway, new_secret, "@acme/demo-chat").status_code == 200

    # 9. Revoke: every secret of the key is refused.
    revoked = _op(generated, "api_keys", "revoke_api_key").sync(ws="acme-platform", key_id=created.api_key.id, client=client)
    assert revoked.status == "revoked"
    assert wait_for(lambda: _chat(gateway, new_secret, "@acme/demo-chat").status_code == 401)
    detail = console.get(reverse("api_key_detail", kwargs={"ws": "acme-platform", "key": created.api_key.id}))
    assert b"Revoked" in detail.content

    # Every step is in the audit log with the admin key as the actor, readable through the API too.
    actor = admin_key.actor_label
    done = set(AuditEvent.objects.filter(actor_label=actor).values_list("workspace__slug", "action"))
    assert {
        ("acme-platform", "workspace.created"),
        ("acme", "sub_workspace.created"),
        ("acme", "deployment.created"),
        ("acme", "deployment.price_set"),
        ("acme", "model_grant.added"),
        ("acme-platform", "model_grant.added"),
        ("acme-platform", "api_key.created"),
        ("acme-platform", "budget.created"),
        ("acme-platform", "api_key.rotated"),
        ("acme-platform", "api_key.revoked"),
    } <= done
    audit = _op(generated, "audit", "list_audit_events").sync(ws="acme-platform", client=client, action="api_key")
    assert [e.action for e in audit.data] == ["api_key.revoked", "api_key.rotated", "api_key.created"]
    assert {e.actor for e in audit.data} == {actor}
    audit_page = console.get(reverse("audit_page", kwargs={"ws": "acme-platform"}))
    assert actor.encode() in audit_page.content
    assert ApiKey.objects.filter(workspace__slug="acme-platform").count() == 1  # the idempotent retry made no second
    assert Deployment.objects.filter(model_id="@acme/demo-chat").count() == 1
