"""Usage broken down by API (the endpoint a request came through): rollup rows, the Usage page's
filter and table, and the CSV, all from the same rollups."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from usage.models import UsageDaily, UsageMonthly
from usage.services import usage_rollup

from .usage_factory import csv_sections, event, make_deployment, make_key

NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
RANGE = "?start=2026-03-01&end=2026-03-10"


@pytest.fixture
def usage(world):
    key = make_key(world.org, "backend")
    chat = make_deployment(world.org, "chat", price=("1", "2"), at=NOW - timedelta(days=60))
    embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=NOW - timedelta(days=60))
    for day in range(2):
        at = NOW - timedelta(days=day)
        event(world.org, at, key=key, deployment=chat, prompt=100, completion=10, endpoint="chat.completions")
        event(world.org, at, key=key, deployment=chat, prompt=200, completion=20, endpoint="responses")
        event(world.org, at, key=key, deployment=chat, prompt=300, completion=30, endpoint="messages")
        event(world.org, at, key=key, deployment=embed, prompt=4000, completion=0, endpoint="embeddings")
    usage_rollup(now=NOW)
    return world


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


def test_rollups_keep_one_row_per_endpoint(usage):
    by_endpoint = {r["endpoint"]: r["total_tokens"] for r in UsageDaily.objects.filter(day=NOW.date()).values("endpoint", "total_tokens")}
    assert by_endpoint == {"chat.completions": 110, "responses": 220, "messages": 330, "embeddings": 4000}
    monthly = {r["endpoint"]: r["requests"] for r in UsageMonthly.objects.values("endpoint", "requests")}
    assert monthly == {"chat.completions": 2, "responses": 2, "messages": 2, "embeddings": 2}


def test_usage_page_breaks_down_and_filters_by_api_and_the_csv_matches(usage, client_for, frozen):
    client = client_for(usage.owner)
    resp = client.get(f"/w/{usage.org.slug}/usage/{RANGE}")
    report = resp.context["report"]
    assert {r["endpoint"]: r["total_tokens"] for r in report.by_endpoint} == {
        "chat.completions": 220,
        "responses": 440,
        "messages": 660,
        "embeddings": 8000,
    }
    body = resp.content.decode()
    assert 'data-testid="by-endpoint"' in body and "Anthropic Messages" in body and 'id="id_endpoint"' in body

    filtered = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&endpoint=embeddings")
    assert filtered.context["report"].totals["total_tokens"] == 8000
    assert filtered.context["report"].totals["requests"] == 2
    assert "API: Embeddings" in filtered.content.decode()

    rows = list(csv.reader(io.StringIO(client.get(f"/w/{usage.org.slug}/usage/export.csv{RANGE}").content.decode())))
    section = csv_sections(rows)["endpoint"]
    assert section[0][:3] == ["endpoint", "id", "requests"]
    assert section[0][7] == "total_tokens"
    assert {r[1]: int(r[7]) for r in section[1:-1]} == {"chat.completions": 220, "responses": 440, "messages": 660, "embeddings": 8000}
    assert int(section[-1][7]) == report.totals["total_tokens"] == 9320

    bad = client.get(f"/w/{usage.org.slug}/usage/{RANGE}&endpoint=nonsense")
    assert "Select a valid choice" in bad.content.decode() and "report" not in (bad.context or {})


def test_billing_lines_break_down_by_api_and_filter_to_one(usage, client_for, frozen):
    client = client_for(usage.owner)
    resp = client.get(f"/w/{usage.org.slug}/billing/?month=2026-03")
    st = resp.context["statement"]
    lines = st.sections[0].items
    assert sorted((i["label"], i["endpoint"], i["prompt_tokens"], i["completion_tokens"], i["requests"]) for i in lines) == [
        ("chat", "chat.completions", 200, 20, 2),
        ("chat", "messages", 600, 60, 2),
        ("chat", "responses", 400, 40, 2),
        ("embed", "embeddings", 8000, 0, 2),
    ]
    assert sum(i["cost_cents"] for i in lines) == st.total
    body = resp.content.decode()
    assert "<th>API</th>" in body and body.count('data-testid="line-api"') == 4 and "Anthropic Messages" in body
    assert 'id="id_endpoint"' in body

    rows = list(csv.reader(io.StringIO(client.get(f"/w/{usage.org.slug}/billing/export.csv?month=2026-03").content.decode())))
    assert rows[0][9:] == ["cost", "currency", "endpoint"]
    assert sorted(r[11] for r in rows[1:] if r[1] not in ("subtotal", "")) == ["chat.completions", "embeddings", "messages", "responses"]

    only = client.get(f"/w/{usage.org.slug}/billing/?month=2026-03&endpoint=responses")
    st = only.context["statement"]
    assert [(i["endpoint"], i["prompt_tokens"]) for s in st.sections for i in s.items] == [("responses", 400)]
    assert st.prompt_tokens == 400 and st.exact == sum(i["cost"] for i in lines if i["endpoint"] == "responses")
    page = only.content.decode()
    assert "API: Responses only." in page and "month=2026-02&amp;endpoint=responses" in page
    csv_only = list(
        csv.reader(io.StringIO(client.get(f"/w/{usage.org.slug}/billing/export.csv?month=2026-03&endpoint=responses").content.decode()))
    )
    assert {r[11] for r in csv_only[1:]} == {"responses"} and csv_only[-1][0] == "total" and int(csv_only[-1][7]) == 400

    bad = client.get(f"/w/{usage.org.slug}/billing/?month=2026-03&endpoint=nonsense")
    assert "Select a valid choice" in bad.content.decode() and "Showing every API." in bad.content.decode()
    assert bad.context["statement"].month.isoformat() == "2026-03-01" and bad.context["statement"].total == resp.context["statement"].total
    assert client.get(f"/w/{usage.org.slug}/billing/export.csv?month=2026-03&endpoint=nonsense").status_code == 404
