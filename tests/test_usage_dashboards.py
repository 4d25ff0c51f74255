"""Usage and billing dashboards: numbers from rollups, CSV == screen == rollup sums, split to the cent, tenancy."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from usage.amounts import amount_text
from usage.latency import p95
from usage.models import UsageDaily, UsageHourly
from usage.selectors import allocate_cents, cents, split_months
from usage.services import usage_rollup

from .usage_factory import csv_sections, event, make_deployment, make_key, rollup_totals

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)


@pytest.fixture
def usage(world, settings):
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", price=("0.333", "1.777"), at=NOW - timedelta(days=60))
    world.embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=NOW - timedelta(days=60))
    for day in range(3):
        for i in range(5):
            event(
                world.org,
                NOW - timedelta(days=day, minutes=i),
                key=world.key,
                deployment=world.chat,
                prompt=1003 + i,
                completion=77 * i,
                status=500 if i == 4 else 200,
            )
        event(world.org, NOW - timedelta(days=day), key=world.key, deployment=world.embed, prompt=5001, completion=0)
        event(world.sub, NOW - timedelta(days=day, minutes=3), key=world.sub_key, deployment=world.chat, prompt=333, completion=999)
    usage_rollup(now=NOW)
    return world


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


RANGE = "?start=2026-03-01&end=2026-03-10"


def written(row: dict) -> str:
    """A row's cost as the page and CSV write it (usage.amounts)."""
    return amount_text(row["cost"], row["cost_cents"])


def _csv(resp) -> list[list[str]]:
    return list(csv.reader(io.StringIO(resp.content.decode())))


def test_usage_page_totals_equal_csv_and_rollup_sums(usage, client_for, frozen, django_assert_num_queries):
    client = client_for(usage.owner)
    # session, user, workspace, role, sub-workspaces, keys, deployments, series, breakdowns (one query for
    # all three, grouped by ids) and the names of their keys, deployments and workspaces (3), (no key has
    # a limit: no yearly query), the shell's workspace switcher, the shell's budget banner, the budget card,
    # and the errors by reason with their keys' names (there are errors in range)
    with django_assert_num_queries(16):
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
    # A small total is written with the decimals it needs (0.0203), not as 0.02.
    assert expected["cost"] < Decimal("0.1") and f'data-total="cost">{amount_text(expected["cost"])} ' in body
    assert "<svg" in body and "<title>Tue Mar 10: 7 requests</title>" in body
    assert 'style="' not in body
    assert {r["workspace__slug"] for r in report.by_workspace} == {usage.org.slug, usage.sub.slug}

    sections = csv_sections(_csv(client.get(f"/w/{usage.org.slug}/usage/export.csv{RANGE}")))
    days = sections["day"]
    assert days[0][:2] == ["day", "requests"] and len(days) == 1 + 10 + 1
    total = days[-1]
    assert total[0] == "total"
    assert days[0][1:4] == ["requests", "answered", "refused"]  # requests = answered + refused
    assert int(total[1]) == int(total[2]) + int(total[3]) == expected["requests"] and int(total[3]) == expected["errors"]
    assert int(total[6]) == expected["total_tokens"]
    assert total[8] == amount_text(expected["cost"]) == written(report.totals)
    assert sum(int(r[1]) for r in days[1:-1]) == expected["requests"]
    # Each day as on screen: its allocated cents from 0.10 up, else the decimals it needs.
    assert [r[8] for r in days[1:-1]] == [written(p) for p in report.periods]
    # Every breakdown shown is exported in the order shown, and adds up to the same totals.
    for kind, rows in (("workspace", report.by_workspace), ("key", report.by_key), ("deployment", report.by_deployment)):
        section = sections[kind]
        assert [r[0] for r in section[1:-1]] == [
            r.get("workspace__name") or r.get("api_key__name") or r.get("deployment__name") for r in rows
        ]
        assert sum(int(r[2]) for r in section[1:-1]) == int(section[-1][2]) == expected["requests"]
        assert [r[9] for r in section[1:-1]] == [written(r) for r in rows] and section[-1][9] == written(report.totals)
        assert sum(r["cost_cents"] for r in rows) == report.totals["cost_cents"]
        assert f'<th class="num">{written(report.totals)}</th>' in body  # the table's total row


