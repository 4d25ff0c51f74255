"""Usage and billing dashboards: numbers from rollups, CSV == screen == rollup sums, split to the cent, tenancy."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from usage.selectors import allocate_cents, cents
from usage.services import usage_rollup

from .usage_factory import event, make_deployment, make_key, rollup_totals

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


@pytest.fixture
def usage(world, settings):
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", price=("0.333", "1.777"), at=NOW - timedelta(days=60))
    world.embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=NOW - timedelta(days=60))
    for day in range(3):
        for i in range(5):
            event(world.org, NOW - timedelta(days=day, minutes=i), key=world.key, deployment=world.chat, prompt=1003 + i,
                  completion=77 * i, status=500 if i == 4 else 200)
        event(world.org, NOW - timedelta(days=day), key=world.key, deployment=world.embed, prompt=5001, completion=0)
        event(world.sub, NOW - timedelta(days=day, minutes=3), key=world.sub_key, deployment=world.chat, prompt=333, completion=999)
    usage_rollup(now=NOW)
    return world


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


RANGE = "?start=2026-03-01&end=2026-03-10"


def _csv(resp) -> list[list[str]]:
    return list(csv.reader(io.StringIO(resp.content.decode())))


def test_usage_page_totals_equal_csv_and_rollup_sums(usage, client_for, frozen, django_assert_max_num_queries):
    client = client_for(usage.owner)
    with django_assert_max_num_queries(15):  # 13 + the budget card and the shell's budget banner
        resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}")
    assert resp.status_code == 200
    report = resp.context["report"]
    expected = rollup_totals(workspace__in=[usage.org, usage.sub])
    assert expected["requests"] == 21
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens"):
        assert report.totals[name] == expected[name]
    assert report.totals["cost"] == expected["cost"]
    assert report.totals["cost_cents"] == cents(expected["cost"])
    body = resp.content.decode()
    assert f'data-total="cost">{cents(expected["cost"])}' in body
    assert "<svg" in body and "<title>Mar 10: 7 requests</title>" in body
    assert 'style="' not in body
    assert {r["workspace__slug"] for r in report.by_workspace} == {usage.org.slug, usage.sub.slug}

    rows = _csv(client.get(f"/w/{usage.org.slug}/usage/export.csv{RANGE}"))
    assert rows[0][0] == "day" and len(rows) == 1 + 10 + 1
    total = rows[-1]
    assert total[0] == "total"
    assert int(total[1]) == expected["requests"] and int(total[5]) == expected["total_tokens"]
    assert Decimal(total[6]) == cents(expected["cost"])
    assert sum(int(r[1]) for r in rows[1:-1]) == expected["requests"]
    assert sum(Decimal(r[6]) for r in rows[1:-1]) == expected["cost"]


def test_filters_narrow_rows_and_htmx_gets_the_fragment(usage, client_for, frozen):
    client = client_for(usage.owner)
    resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&workspace={usage.sub.slug}", headers={"HX-Request": "true"})
    assert resp.status_code == 200
    assert resp.content.decode().lstrip().startswith('<div id="usage-results"')
    assert resp.context["report"].totals["requests"] == rollup_totals(workspace=usage.sub)["requests"] == 3
    resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&deployment={usage.embed.public_id}")
    assert resp.context["report"].totals["prompt_tokens"] == 3 * 5001


@pytest.mark.parametrize("query", ["?start=2026-03-10&end=2026-03-01", "?start=2024-01-01&end=2026-03-01", "?start=nope"])
def test_bad_range_is_a_form_error(usage, client_for, frozen, query):
    resp = client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/{query}")
    assert resp.status_code == 200
    assert "report" not in resp.context and 'data-testid="usage-errors"' in resp.content.decode()
    assert client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/export.csv{query}").status_code == 400


def test_default_range_is_last_30_days(usage, client_for, frozen):
    scope = client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/").context["scope"]
    assert (scope.start, scope.end) == (date(2026, 2, 9), date(2026, 3, 10))


def test_sub_member_sees_only_own_workspace_and_sibling_is_404(usage, client_for, frozen):
    from console.models import Workspace
    sibling = Workspace.objects.create(name="Acme Sales", slug="acme-sales", parent=usage.org)
    client = client_for(usage.sub_member)
    resp = client.get(f"/w/{usage.sub.slug}/usage/{RANGE}")
    assert resp.status_code == 200
    assert resp.context["report"].totals["requests"] == 3 and resp.context["report"].by_workspace == []
    # A filter naming another workspace is a form error, never a wider view.
    widened = client.get(f"/w/{usage.sub.slug}/usage/{RANGE}&workspace={usage.org.slug}")
    assert widened.context["form"].errors and "report" not in widened.context
    for url in ("usage/", "usage/export.csv", "billing/", "billing/export.csv"):
        assert client.get(f"/w/{sibling.slug}/{url}").status_code == 404
        assert client.get(f"/w/{usage.org.slug}/{url}").status_code == 404
        assert client_for(usage.outsider).get(f"/w/{usage.org.slug}/{url}").status_code == 404


def test_billing_split_sums_to_org_total_to_the_cent(usage, client_for, frozen, django_assert_max_num_queries):
    client = client_for(usage.owner)
    with django_assert_max_num_queries(8):
        resp = client.get(f"/w/{usage.org.slug}/billing/?month=2026-03")
    st = resp.context["statement"]
    exact = rollup_totals(workspace__in=[usage.org, usage.sub])["cost"]
    assert st.exact == exact and st.total == cents(exact)
    assert [s.slug for s in st.sections] == [usage.org.slug, usage.sub.slug]
    assert sum(s.total for s in st.sections) == st.total
    for s in st.sections:
        assert sum(i["cost_cents"] for i in s.items) == s.total
        assert abs(s.total - s.exact) < Decimal("0.01")
    assert st.sections[1].exact == rollup_totals(workspace=usage.sub)["cost"]
    body = resp.content.decode()
    assert f'data-testid="statement-total">{st.total} <small>USD' in body
    rows = _csv(client.get(f"/w/{usage.org.slug}/billing/export.csv?month=2026-03"))
    assert rows[-1][0] == "total" and Decimal(rows[-1][5]) == st.total
    assert sum(Decimal(r[5]) for r in rows[1:-1] if r[1] == "subtotal") == st.total
    # An empty month is an empty statement, not an error; a bad month is a form error.
    assert client.get(f"/w/{usage.org.slug}/billing/?month=2025-01").context["statement"].total == 0
    assert client.get(f"/w/{usage.org.slug}/billing/?month=2025-13").context["form"].errors


def test_sub_member_statement_is_their_own(usage, client_for, frozen):
    st = client_for(usage.sub_member).get(f"/w/{usage.sub.slug}/billing/?month=2026-03").context["statement"]
    assert [s.slug for s in st.sections] == [usage.sub.slug]
    assert st.exact == rollup_totals(workspace=usage.sub)["cost"]


def test_allocate_cents_parts_add_up_when_rounding_would_not():
    parts = [Decimal("0.005")] * 3  # each rounds to 0.01 (0.03), the total rounds to 0.02
    assert cents(sum(parts)) == Decimal("0.02")
    assert sum(allocate_cents(parts)) == Decimal("0.02")
    assert allocate_cents(parts) == [Decimal("0.01"), Decimal("0.01"), Decimal("0.00")]
    assert allocate_cents([Decimal("1.234"), Decimal("2.345"), Decimal("0.001")]) == [Decimal("1.23"), Decimal("2.35"), Decimal("0.00")]
