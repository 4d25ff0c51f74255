"""The overview page's panels: each app serves its own fragment; content, access, tenancy, query counts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from console.audit import Actor
from console.services import workspace_create
from deployments.models import DeploymentStatus
from usage.services import budget_set, usage_rollup

from .usage_factory import event, make_deployment, make_key

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


@pytest.fixture
def busy(world, frozen):
    """Usage today and this week in the organisation, Research and a sibling sub-workspace, Sales."""
    world.sales = workspace_create(name="Sales", slug="acme-sales", parent=world.org, actor=Actor.system("tests"))
    world.key, world.sub_key, world.sales_key = (
        make_key(world.org, "backend"),
        make_key(world.sub, "research-bot"),
        make_key(world.sales, "crm-sync"),
    )
    world.chat = make_deployment(world.org, "chat", price=("10000", "0"), at=NOW - timedelta(days=90))
    world.embed = make_deployment(world.org, "embed", price=("100", "0"), at=NOW - timedelta(days=90))
    for i in range(3):
        event(world.org, NOW - timedelta(minutes=i + 1), key=world.key, deployment=world.chat, prompt=100, completion=0)  # $1 each
    event(world.org, NOW - timedelta(days=3), key=world.key, deployment=world.embed, prompt=1000, completion=0)
    event(world.sub, NOW - timedelta(minutes=2), key=world.sub_key, deployment=world.embed, prompt=5000, completion=0)  # $0.50
    event(world.sales, NOW - timedelta(minutes=2), key=world.sales_key, deployment=world.chat, prompt=700, completion=0)  # $7
    usage_rollup(now=NOW)
    return world


def test_overview_page_loads_each_panel_with_htmx_and_links_without_javascript(busy, client_for):
    body = client_for(busy.viewer).get("/w/acme/").content.decode()
    for url, fallback in (
        ("/w/acme/usage/overview-panel/", "/w/acme/usage/"),
        ("/w/acme/deployments/overview-panel/", "/w/acme/deployments/"),
        ("/w/acme/secrets/overview-panel/", "/w/acme/secrets/"),
    ):
        assert f'hx-get="{url}" hx-trigger="load"' in body
        assert f'href="{fallback}"' in body


def test_usage_panel_shows_today_for_the_organisation_and_top_of_7_days(busy, client_for, django_assert_num_queries):
    client = client_for(busy.viewer)
    client.get("/w/acme/")  # warm the session
    # session, user, workspace, membership, today's totals, top keys, top deployments, budget.
    with django_assert_num_queries(8):
        response = client.get("/w/acme/usage/overview-panel/")
    numbers = response.context["numbers"]
    assert (numbers.requests, numbers.total_tokens, numbers.cost) == (5, 300 + 5000 + 700, Decimal("10.50"))
    assert [k["api_key__name"] for k in numbers.top_keys] == ["crm-sync", "backend", "research-bot"]
    assert numbers.top_keys[1]["requests"] == 4  # last 7 days include the request 3 days ago
    assert [d["deployment__name"] for d in numbers.top_deployments] == ["chat", "embed"]
    body = response.content.decode()
    assert 'data-today="requests">5<' in body and "10.50" in body
    assert "last 7 days, by cost" in body and "refreshed about once a minute" in body
    assert 'data-testid="panel-no-budget"' in body
    # Every cost in the top lists carries its currency.
    costs = re.findall(r"<td class=\"num\" data-top-cost>([^<]*)<small>([^<]*)</small>", body)
    assert len(costs) == 5 and all(unit == "USD" for _, unit in costs), costs


def test_usage_panel_of_a_sub_workspace_shows_only_its_own_numbers(busy, client_for, django_assert_num_queries):
    client = client_for(busy.sub_member)
    client.get("/w/acme-research/")
    with django_assert_num_queries(8):
        response = client.get("/w/acme-research/usage/overview-panel/")
    numbers = response.context["numbers"]
    assert (numbers.requests, numbers.cost) == (1, Decimal("0.50"))
    body = response.content.decode()
    assert "research-bot" in body
    assert "crm-sync" not in body and "backend" not in body


@pytest.mark.parametrize("panel", ["usage/overview-panel/", "deployments/overview-panel/", "secrets/overview-panel/"])
@pytest.mark.parametrize(
    ("role", "slug"), [("outsider", "acme"), ("sub_member", "acme"), ("sub_member", "acme-sales"), ("anonymous", "acme")]
)
def test_panels_are_404_for_outsiders_and_siblings(busy, client_for, panel, role, slug):
    response = client_for(busy.user(role)).get(f"/w/{slug}/{panel}")
    assert response.status_code == (302 if role == "anonymous" else 404)


def test_usage_panel_shows_the_budget(busy, client_for):
    budget_set(workspace=busy.org, amount=Decimal("20"), currency="USD", block_requests=False, actor=Actor.system("tests"), now=NOW)
    body = client_for(busy.viewer).get("/w/acme/usage/overview-panel/").content.decode()
    assert 'data-testid="budget-progress-acme"' in body and "53 %" in body and "10.60 spent" in body  # the month, not today


def test_deployments_panel_lists_unreachable_and_failed(busy, client_for, django_assert_num_queries):
    busy.chat.status, busy.chat.last_error = DeploymentStatus.UNREACHABLE, "connection refused"
    busy.chat.save(update_fields=["status", "last_error"])
    client = client_for(busy.viewer)
    client.get("/w/acme/")
    with django_assert_num_queries(5):  # session, user, workspace, membership, deployments
        body = client.get("/w/acme/deployments/overview-panel/").content.decode()
    assert "chat" in body and "Unreachable" in body and "connection refused" in body
    assert "embed" not in body
    busy.chat.status = DeploymentStatus.RUNNING
    busy.chat.save(update_fields=["status"])
    assert 'data-testid="deployments-all-healthy"' in client.get("/w/acme/deployments/overview-panel/").content.decode()


def test_deployments_panel_of_a_sub_workspace_shows_only_what_it_may_call(busy, client_for):
    busy.chat.status = DeploymentStatus.FAILED
    busy.chat.save(update_fields=["status"])
    # Research has no grant on chat: it does not learn that chat exists, let alone its health.
    body = client_for(busy.sub_member).get("/w/acme-research/deployments/overview-panel/").content.decode()
    assert "chat" not in body and 'data-testid="deployments-all-healthy"' not in body
    # With nothing to call, it does not claim that everything answered its health check.
    assert 'data-testid="deployments-none"' in body and "No deployment is available to this workspace yet" in body
    busy.chat.status = DeploymentStatus.RUNNING
    busy.chat.save(update_fields=["status"])
    body = client_for(busy.sub_member).get("/w/acme-research/deployments/overview-panel/").content.decode()
    assert 'data-testid="deployments-none"' in body


def test_keys_panel_lists_keys_expiring_within_14_days(busy, client_for, django_assert_num_queries):
    busy.key.expires_at = NOW + timedelta(days=10)
    busy.key.save(update_fields=["expires_at"])
    later = make_key(busy.org, "later")
    later.expires_at = NOW + timedelta(days=20)
    later.save(update_fields=["expires_at"])
    busy.sub_key.expires_at = NOW + timedelta(days=2)
    busy.sub_key.save(update_fields=["expires_at"])
    client = client_for(busy.viewer)
    client.get("/w/acme/")
    with django_assert_num_queries(5):  # session, user, workspace, membership, keys
        body = client.get("/w/acme/secrets/overview-panel/").content.decode()
    assert "backend" in body and "later" not in body
    assert "research-bot" not in body  # Research's keys are listed in Research
    sub_body = client_for(busy.sub_member).get("/w/acme-research/secrets/overview-panel/").content.decode()
    assert "research-bot" in sub_body and "backend" not in sub_body