def test_tokens_chart_stacks_prompt_and_completion_with_a_legend(usage, client_for, frozen):
    resp = client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/{RANGE}")
    body = resp.content.decode()
    tokens = [c for c in resp.context["charts"] if c["metric"] == "tokens"][0]
    assert [s.label for s in tokens["series"]] == ["Prompt", "Completion"]
    mar10 = resp.context["report"].periods[-1]
    assert mar10["prompt_tokens"] == 5 * 1003 + 10 + 5001 + 333 and mar10["completion_tokens"] == 77 * 10 + 999
    title = f"Tue Mar 10: {mar10['prompt_tokens']:,} prompt + {mar10['completion_tokens']:,} completion = {mar10['total_tokens']:,} tokens"
    assert f"<title>{title}</title>" in body
    assert 'class="legend-swatch chart-s2"' in body
    # Two stacked segments in the last column, the completion one on top of the prompt one.
    prompt, completion = tokens["columns"][-1]["segments"]
    assert completion["y"] + completion["h"] == pytest.approx(prompt["y"])
    # The y axis has round ticks, labelled, starting at 0 and reaching the tallest column.
    labels = [t["label"] for t in tokens["y_ticks"]]
    assert labels[0] == "0" and len(labels) >= 3
    tallest = min(seg["y"] for col in tokens["columns"] for seg in col["segments"])
    assert tokens["y_ticks"][-1]["y"] <= tallest
    cost = [c for c in resp.context["charts"] if c["metric"] == "cost"][0]
    assert cost["unit"] == "USD" and f"Tue Mar 10: {mar10['cost_cents']} USD" in cost["columns"][-1]["title"]


def test_hourly_view_reads_hourly_rollups_with_local_hour_ticks(usage, client_for, frozen, django_assert_num_queries):
    usage.org.time_zone = "America/New_York"  # EDT (UTC-4) through the whole window
    usage.org.save(update_fields=["time_zone"])
    client = client_for(usage.owner)
    with django_assert_num_queries(16):  # as the day view: 13 + budget banner + budget card + errors by reason
        resp = client.get(f"/w/{usage.org.slug}/usage/?range=48h&start=2020-01-01")
    report = resp.context["report"]
    assert report.hourly and len(report.periods) == 48
    first = datetime(2026, 3, 8, 13, tzinfo=UTC)  # 48 hours ending with 12:00 UTC, the hour NOW is in
    assert report.periods[0]["period"] == first and report.periods[-1]["period"] == datetime(2026, 3, 10, 12, tzinfo=UTC)
    expected = rollup_totals(UsageHourly, workspace__in=[usage.org, usage.sub], hour__gte=first)
    assert expected["requests"] == 14  # today's and yesterday's; the day before is 48 h 4 min ago
    assert report.totals["requests"] == expected["requests"] and report.totals["cost"] == expected["cost"]
    tokens = [c for c in resp.context["charts"] if c["metric"] == "tokens"][0]
    assert tokens["title"] == "Tokens per hour"
    assert [t["label"] for t in tokens["x_ticks"]] == ["12:00", "18:00", "Mar 9", "06:00", "12:00", "18:00", "Mar 10", "06:00"]
    body = resp.content.decode()
    assert "<title>Mar 10, 08:00: 7 requests</title>" in body  # 12:26–12:30 UTC is 08:xx in New York
    assert 'id="id_start"' not in body and '<option value="48h" selected>' in body

    sections = csv_sections(_csv(client.get(f"/w/{usage.org.slug}/usage/export.csv?range=48h")))
    hours = sections["hour"]
    assert len(hours) == 1 + 48 + 1 and hours[1][0] == "2026-03-08T09:00-04:00"
    assert int(hours[-1][1]) == expected["requests"] and hours[-1][8] == amount_text(expected["cost"])
    assert [r[8] for r in hours[1:-1]] == [written(p) for p in resp.context["report"].periods]


def test_split_months_covers_a_range_once_with_whole_months_and_edge_days():
    assert split_months(date(2026, 1, 15), date(2026, 3, 10)) == (
        [date(2026, 2, 1)],
        [(date(2026, 1, 15), date(2026, 1, 31)), (date(2026, 3, 1), date(2026, 3, 10))],
    )
    assert split_months(date(2026, 1, 1), date(2026, 2, 28)) == ([date(2026, 1, 1), date(2026, 2, 1)], [])
    assert split_months(date(2026, 2, 3), date(2026, 2, 20)) == ([], [(date(2026, 2, 3), date(2026, 2, 20))])
    assert split_months(date(2025, 12, 31), date(2026, 1, 1)) == (
        [],
        [(date(2025, 12, 31), date(2025, 12, 31)), (date(2026, 1, 1), date(2026, 1, 1))],
    )


