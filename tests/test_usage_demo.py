"""`make run`'s demo traffic: written like the gateway writes events, rolled up for real, seeded once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db.models import Sum

from console.audit import Actor
from deployments.services import deployment_create
from keys.models import ApiKey
from usage.demo import demo_traffic_seed
from usage.models import UsageDaily, UsageEvent
from usage.services import usage_reconcile

NOW = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_deployment(world):
    return deployment_create(
        workspace=world.org,
        actor=Actor.system("tests"),
        name="Demo model",
        model_id="@acme/gatehouse-demo",
        upstream_base_url="http://127.0.0.1:8001/v1",
        input_per_million="0.10",
        output_per_million="0.40",
    )


def test_demo_traffic_is_rolled_up_and_reconciles(world, demo_deployment):
    result = demo_traffic_seed(deployment=demo_deployment, days=30, now=NOW)

    events = UsageEvent.objects.all()
    assert result.events == events.count() > 500
    assert set(events.values_list("workspace__slug", flat=True)) == {world.org.slug, world.sub.slug}
    assert events.filter(created_at__gt=NOW).count() == 0
    assert events.filter(created_at__lt=NOW - timedelta(days=31)).count() == 0
    assert UsageDaily.objects.aggregate(n=Sum("requests"))["n"] == events.count()
    assert UsageDaily.objects.aggregate(c=Sum("cost"))["c"] == events.aggregate(c=Sum("cost"))["c"] > 0
    assert usage_reconcile(days=0, now=NOW).ok
    for key in ApiKey.objects.filter(name__endswith=".demo"):  # Secrets shows when each was last used
        assert key.last_used_at == events.filter(api_key=key).latest("created_at").created_at


def test_the_day_in_progress_is_not_crammed_into_its_first_hours(world, demo_deployment):
    # 23:50 UTC is 00:50 in Berlin, where the sub-workspace's new day began 50 minutes ago.
    world.sub.time_zone = "Europe/Berlin"
    world.sub.save(update_fields=["time_zone"])
    now = datetime(2026, 3, 10, 23, 50, tzinfo=UTC)  # a Tuesday: weekday volume on both sides
    demo_traffic_seed(deployment=demo_deployment, days=30, now=now)

    sub = UsageEvent.objects.filter(workspace=world.sub)
    last_hour = sub.filter(created_at__gte=now - timedelta(minutes=50)).count()
    earlier = sub.filter(created_at__gte=now - timedelta(days=3), created_at__lt=now - timedelta(minutes=50)).count() / (72 - 50 / 60)
    assert last_hour <= 4 * earlier + 3


def test_demo_traffic_carries_two_price_versions_and_costs_each_event_at_its_own(demo_deployment, world):
    demo_traffic_seed(deployment=demo_deployment, days=30, now=NOW)

    prices = set(UsageEvent.objects.values_list("input_price_per_million", "output_price_per_million"))
    assert prices == {(Decimal("0.08"), Decimal("0.32")), (Decimal("0.10"), Decimal("0.40"))}
    for e in UsageEvent.objects.all()[:200]:
        expected = (e.prompt_tokens * e.input_price_per_million + e.completion_tokens * e.output_price_per_million) / 1_000_000
        assert e.cost == expected.quantize(Decimal("0.000000001"))


def test_demo_traffic_is_seeded_once(world, demo_deployment, capsys):
    call_command("seed_demo_usage", "--days", "5")
    first = UsageEvent.objects.count()
    call_command("seed_demo_usage", "--days", "5")

    assert first > 0 and UsageEvent.objects.count() == first
    assert "nothing seeded" in capsys.readouterr().out
    assert ApiKey.objects.filter(name__endswith=".demo").count() == 2
    assert demo_deployment.grants.filter(workspace=world.sub).exists()


def test_demo_traffic_needs_the_demo_deployment(world):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="run seed_demo first"):
        call_command("seed_demo_usage")
    assert UsageEvent.objects.count() == 0


def test_demo_budgets_show_one_workspace_inside_and_one_past_its_warning(world, demo_deployment):
    from usage.models import Budget, BudgetAlert

    demo_traffic_seed(deployment=demo_deployment, days=30, now=NOW)

    assert {b.workspace.slug: b.block_requests for b in Budget.objects.select_related("workspace")} == {
        world.org.slug: False,
        world.sub.slug: False,
    }
    assert list(BudgetAlert.objects.values_list("workspace__slug", "threshold")) == [(world.sub.slug, 80)]
