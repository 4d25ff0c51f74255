"""Benchmark: usage aggregation over N synthetic events (10 M by default) on PostgreSQL.

    .venv/bin/python bench/aggregate.py [--events 10000000] [--days 90] [--workspaces 20] [--minutes 5]

Creates (drops first) its own database, gh_bench by default, loads the events with COPY in
created_at order (as the gateway appends them), then times:
  full         the first rollup over the whole history (discovery + every day bucket + 48 h of hours)
  incremental  one minute of new traffic (--rate events/s, plus a few late events for past days),
               rolled up with 10 M events of history; repeated --minutes times
and checks Σ rollups == Σ events with the full reconciliation. Prints a Markdown table for
docs/BENCHMARKS.md. Never touches any other database.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime, timedelta

from usage_data import Traffic, recreate_database
from usage_data import setup_django as _setup_django

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Tokyo"]
KEYS_PER_WORKSPACE = 5
DEPLOYMENTS = [("chat", 50, 150), ("embed", 10, 0), ("reason", 300, 1200), ("small", 5, 20)]  # cents per million in/out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--days", type=int, default=90, help="history length the events are spread over")
    p.add_argument("--workspaces", type=int, default=20, help="a default workspace per 4, the rest sub-workspaces")
    p.add_argument(
        "--rate", type=float, default=None, help="events per second in each incremental minute (default: 10x the history's average rate)"
    )
    p.add_argument("--late", type=int, default=2, help="late events (for random past days) in each incremental minute")
    p.add_argument("--minutes", type=int, default=5, help="incremental minutes to time")
    p.add_argument("--database", default="gh_bench")
    p.add_argument("--reuse", action="store_true", help="keep the loaded events of a previous run; only reset rollups and new minutes")
    p.add_argument("--server", default=os.environ.get("BENCH_PG", "postgres://postgres@localhost:5432"))
    return p.parse_args()


def setup_django(server: str, name: str) -> None:
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DEBUG", "1")
    _setup_django(server, name)


def make_world(n_workspaces: int):
    from console.models import Workspace
    from deployments.models import Deployment
    from keys.models import ApiKey

    workspaces, keys, deployments = [], {}, {}
    parent = None
    for i in range(n_workspaces):
        if i % 4 == 0:
            parent = None
        ws = Workspace.objects.create(name=f"Bench {i}", slug=f"bench-{i}", parent=parent, time_zone=ZONES[i % len(ZONES)])
        if i % 4 == 0:
            parent = ws
            for name, inp, out in DEPLOYMENTS:
                d = Deployment.objects.create(workspace=ws, name=name, model_id=f"@bench-{i}/{name}")
                deployments.setdefault(ws.id, []).append((d.id, d.model_id, inp, out))
        deployments[ws.id] = deployments[parent.id]
        keys[ws.id] = [ApiKey.objects.create(workspace=ws, name=f"key-{k}", hint="gh_…bench").id for k in range(KEYS_PER_WORKSPACE)]
        workspaces.append(ws.id)
    return workspaces, keys, deployments


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    args = parse_args()
    if not args.reuse:
        recreate_database(args.server, args.database, prefix="gh_bench")
    setup_django(args.server, args.database)
    from django.core.management import call_command
    from django.db import connection

    from usage import rollup
    from usage.models import UsageCursor, UsageDaily, UsageDayBucket, UsageDrift, UsageEvent, UsageHourBucket, UsageHourly
    from usage.reconcile import reconcile

    if args.reuse:
        from django.db import transaction

        # The benchmark's own synthetic minute of traffic; usage events are otherwise append-only
        # (the trigger lets a transaction that set the retention flag delete, as prune_usage_events does).
        with transaction.atomic(), connection.cursor() as c:
            c.execute("SET LOCAL gatehouse.usage_retention = 'on'")
            c.execute("DELETE FROM usage_usageevent WHERE request_id LIKE 'minute-%%'")
        for model in (UsageDaily, UsageHourly, UsageDayBucket, UsageHourBucket, UsageCursor, UsageDrift):
            model.objects.all().delete()
        first, last = (
            UsageEvent.objects.order_by(field).values_list("created_at", flat=True).first() for field in ("created_at", "-created_at")
        )
        from console.models import Workspace
        from deployments.models import Deployment
        from keys.models import ApiKey

        ids = list(Workspace.objects.order_by("id").values_list("id", flat=True))
        keys = {ws: list(ApiKey.objects.filter(workspace_id=ws).values_list("id", flat=True)) for ws in ids}
        deps = {}
        for ws in Workspace.objects.order_by("id"):
            root = ws.parent_id or ws.id
            deps[ws.id] = [
                (d.id, d.model_id, inp, out)
                for d, (_, inp, out) in zip(Deployment.objects.filter(workspace_id=root).order_by("id"), DEPLOYMENTS, strict=True)
            ]
        traffic = Traffic((ids, keys, deps), seed=2)
        traffic.prefix = "minute"
        now, args.events = last, UsageEvent.objects.count()
        args.days = (last - first).days
    else:
        call_command("migrate", verbosity=0)
        traffic = Traffic(make_world(args.workspaces))
        # The history ends at 23:50 UTC, so the open day of the UTC workspaces is nearly full: the
        # incremental minute recomputes the open day's buckets, the worst time of day to measure.
        now = datetime.now(UTC).replace(hour=23, minute=50, second=0, microsecond=0)
    start = now - timedelta(days=args.days)
    if args.rate is None:
        args.rate = round(10 * args.events / (args.days * 86400), 1)
    span = (now - start).total_seconds()

    def history() -> None:
        step = span / args.events
        times = (start + timedelta(seconds=i * step) for i in range(args.events))
        traffic.copy(connection.connection, times)
        connection.connection.commit()
        # A 10 M-event history in production has long been vacuumed: set hint bits and the
        # visibility map now, so the timings are not those of a first read after a bulk load
        # racing autovacuum.
        raw = connection.connection
        previous, raw.autocommit = raw.autocommit, True
        with connection.cursor() as c:
            c.execute("VACUUM (ANALYZE) usage_usageevent")
        raw.autocommit = previous  # as Django opened it: its atomic() blocks switch it off themselves

    load_s = 0.0
    if not args.reuse:
        load_s, _ = timed(history)
        print(f"loaded {args.events:,} events in {load_s:.1f} s", flush=True)
        traffic.prefix = "minute"

    discover_s, _ = timed(lambda: rollup.discover(now=now))
    full_rest_s, report = timed(lambda: rollup.run(now=now))
    full_s = discover_s + full_rest_s
    day_rows, hour_rows = UsageDaily.objects.count(), UsageHourly.objects.count()
    buckets = UsageDayBucket.objects.count()
    print(
        f"full rollup {full_s:.2f} s (discovery {discover_s:.2f} s): {buckets} day buckets, {day_rows} daily rows, {hour_rows} hourly rows",
        flush=True,
    )

    minutes = []
    for m in range(1, args.minutes + 1):
        minute_start = now + timedelta(minutes=m - 1)
        n = int(args.rate * 60)
        times = [minute_start + timedelta(seconds=60 * i / n) for i in range(n)]
        times += [now - timedelta(days=traffic.rng.randrange(1, args.days), seconds=traffic.rng.randrange(86400)) for _ in range(args.late)]
        traffic.copy(connection.connection, times)
        connection.connection.commit()
        seconds, inc = timed(lambda m=m: rollup.run(now=now + timedelta(minutes=m)))
        minutes.append((seconds, inc, len(times)))
        print(
            f"incremental minute {m}: {len(times)} new events, {inc.day_buckets} day + {inc.hour_buckets} hour buckets, "
            f"{seconds * 1000:.0f} ms",
            flush=True,
        )

    reconcile_s, rec = timed(lambda: reconcile(since=None, now=now + timedelta(minutes=args.minutes, seconds=1)))
    print(f"full reconciliation {reconcile_s:.2f} s: {'OK' if rec.ok else rec.drifts[:3]}", flush=True)

    inc_ms = [s * 1000 for s, _, _ in minutes]
    with connection.cursor() as c:
        c.execute("SELECT pg_size_pretty(pg_total_relation_size('usage_usageevent'))")
        size = c.fetchone()[0]
    print()
    print(f"| {args.events:,} events over {args.days} days, {args.workspaces} workspaces ({size} with indexes) | |")
    print("|---|---|")
    print(f"| load (COPY) | {load_s:.1f} s |")
    print(
        f"| full rollup | {full_s:.2f} s (discovery {discover_s:.2f} s; {buckets} day buckets → {day_rows} daily rows, {hour_rows} hourly rows) |"
    )
    print(
        f"| incremental minute ({int(args.rate * 60)} new + {args.late} late events, {args.rate:g}/s) | median {statistics.median(inc_ms):.0f} ms, "
        f"max {max(inc_ms):.0f} ms over {len(inc_ms)} minutes |"
    )
    print(f"| full reconciliation | {reconcile_s:.2f} s, {'no drift' if rec.ok else 'DRIFT'} |")


if __name__ == "__main__":
    main()