def test_a_range_of_whole_months_and_edge_days_shows_exactly_the_daily_rollups(usage, client_for, frozen, django_assert_num_queries):
    """Whole months are read from UsageMonthly, the edge days and the per-day series from finer rows:
    every table, on screen and in the CSV, still adds up to the daily rollups of the range."""
    for at, key, deployment, workspace in (
        (datetime(2026, 1, 10, 9, tzinfo=UTC), usage.key, usage.chat, usage.org),  # before the range
        (datetime(2026, 1, 20, 9, tzinfo=UTC), usage.key, usage.embed, usage.org),  # January edge days
        (datetime(2026, 2, 2, 9, tzinfo=UTC), usage.sub_key, usage.chat, usage.sub),  # February, whole
        (datetime(2026, 2, 27, 9, tzinfo=UTC), usage.key, usage.chat, usage.org),
    ):
        event(workspace, at, key=key, deployment=deployment, prompt=4321, completion=123, latency=2000)
    usage_rollup(now=NOW)
    client = client_for(usage.owner)
    with django_assert_num_queries(16):  # as for any range: the month rows and edge days are one query
        resp = client.get(f"/w/{usage.org.slug}/usage/?start=2026-01-15&end=2026-03-10&sort=name")
    report = resp.context["report"]
    in_range = {"workspace__in": [usage.org, usage.sub], "day__gte": date(2026, 1, 15), "day__lte": date(2026, 3, 10)}
    expected = rollup_totals(**in_range)
    assert expected["requests"] == 21 + 3
    assert report.totals["cost"] == expected["cost"] and report.totals["requests"] == expected["requests"]
    for kind, field in (("key", "api_key"), ("deployment", "deployment"), ("workspace", "workspace")):
        rows = getattr(report, f"by_{kind}")
        assert {r[f"{field}_id"]: (r["requests"], r["prompt_tokens"], r["cost"]) for r in rows} == {
            pk: (t["requests"], t["prompt_tokens"], t["cost"])
            for pk in {r[f"{field}_id"] for r in rows}
            for t in [rollup_totals(**in_range, **{f"{field}_id": pk})]
        }
        assert sum(r["cost_cents"] for r in rows) == report.totals["cost_cents"]
    assert [r["api_key__name"] for r in report.by_key] == ["backend", "research"]  # sort=name, ascending

    # p95 per key and overall: read from the rows' histograms added up (months and edge days alike).
    def p95_of(**filters):
        rows = UsageDaily.objects.filter(**in_range, **filters)
        return p95(sum(rows.values_list("latency_histogram", flat=True)), slowest=max(rows.values_list("latency_max_ms", flat=True)))

    assert {r["api_key_id"]: r["p95_ms"] for r in report.by_key} == {
        r["api_key_id"]: p95_of(api_key_id=r["api_key_id"]) for r in report.by_key
    }
    assert report.totals["p95_ms"] == p95_of() and report.totals["p95_ms"] is not None

    sections = csv_sections(_csv(client.get(f"/w/{usage.org.slug}/usage/export.csv?start=2026-01-15&end=2026-03-10&sort=name")))
    assert len(sections["day"]) == 1 + 55 + 1
    for kind in ("workspace", "key", "deployment"):
        assert sum(int(r[2]) for r in sections[kind][1:-1]) == expected["requests"]
        assert [r[9] for r in sections[kind][1:-1]] == [written(r) for r in getattr(report, f"by_{kind}")]
    assert [int(r[11]) for r in sections["key"][1:-1]] == [r["p95_ms"] for r in report.by_key]
    assert sections["key"][-1][11] == str(report.totals["p95_ms"])


