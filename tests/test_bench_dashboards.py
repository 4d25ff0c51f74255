"""bench/dashboards.py keeps working: its world, traffic and measurement on a tiny history (no timing assertions)."""

from __future__ import annotations

import importlib.util
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from usage.models import UsageDaily, UsageEvent, UsageHourly
from usage.services import usage_rollup

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def dashboards():
    sys.path.insert(0, str(BENCH))  # the bench scripts import their shared helper as a top-level module
    try:
        spec = importlib.util.spec_from_file_location("bench_dashboards", BENCH / "dashboards.py")
        module = sys.modules["bench_dashboards"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))
        sys.modules.pop("bench_dashboards", None)


@pytest.mark.django_db
def test_dashboard_bench_measures_every_page_on_a_small_history(dashboards):
    world = dashboards.make_world(keys_scale=0.25)
    end = timezone.now().replace(second=0, microsecond=0)
    connection.ensure_connection()
    dashboards.load_events(connection.connection, world, events=3000, other_events=300, start=end - timedelta(days=400), end=end)
    usage_rollup(now=end + timedelta(seconds=1))
    assert UsageEvent.objects.count() == 3300
    assert UsageDaily.objects.filter(workspace_id__in=world.workspaces).count() > 100
    assert UsageHourly.objects.filter(workspace_id__in=world.workspaces).exists()

    dashboards.ensure_budget(world.org_slug)
    pages = dashboards.dashboard_pages(world.org_slug)
    results = dashboards.measure(pages, username=world.owner_username, iterations=2, warmup=1)

    assert len(pages) >= 20
    assert [r.page.name for r in results] == [p.name for p in pages]
    for r in results:
        assert r.statuses == {200}, r.page.name
        assert len(r.ms) == 2 and r.queries > 0 and r.bytes > 0, r.page.name
    usage_year = next(r for r in results if r.page.name == "usage, 1 year")
    assert len(usage_year.sql) == usage_year.queries and any("usage_usagedaily" in sql for _, sql, _ in usage_year.sql)
    rows = dashboards.table(results).splitlines()
    assert len(rows) == 2 + len(pages)
