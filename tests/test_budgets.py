"""Monthly budgets: the form, roles, spend from rollups in the workspace's month, 80/100 % alerts once
a month, banners, and the blocked state the gateway reads."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection

from console.audit import Actor
from console.models import AuditEvent
from keys.changes import local_generations
from usage.budgets import budget_blocked_until, budget_spend, local_month
from usage.models import Budget, BudgetAlert
from usage.services import budget_check, budget_remove, budget_set, budgets_check, usage_rollup

from .usage_factory import event, make_deployment, make_key

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
MARCH = NOW.date().replace(day=1)
# 10 000 per million tokens: every prompt token costs exactly one cent.
CENT_A_TOKEN = ("10000", "0")


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


@pytest.fixture
def spend(world):
    """spend(workspace, dollars): usage events worth that much, rolled up (budgets checked) at NOW."""
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", price=CENT_A_TOKEN, at=NOW - timedelta(days=90))

    def add(workspace, dollars: str, *, at: datetime = NOW - timedelta(minutes=5)) -> None:
        key = world.key if workspace == world.org else world.sub_key
        event(workspace, at, key=key, deployment=world.chat, prompt=int(Decimal(dollars) * 100), completion=0)
        usage_rollup(now=NOW)

    return add


def _budget(workspace, amount: str, *, block: bool = False) -> Budget:
    return budget_set(
        workspace=workspace, amount=Decimal(amount), currency="USD", block_requests=block, actor=Actor.system("tests"), now=NOW
    )


def _alerts(workspace) -> list[int]:
    return sorted(BudgetAlert.objects.filter(workspace=workspace).values_list("threshold", flat=True))


# --- the form and who may use it ------------------------------------------------------------------

BAD_INPUT = [
    ({"amount": "", "currency": "USD"}, "amount", "This field is required."),
    ({"amount": "0", "currency": "USD"}, "amount", "at least 0.01"),
    ({"amount": "-5", "currency": "USD"}, "amount", "at least 0.01"),
    ({"amount": "ten", "currency": "USD"}, "amount", "Enter a number."),
    ({"amount": "10.001", "currency": "USD"}, "amount", "at most 2 decimal places"),
    ({"amount": "1e15", "currency": "USD"}, "amount", "less than or equal to"),
    ({"amount": "10", "currency": "XYZ"}, "currency", "Select a valid choice."),
    ({"amount": "10"}, "currency", "This field is required."),
]


@pytest.mark.parametrize(("data", "field", "message"), BAD_INPUT)
def test_bad_budget_input_is_a_form_error_and_changes_nothing(world, client_for, data, field, message):
    _budget(world.org, "50")
    before = (list(Budget.objects.values_list("amount", "currency", "block_requests")), AuditEvent.objects.count())
    response = client_for(world.admin).post("/w/acme/billing/budget/", data)
    assert response.status_code == 400
    assert message in " ".join(response.context["form"].errors[field])
    assert (list(Budget.objects.values_list("amount", "currency", "block_requests")), AuditEvent.objects.count()) == before


def test_admin_sets_then_changes_the_budget_and_both_are_audited(world, client_for):
    client = client_for(world.admin)
    assert client.get("/w/acme/billing/budget/").status_code == 200
    response = client.post("/w/acme/billing/budget/", {"amount": "250.50", "currency": "USD", "block_requests": "on"})
    assert response.status_code == 302 and response["Location"] == "/w/acme/billing/"
    budget = Budget.objects.get(workspace=world.org)
    assert (budget.amount, budget.currency, budget.block_requests) == (Decimal("250.50"), "USD", True)
    created = AuditEvent.objects.get(action="budget.created")
    assert (created.workspace, created.actor, created.details["amount"]) == (world.org, world.admin, "250.50")

    client.post("/w/acme/billing/budget/", {"amount": "300", "currency": "USD"})
    budget.refresh_from_db()
    assert (budget.amount, budget.block_requests) == (Decimal("300.00"), False)
    assert AuditEvent.objects.get(action="budget.updated").details == {"amount": ["250.50", "300.00"], "block_requests": ["True", "False"]}

    client.post("/w/acme/billing/budget/remove/")
    assert not Budget.objects.filter(workspace=world.org).exists()
    assert AuditEvent.objects.filter(action="budget.removed", actor=world.admin).count() == 1


def test_default_workspace_admin_sets_a_sub_workspace_budget(world, client_for):
    response = client_for(world.owner).post("/w/acme-research/billing/budget/", {"amount": "40", "currency": "USD"})
    assert response.status_code == 302
    assert Budget.objects.get(workspace=world.sub).amount == Decimal("40")
    assert AuditEvent.objects.filter(workspace=world.sub, action="budget.created", actor=world.owner).exists()


@pytest.mark.parametrize(
    ("role", "slug", "status"),
    [
        ("developer", "acme", 403),
        ("viewer", "acme", 403),
        ("sub_member", "acme-research", 403),
        ("outsider", "acme", 404),
        ("sub_member", "acme", 404),
    ],
)
def test_only_admins_edit_budgets(world, client_for, role, slug, status):
    client = client_for(world.user(role))
    assert client.get(f"/w/{slug}/billing/budget/").status_code == status
    assert client.post(f"/w/{slug}/billing/budget/", {"amount": "1", "currency": "USD"}).status_code == status
    assert client.post(f"/w/{slug}/billing/budget/remove/").status_code == status
    assert not Budget.objects.exists()


@pytest.mark.parametrize("role", ["developer", "viewer"])
def test_members_see_budget_status_but_no_edit_button(world, client_for, spend, frozen, role):
    _budget(world.org, "100")
    spend(world.org, "25")
    for page in ("billing", "usage"):
        body = client_for(world.user(role)).get(f"/w/acme/{page}/").content.decode()
        assert 'data-testid="budget-card"' in body and "25 %" in body and "of 100.00 USD" in body
        assert "whole organisation" in body
        assert 'data-testid="budget-edit"' not in body
    admin_body = client_for(world.admin).get("/w/acme/billing/").content.decode()
    assert 'data-testid="budget-edit"' in admin_body


# --- spend and thresholds -------------------------------------------------------------------------


def test_thresholds_fire_once_each_from_79_to_81_to_101_percent(world, spend, frozen):
    _budget(world.org, "10")
    spend(world.org, "7.90")
    assert Budget.objects.get().spent == Decimal("7.90") and _alerts(world.org) == []

    spend(world.org, "0.20")  # 81 %
    assert _alerts(world.org) == [80]
    budgets_check(now=NOW)  # a second run changes nothing
    usage_rollup(now=NOW)
    assert _alerts(world.org) == [80]

    spend(world.org, "2.00")  # 101 %
    budgets_check(now=NOW)
    assert _alerts(world.org) == [80, 100]
    audit = AuditEvent.objects.filter(action="budget.threshold_reached", workspace=world.org).order_by("id")
    assert [(e.details["threshold"], e.details["spent"], e.details["month"], e.actor_label) for e in audit] == [
        (80, "8.10", "2026-03", "budget check"),
        (100, "10.10", "2026-03", "budget check"),
    ]


def test_jumping_past_both_thresholds_fires_both_once(world, spend, frozen):
    _budget(world.org, "10")
    spend(world.org, "15")
    budgets_check(now=NOW)
    assert _alerts(world.org) == [80, 100]
    assert AuditEvent.objects.filter(action="budget.threshold_reached").count() == 2


def test_raising_the_budget_re_arms_the_thresholds_it_left_behind(world, spend, frozen):
    _budget(world.org, "10")
    spend(world.org, "8.50")  # 85 % of 10
    assert _alerts(world.org) == [80]
    _budget(world.org, "20")  # 42 %: the 80 % alert is armed again
    assert _alerts(world.org) == []
    spend(world.org, "8.00")  # 16.50 of 20: 82 %
    assert _alerts(world.org) == [80]
    assert AuditEvent.objects.filter(action="budget.threshold_reached").count() == 2
    _budget(world.org, "16")  # lowered below the spend: 100 % fires, 80 % stays fired
    assert _alerts(world.org) == [80, 100]
    assert AuditEvent.objects.filter(action="budget.threshold_reached").count() == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_fire_each_threshold_once(world, spend):
    _budget(world.org, "10")
    spend(world.org, "12")  # rolled up; the check already ran once: clear its alerts to race from scratch
    BudgetAlert.objects.all().delete()
    audited_before = AuditEvent.objects.filter(action="budget.threshold_reached").count()  # append-only: count from here
    budget_id = Budget.objects.get().id
    barrier = threading.Barrier(4)

    def check():
        try:
            barrier.wait()
            budget_check(budget_id=budget_id, now=NOW)
        finally:
            connection.close()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _alerts(world.org) == [80, 100]
    assert AuditEvent.objects.filter(action="budget.threshold_reached").count() == audited_before + 2


def test_next_month_starts_from_zero_and_alerts_again(world, spend, frozen):
    _budget(world.org, "10")
    spend(world.org, "9")
    assert _alerts(world.org) == [80]
    april = datetime(2026, 4, 2, 12, 0, tzinfo=UTC)
    event(world.org, april - timedelta(hours=1), key=world.key, deployment=world.chat, prompt=850, completion=0)
    usage_rollup(now=april)
    budget = Budget.objects.get()
    assert (budget.spent_month, budget.spent) == (april.date().replace(day=1), Decimal("8.50"))
    assert sorted(BudgetAlert.objects.values_list("month", "threshold")) == [(MARCH, 80), (april.date().replace(day=1), 80)]


def test_months_are_counted_in_the_workspace_time_zone(world, spend):
    world.org.time_zone = "Pacific/Auckland"  # UTC+13 in March
    world.org.save(update_fields=["time_zone"])
    # 20:00 UTC on Feb 28 is 09:00 on March 1 in Auckland: March's spend there, February's in UTC.
    at = datetime(2026, 2, 28, 20, 0, tzinfo=UTC)
    spend(world.org, "3", at=at)
    assert local_month(at, world.org.tz) == MARCH
    assert budget_spend(world.org, MARCH, "USD") == Decimal("3")
    assert budget_spend(world.org, MARCH.replace(month=2), "USD") == Decimal("0")


def test_default_budget_covers_the_organisation_and_a_sub_budget_only_its_own(world, spend, frozen):
    spend(world.org, "2")
    spend(world.sub, "5")
    assert budget_spend(world.org, MARCH, "USD") == Decimal("7")
    assert budget_spend(world.sub, MARCH, "USD") == Decimal("5")
    assert budget_spend(world.org, MARCH, "EUR") == Decimal("0")  # only the budget's currency counts


# --- the blocked state the gateway reads ----------------------------------------------------------


def test_blocking_budget_blocks_until_month_end_and_raising_it_unblocks(world, spend, frozen, django_capture_on_commit_callbacks):
    _budget(world.org, "10", block=True)
    spend(world.sub, "11")  # a sub-workspace's spend uses up the organisation's budget
    month_end = datetime(2026, 4, 1, tzinfo=UTC)
    assert budget_blocked_until(world.org, now=NOW) == month_end
    assert budget_blocked_until(world.sub, now=NOW) == month_end  # the organisation's budget covers it
    assert budget_blocked_until(world.org, now=month_end) is None  # a new month unblocks by itself

    before = local_generations[world.key.id], local_generations[world.sub_key.id]
    with django_capture_on_commit_callbacks(execute=True):
        _budget(world.org, "20", block=True)
    assert budget_blocked_until(world.org, now=NOW) is None
    # Every key the budget covers was announced as changed, so gateways reload it.
    assert (local_generations[world.key.id], local_generations[world.sub_key.id]) == (before[0] + 1, before[1] + 1)


def test_warning_only_budget_never_blocks(world, spend, frozen):
    _budget(world.org, "10", block=False)
    spend(world.org, "50")
    assert Budget.objects.get().exhausted_in(MARCH)
    assert budget_blocked_until(world.org, now=NOW) is None


def test_sub_workspace_budget_blocks_only_that_sub_workspace(world, spend, frozen):
    _budget(world.sub, "1", block=True)
    spend(world.sub, "2")
    assert budget_blocked_until(world.sub, now=NOW) is not None
    assert budget_blocked_until(world.org, now=NOW) is None


def test_removing_a_budget_unblocks(world, spend, frozen):
    _budget(world.org, "1", block=True)
    spend(world.org, "2")
    assert budget_blocked_until(world.org, now=NOW) is not None
    budget_remove(workspace=world.org, actor=Actor.system("tests"))
    assert budget_blocked_until(world.org, now=NOW) is None


# --- banners ---------------------------------------------------------------------------------------

PAGES = ["", "usage/", "billing/", "secrets/"]


def _banner(client, slug: str, page: str = "") -> str:
    body = client.get(f"/w/{slug}/{page}").content.decode()
    return " ".join(part.split("</div>")[0] for part in body.split('data-testid="budget-banner"')[1:])


def test_no_banner_below_80_percent(world, client_for, spend, frozen):
    _budget(world.org, "10")
    spend(world.org, "7.99")
    assert _banner(client_for(world.viewer), "acme") == ""


@pytest.mark.parametrize("page", PAGES)
def test_members_see_the_80_percent_banner_on_every_shell_page(world, client_for, spend, frozen, page):
    _budget(world.org, "10")
    spend(world.org, "8.50")
    banner = _banner(client_for(world.viewer), "acme", page)
    assert "85 % of the monthly budget used" in banner


def test_blocking_banner_for_the_organisation_and_its_sub_workspaces_without_figures(world, client_for, spend, frozen):
    _budget(world.org, "10", block=True)
    spend(world.org, "12")
    assert "Monthly budget used up" in _banner(client_for(world.developer), "acme")
    assert "refuses" in _banner(client_for(world.developer), "acme")
    sub_banner = _banner(client_for(world.sub_member), "acme-research")
    assert "Requests are blocked" in sub_banner and "Acme has used its monthly budget" in sub_banner
    assert "12" not in sub_banner and "%" not in sub_banner


def test_sub_members_do_not_see_the_organisation_warning(world, client_for, spend, frozen):
    _budget(world.org, "10")  # warns only: nothing is blocked, so nothing for sub-workspaces
    spend(world.org, "9")
    assert _banner(client_for(world.sub_member), "acme-research") == ""


def test_sub_budget_banner_for_its_members_and_org_admins_not_org_viewers(world, client_for, spend, frozen):
    _budget(world.sub, "10")
    spend(world.sub, "9")
    assert "90 % of the monthly budget used" in _banner(client_for(world.sub_member), "acme-research")
    assert "Research: 90 %" in _banner(client_for(world.admin), "acme")
    assert _banner(client_for(world.viewer), "acme") == ""