def test_sorting_orders_every_breakdown_and_marks_the_column(usage, client_for, frozen, django_assert_num_queries):
    client = client_for(usage.owner)
    with django_assert_num_queries(16):
        resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=requests")
    by_key = resp.context["report"].by_key
    assert [r["api_key__name"] for r in by_key] == ["research", "backend"]  # 3 < 18 requests, ascending
    body = resp.content.decode()
    assert 'aria-sort="ascending"' in body and 'Requests&nbsp;<span class="sort-arrow" aria-hidden="true">↑</span>' in body
    # The active column's link reverses it; the others sort largest first; the filters stay.
    assert f'href="/w/{usage.org.slug}/usage/?start=2026-03-01&amp;end=2026-03-10&amp;sort=-requests"' in body
    assert f'href="/w/{usage.org.slug}/usage/?start=2026-03-01&amp;end=2026-03-10&amp;sort=-cost"' in body
    assert f'hx-get="/w/{usage.org.slug}/usage/?start=2026-03-01&amp;end=2026-03-10&amp;sort=-cost" hx-target="#usage-view"' in body
    desc = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=-requests").context["report"].by_key
    assert [r["api_key__name"] for r in desc] == ["backend", "research"]
    names = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=name").context["report"].by_deployment
    assert [r["deployment__name"] for r in names] == ["chat", "embed"]
    p95 = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=-p95").context["report"]
    assert p95.sort == "-p95"
    # A sort the page does not offer falls back to cost, largest first.
    bogus = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=password").context["report"]
    assert bogus.sort == "-cost" and bogus.by_key[0]["cost"] >= bogus.by_key[-1]["cost"]
    # The CSV follows the same sort.
    section = csv_sections(_csv(client.get(f"/w/{usage.org.slug}/usage/export.csv{RANGE}&sort=requests")))["key"]
    assert [r[0] for r in section[1:-1]] == ["research", "backend"]


def test_each_breakdown_row_links_to_the_filtered_view_keeping_the_range(usage, client_for, frozen):
    client = client_for(usage.owner)
    body = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&sort=requests").content.decode()
    base = f"/w/{usage.org.slug}/usage/?start=2026-03-01&amp;end=2026-03-10&amp;sort=requests"
    assert f'href="{base}&amp;key={usage.key.public_id}"' in body
    assert f'href="{base}&amp;deployment={usage.embed.public_id}"' in body
    assert f'href="{base}&amp;workspace={usage.sub.slug}"' in body
    # Following the key link narrows everything to that key (the link works without JavaScript).
    resp = client.get(f"/w/{usage.org.slug}/usage/?start=2026-03-01&end=2026-03-10&key={usage.key.public_id}")
    assert resp.context["report"].totals["requests"] == rollup_totals(api_key=usage.key)["requests"] == 18
    assert 'data-testid="clear-filters"' in resp.content.decode()


def test_htmx_gets_the_part_it_swaps(usage, client_for, frozen):
    client = client_for(usage.owner)
    url = f"/w/{usage.org.slug}/usage/{RANGE}"
    results = client.get(url, headers={"HX-Request": "true", "HX-Target": "usage-results"}).content.decode().lstrip()
    assert results.startswith('<div id="usage-results"') and "usage-filters" not in results
    view = client.get(url, headers={"HX-Request": "true", "HX-Target": "usage-view"}).content.decode().lstrip()
    assert view.startswith('<div id="usage-view"') and 'data-testid="usage-filters"' in view and 'id="usage-results"' in view
    resp = client.get(url, headers={"HX-Request": "true", "HX-Target": "deployment-usage"})
    assert resp.content.decode().lstrip().startswith('<div id="deployment-usage"') and "by-key" not in resp.content.decode()
    assert "HX-Target" in resp["Vary"]


def test_filters_narrow_rows_and_htmx_gets_the_fragment(usage, client_for, frozen):
    client = client_for(usage.owner)
    resp = client.get(
        f"/w/{usage.org.slug}/usage/{RANGE}&workspace={usage.sub.slug}", headers={"HX-Request": "true", "HX-Target": "usage-results"}
    )
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


def test_billing_split_sums_to_org_total_to_the_cent(usage, client_for, frozen, django_assert_num_queries):
    client = client_for(usage.owner)
    # session, user, workspace, role, statement rows, price versions, the shell's workspace switcher
    with django_assert_num_queries(9):  # 7 + the shell's budget banner and the budget card
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
    assert rows[0][9] == "cost" and rows[-1][0] == "total" and Decimal(rows[-1][9]) == st.total
    assert sum(Decimal(r[9]) for r in rows[1:-1] if r[1] == "subtotal") == st.total
    assert sum(Decimal(r[9]) for r in rows[1:-1] if r[1] != "subtotal") == st.total
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


