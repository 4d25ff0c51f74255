"""The flat usage CSV (one row per day × sub-workspace × key × deployment × API), its file names,
and the Sub-workspace filter's "own usage" choice: the same rollups and numbers as the page."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from usage.services import usage_rollup

from .usage_factory import event, make_deployment, make_key, rollup_totals

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
RANGE = "start=2026-03-01&end=2026-03-10"


@pytest.fixture
def usage(world):
    world.key = make_key(world.org, "backend")
    world.sub_key = make_key(world.sub, "research")
    world.chat = make_deployment(world.org, "chat", price=("0.333", "1.777"), at=NOW - timedelta(days=60))
    world.embed = make_deployment(world.org, "embed", price=("0.10", "0"), at=NOW - timedelta(days=60))
    for day in range(3):
        for i in range(4):
            event(
                world.org,
                NOW - timedelta(days=day, minutes=i),
                key=world.key,
                deployment=world.chat,
                prompt=1003 + i,
                completion=77 * i,
                status=500 if i == 3 else 200,
            )
        event(world.org, NOW - timedelta(days=day), key=world.key, deployment=world.embed, prompt=5001, completion=0, endpoint="embeddings")
        event(world.sub, NOW - timedelta(days=day, minutes=3), key=world.sub_key, deployment=world.chat, prompt=333, completion=999)
    usage_rollup(now=NOW)
    return world


@pytest.fixture
def frozen(monkeypatch):
    monkeypatch.setattr("django.utils.timezone.now", lambda: NOW)


def rows_of(response) -> list[dict]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_flat_csv_has_one_header_and_one_row_per_group_with_the_pages_numbers(usage, client_for, frozen):
    client = client_for(usage.owner)
    response = client.get(f"/w/acme/usage/events.csv?{RANGE}")
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="usage-flat-acme-2026-03-01-to-2026-03-10.csv"'
    lines = list(csv.reader(io.StringIO(response.content.decode())))
    assert lines[0] == [
        "day", "workspace", "workspace_name", "key_id", "key_name", "deployment_id", "deployment_name", "model", "endpoint",
        "requests", "answered", "refused", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_tokens",
        "cost", "cost_exact", "currency",
    ]  # fmt: skip
    assert all(len(line) == len(lines[0]) for line in lines)  # no sections, no blank or total rows
    rows = rows_of(response)
    # 3 days × (org chat, org embeddings, sub chat)
    assert len(rows) == 9
    assert {(r["day"], r["workspace"], r["key_name"], r["deployment_name"], r["endpoint"]) for r in rows} == {
        (f"2026-03-{d:02d}", ws, key, dep, endpoint)
        for d in (8, 9, 10)
        for ws, key, dep, endpoint in (
            ("acme", "backend", "chat", "chat.completions"),
            ("acme", "backend", "embed", "embeddings"),
            ("acme-research", "research", "chat", "chat.completions"),
        )
    }
    one = next(r for r in rows if r["day"] == "2026-03-10" and r["deployment_name"] == "chat" and r["workspace"] == "acme")
    assert (one["requests"], one["answered"], one["refused"]) == ("4", "3", "1")
    assert one["key_id"] == str(usage.key.public_id) and one["deployment_id"] == str(usage.chat.public_id)

    # The same totals as the page and the rollups: requests, tokens, and cost to the cent.
    page = client.get(f"/w/acme/usage/?{RANGE}").context["report"]
    expected = rollup_totals(workspace__in=[usage.org, usage.sub])
    for column in ("requests", "prompt_tokens", "completion_tokens", "total_tokens"):
        assert sum(int(r[column]) for r in rows) == expected[column] == page.totals[column]
    assert sum(int(r["refused"]) for r in rows) == page.totals["errors"]
    assert sum(Decimal(r["cost"]) for r in rows) == page.totals["cost_cents"]
    assert sum(Decimal(r["cost_exact"]) for r in rows) == expected["cost"] == page.totals["cost"]


def test_flat_csv_follows_the_pages_filters_and_names_the_workspace_in_the_file(usage, client_for, frozen):
    client = client_for(usage.owner)
    sub = client.get(f"/w/acme/usage/events.csv?{RANGE}&workspace=acme-research")
    assert sub["Content-Disposition"] == 'attachment; filename="usage-flat-acme-research-2026-03-01-to-2026-03-10.csv"'
    assert {r["workspace"] for r in rows_of(sub)} == {"acme-research"} and len(rows_of(sub)) == 3
    stacked = client.get(f"/w/acme/usage/export.csv?{RANGE}&workspace=acme-research")
    assert stacked["Content-Disposition"] == 'attachment; filename="usage-acme-research-2026-03-01-to-2026-03-10.csv"'

    api = rows_of(client.get(f"/w/acme/usage/events.csv?{RANGE}&endpoint=embeddings"))
    assert {r["endpoint"] for r in api} == {"embeddings"} and len(api) == 3

    hourly = client.get("/w/acme/usage/events.csv?range=48h")
    assert hourly["Content-Disposition"] == 'attachment; filename="usage-flat-acme-last-48-hours.csv"'
    hours = rows_of(hourly)
    assert hours and all(r["hour"].endswith("+00:00") for r in hours)
    page_48h = client.get("/w/acme/usage/?range=48h").context["report"]
    assert sum(int(r["requests"]) for r in hours) == page_48h.totals["requests"] == 12

    assert client.get("/w/acme/usage/events.csv?start=2026-03-10&end=2026-03-01").status_code == 400
    assert client_for(usage.outsider).get(f"/w/acme/usage/events.csv?{RANGE}").status_code == 404


def test_own_usage_of_the_default_workspace_is_a_sub_workspace_choice(usage, client_for, frozen):
    client = client_for(usage.owner)
    page = client.get(f"/w/acme/usage/?{RANGE}").content.decode()
    assert '<option value="acme">Acme (own usage)</option>' in page

    own = client.get(f"/w/acme/usage/?{RANGE}&workspace=acme")
    report = own.context["report"]
    expected = rollup_totals(workspace=usage.org)
    assert report.totals["requests"] == expected["requests"] == 15
    assert report.totals["cost"] == expected["cost"]
    assert "Sub-workspace: Acme (own usage)" in own.content.decode()

    flat = client.get(f"/w/acme/usage/events.csv?{RANGE}&workspace=acme")
    assert flat["Content-Disposition"] == 'attachment; filename="usage-flat-acme-own-2026-03-01-to-2026-03-10.csv"'
    assert {r["workspace"] for r in rows_of(flat)} == {"acme"}
    stacked = client.get(f"/w/acme/usage/export.csv?{RANGE}&workspace=acme")
    assert stacked["Content-Disposition"] == 'attachment; filename="usage-acme-own-2026-03-01-to-2026-03-10.csv"'


def test_a_sub_workspace_sees_only_its_own_rows_and_has_no_own_usage_choice(usage, client_for, frozen):
    client = client_for(usage.sub_member)
    rows = rows_of(client.get(f"/w/acme-research/usage/events.csv?{RANGE}"))
    assert {r["workspace"] for r in rows} == {"acme-research"}
    assert "(own usage)" not in client.get(f"/w/acme-research/usage/?{RANGE}").content.decode()
    # Nor can it name its parent in the filter.
    assert client.get(f"/w/acme-research/usage/events.csv?{RANGE}&workspace=acme").status_code == 400
