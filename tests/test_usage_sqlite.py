"""The embedded default (SQLite, no DATABASE_URL) runs the same aggregation code, in real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal

from .worker_processes import ROOT

SEED = """
import json, random
from datetime import timedelta
from decimal import Decimal
from django.utils import timezone
from console.models import Workspace
from usage.models import UsageEvent
rng = random.Random(3)
org = Workspace.objects.create(name="Acme", slug="acme", time_zone="Europe/Berlin")
sub = Workspace.objects.create(name="Research", slug="acme-research", parent=org, time_zone="Asia/Kolkata")
now = timezone.now()
UsageEvent.objects.bulk_create([
    UsageEvent(request_id=f"r{i}", created_at=now - timedelta(minutes=rng.randrange(60 * 24 * 4)), workspace=(org, sub)[i % 2],
               model="m", prompt_tokens=rng.randrange(1, 5000), completion_tokens=rng.randrange(0, 900), total_tokens=0,
               status_code=rng.choice([200, 200, 500]), latency_ms=rng.randrange(1, 3000),
               cost=Decimal(rng.randrange(1, 10**7)).scaleb(-9))
    for i in range(2000)
])
UsageEvent.objects.update(total_tokens=models.F("prompt_tokens") + models.F("completion_tokens"))
"""

CHECK = """
import json
from django.db.models import Sum
from usage.models import UsageDaily, UsageEvent, UsageHourly
from usage.latency import pack
from usage.services import usage_reconcile
report = usage_reconcile(days=0)
print(json.dumps({
    "ok": report.ok, "checked": report.checked,
    "events": [UsageEvent.objects.count(), str(sum(UsageEvent.objects.values_list("cost", flat=True))),
               UsageEvent.objects.aggregate(t=Sum("total_tokens"))["t"]],
    "rollups": [UsageDaily.objects.aggregate(r=Sum("requests"))["r"], str(sum(UsageDaily.objects.values_list("cost", flat=True))),
                UsageDaily.objects.aggregate(t=Sum("total_tokens"))["t"]],
    "hourly": UsageHourly.objects.count(),
    "histograms": [str(sum(UsageDaily.objects.values_list("latency_histogram", flat=True))),
                   str(pack(UsageEvent.objects.values_list("latency_ms", flat=True)))],
}))
"""


def manage(tmp_path, *args: str, stdin: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(DEBUG="1", GATEHOUSE_VAR_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, input=stdin, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_aggregation_and_reconciliation_on_sqlite(tmp_path):
    manage(tmp_path, "migrate", "--no-input", "-v", "0")
    manage(tmp_path, "shell", "-c", "from django.db import models\n" + SEED)

    out = manage(tmp_path, "aggregate_usage")
    assert "rollup row(s) written" in out
    manage(tmp_path, "aggregate_usage")  # a second full run replaces the rows, never adds to them

    result = json.loads(manage(tmp_path, "shell", "-c", CHECK).strip().splitlines()[-1])
    assert result["ok"] and result["checked"] > 0
    assert result["events"][0] == result["rollups"][0] == 2000
    assert result["events"][2] == result["rollups"][2]
    # Costs add up to the nano on SQLite too, whose decimal columns are floats.
    assert Decimal(result["rollups"][1]) == Decimal(result["events"][1])
    assert result["hourly"] > 0
    # SQLite's histogram aggregate buckets every latency as PostgreSQL's width_bucket does.
    assert result["histograms"][0] == result["histograms"][1] != "0"