def test_statement_lines_show_each_price_version_and_still_add_up(usage, client_for, frozen):
    """A price change mid-month: one line per version, input × price + output × price each, dates shown."""
    summarize = make_deployment(usage.org, "summarize", price=("0.25", "2.00"), at=datetime(2026, 1, 1, tzinfo=UTC))
    summarize.prices.create(
        effective_from=datetime(2026, 3, 9, tzinfo=UTC), input_per_million=Decimal("0.40"), output_per_million=Decimal("3.10")
    )
    for at in (datetime(2026, 3, 2, 9, tzinfo=UTC), datetime(2026, 3, 8, 23, tzinfo=UTC), datetime(2026, 3, 9, 1, tzinfo=UTC)):
        event(usage.org, at, key=usage.key, deployment=summarize, prompt=123_457, completion=98_765)
    usage_rollup(now=NOW)

    client = client_for(usage.owner)
    resp = client.get(f"/w/{usage.org.slug}/billing/?month=2026-03")
    st = resp.context["statement"]
    lines = [i for i in st.sections[0].items if i["deployment_id"] == summarize.id]
    assert [(i["input_price"], i["output_price"], i["requests"]) for i in lines] == [("0.25", "2.00", 2), ("0.40", "3.10", 1)]
    assert [[v.date() for v in i["versions"]] for i in lines] == [[date(2026, 1, 1)], [date(2026, 3, 9)]]
    for line in lines:
        formula = line["prompt_tokens"] * line["input_price_per_million"] + line["completion_tokens"] * line["output_price_per_million"]
        # The exact line is the sum of the events' costs, each stamped to the nano-unit.
        assert abs(line["cost"] - formula / Decimal(1_000_000)) <= Decimal("0.000000001") * line["requests"]
    assert sum(i["cost_cents"] for s in st.sections for i in s.items) == st.total == cents(st.exact)
    assert st.exact == rollup_totals(workspace__in=[usage.org, usage.sub])["cost"]
    body = resp.content.decode()
    assert "from 9 Mar 2026" in body and "0.40 in · 3.10 out USD" in body and "from 1 Jan 2026" in body

    rows = _csv(client.get(f"/w/{usage.org.slug}/billing/export.csv?month=2026-03"))
    mine = [r for r in rows if r[1] == "summarize"]
    assert [(r[3], r[4], r[5], r[6]) for r in mine] == [
        ("2026-01-01", "0.250000", "2.000000", "2"),
        ("2026-03-09", "0.400000", "3.100000", "1"),
    ]
    assert [Decimal(r[9]) for r in mine] == [i["cost_cents"] for i in lines]


def test_billing_month_picker_links_to_the_neighbouring_months(usage, client_for, frozen):
    body = client_for(usage.owner).get(f"/w/{usage.org.slug}/billing/?month=2026-01").content.decode()
    assert 'href="?month=2025-12"' in body and 'href="?month=2026-02"' in body and 'value="2026-01"' in body


def _admit_through_the_gateway(key, tokens: int) -> None:
    """Reserve tokens the way a gateway process does (its Lua script), so the page reads the real counter."""
    from django.conf import settings

    from gateway.limits import ADMIT, RedisLimiter
    from gateway.resp import PipelinedRedis

    async def admit():
        redis = PipelinedRedis(settings.REDIS_URL)
        try:
            decision = await RedisLimiter(redis).admit(
                api_key_id=key.id, public_id=str(key.public_id), year=2026, prompt=tokens, tpm_limit=key.tpm_limit, yearly_limit=None
            )
        finally:
            await redis.aclose()
        assert decision.outcome == ADMIT

    asyncio.run(admit())


def test_key_limits_show_this_minute_and_this_year_as_the_gateway_counts_them(usage, client_for, frozen, django_assert_num_queries):
    from gateway.accounting import _yearly_usage

    usage.key.tpm_limit, usage.key.yearly_token_limit = 1000, 40_000
    usage.key.save(update_fields=["tpm_limit", "yearly_token_limit"])
    usage.sub_key.yearly_token_limit = 1_000_000
    usage.sub_key.save(update_fields=["yearly_token_limit"])
    client = client_for(usage.owner)
    before = client.get(f"/w/{usage.org.slug}/usage/{RANGE}").context["limits"]
    assert [(limit.key.name, limit.tpm_used) for limit in before] == [("backend", 0), ("research", None)]

    _admit_through_the_gateway(usage.key, 850)
    with django_assert_num_queries(17):  # the page's 16 and the year's usage per key
        resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}")
    backend, research = resp.context["limits"]
    assert (backend.tpm_used, backend.tpm_percent) == (850, 85)
    # The yearly window is the gateway's: what it seeds its counter with, from the events.
    assert backend.yearly_used == _yearly_usage(usage.key.id, usage.org.tz, 2026) == 3 * (5025 + 770 + 5001)
    assert backend.yearly_percent == 80 and backend.flag == "near limit"
    assert research.yearly_used == 3 * (333 + 999) and research.flag == "" and research.tpm_percent is None
    body = resp.content.decode()
    assert '<meter min="0" max="1000" value="850" high="800"' in body
    assert body.count("data-flag>Near limit") == 1
    assert "850 / 1,000 tokens (85 %)" in body and "32,388 / 40,000 tokens in 2026 (80 %)" in body
    # A filter on the other key shows only that key's limits.
    narrowed = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&key={usage.sub_key.public_id}").context["limits"]
    assert [limit.key.name for limit in narrowed] == ["research"]
    # The CSV carries the same figures.
    limits = csv_sections(_csv(client.get(f"/w/{usage.org.slug}/usage/export.csv{RANGE}")))["key limits"]
    assert limits[1][2:] == ["1000", "850", "40000", "2026", "32388"]


def test_key_limits_say_not_available_without_a_shared_counter(usage, client_for, frozen, settings):
    usage.key.tpm_limit = 1000
    usage.key.save(update_fields=["tpm_limit"])
    settings.REDIS_URL = ""  # the embedded default: each gateway process counts TPM in its own memory
    resp = client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/{RANGE}")
    (limit,) = resp.context["limits"]
    assert limit.tpm_used is None and "without Redis" in limit.tpm_note
    body = resp.content.decode()
    assert 'data-tpm="unavailable"' in body and "<meter" not in body
    # Not "Not available of 1,000 TPM": the limit holds, it is counted where the console cannot see.
    assert "Not available" not in body and "Limit 1,000 TPM" in body and "Enforced inside the gateway process" in body


def test_key_limits_say_not_available_when_redis_is_down(usage, client_for, frozen, settings):
    from lib.redis import redis_client

    usage.key.tpm_limit = 1000
    usage.key.save(update_fields=["tpm_limit"])
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.cache_clear()
    try:
        (limit,) = client_for(usage.owner).get(f"/w/{usage.org.slug}/usage/{RANGE}").context["limits"]
    finally:
        redis_client.cache_clear()
    assert limit.tpm_used is None and "cannot be reached" in limit.tpm_note


def test_deployment_usage_tab_loads_this_deployments_usage(usage, client_for, frozen):
    client = client_for(usage.owner)
    page = client.get(f"/w/{usage.org.slug}/deployments/{usage.embed.public_id}/?tab=usage").content.decode()
    url = f"/w/{usage.org.slug}/usage/?deployment={usage.embed.public_id}"
    assert f'id="deployment-usage" hx-get="{url}" hx-trigger="load"' in page and f'<a href="{url}">' in page
    resp = client.get(url, headers={"HX-Request": "true", "HX-Target": "deployment-usage"})
    report = resp.context["report"]
    assert report.totals["requests"] == rollup_totals(deployment=usage.embed)["requests"] == 3
    assert report.by_key == [] and "limits" not in resp.context
    assert f'href="{url}" data-testid="open-usage"' in resp.content.decode()


def test_console_test_calls_are_counted_and_named_not_linked(usage, client_for, frozen):
    from keys.services import api_key_for_test_calls

    hidden = api_key_for_test_calls(workspace=usage.sub)
    event(usage.sub, NOW - timedelta(minutes=7), key=hidden, deployment=usage.chat, prompt=10, completion=5)
    usage_rollup(now=NOW)
    client = client_for(usage.owner)

    page = client.get(f"/w/{usage.org.slug}/usage/{RANGE}")
    labels = dict(page.context["form"].fields["key"].choices)
    assert labels[str(hidden.public_id)] == "Console test calls (Research)"
    assert labels[str(usage.sub_key.public_id)] == "research (Research)" and labels[str(usage.key.public_id)] == "backend"
    row = next(r for r in page.context["report"].by_key if r["api_key_id"] == hidden.id)
    assert (row["api_key__name"], row["requests"]) == ("Console test calls", 1)
    assert "console-test-call" not in page.content.decode()

    panel = client.get(f"/w/{usage.org.slug}/usage/overview-panel/").content.decode()
    assert "Console test calls" in panel and str(hidden.public_id) not in panel
