"""Benchmark: the usage, billing and overview pages with 10 M usage events behind the rollups.

    .venv/bin/python bench/dashboards.py [--events 10000000] [--months 13] [--iterations 30]
    .venv/bin/python bench/dashboards.py --events 1000000 --database gatehouse_dashbench_1m   # quick

Prepares its own PostgreSQL database (gatehouse_dashbench by default, never any other): one
organisation — a default workspace and six sub-workspaces in three time zones, 48 keys, 16 priced
deployments — with N events spread over 13 months (traffic growing 3× over the year), plus two
smaller organisations' traffic in the same tables, rolled up by the real rollup (usage/rollup.py).
A database prepared for the same data shape is reused (its events are never reloaded); --fresh
rebuilds it.

Then requests each page through Django's full request handling (middleware, session auth of a
signed-in owner, view, template, response) with django.test.Client, DEBUG off, production static
storage: warm-up, then --iterations timed requests per page. Prints a Markdown table (queries,
p50/p95/max) against the target p95 ≤ 150 ms. --explain prints EXPLAIN ANALYZE of each page's
slowest queries.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from usage_data import ROOT, Traffic, recreate_database, setup_django

# Bump when the generated world or traffic changes, so an old prepared database is rebuilt.
DATA_SHAPE = 2  # 2: rollups keep latency histograms
DB_PREFIX = "gatehouse_dashbench"
TARGET_P95_MS = 150.0
ROLLUP_TABLES = ("usage_usagedaily", "usage_usagehourly", "usage_usagemonthly", "usage_usagedailytotal")

ORG = ("Northwind", "northwind", "Europe/Berlin", 8)
# (name, slug, time zone, keys)
SUBS = [
    ("Research", "northwind-research", "Europe/Berlin", 10),
    ("Support bots", "northwind-support", "Europe/Berlin", 8),
    ("Search", "northwind-search", "America/New_York", 8),
    ("Data science", "northwind-data", "Europe/Berlin", 6),
    ("Mobile", "northwind-mobile", "Asia/Tokyo", 5),
    ("Sandbox", "northwind-sandbox", "Europe/Berlin", 3),
]
# (name, input, output) in cents per million tokens; the first ones are the most used.
DEPLOYMENTS = [
    ("chat-large", 250, 1000),
    ("chat-small", 15, 60),
    ("embed", 2, 0),
    ("reason", 300, 1200),
    ("code", 100, 400),
    ("qwen3-32b", 40, 120),
    ("llama-70b", 60, 180),
    ("mistral-small", 10, 30),
    ("rerank", 5, 0),
    ("vision", 150, 600),
    ("summarise", 20, 80),
    ("translate", 20, 80),
    ("chat-large-eu", 275, 1100),
    ("moderation", 1, 0),
    ("batch-chat", 8, 32),
    ("legacy-chat", 50, 150),
]
OTHER_ORGS = [("Globex", "globex", "America/New_York"), ("Initech", "initech", "Asia/Kolkata")]


@dataclass
class World:
    org_slug: str
    owner_username: str
    workspaces: list[int]
    keys: dict[int, list[int]]
    deployments: dict[int, list[tuple[int, str, int, int]]]
    other: tuple  # the other organisations' (workspaces, keys, deployments), for Traffic


class OrgTraffic(Traffic):
    """The organisation's traffic: a few busy keys and a long tail; each key sends most of its
    requests to its own 1–4 deployments and a few to any other."""

    def __init__(self, world: World, seed: int = 1):
        super().__init__((world.workspaces, world.keys, world.deployments), seed=seed)
        rng = random.Random(seed * 7919)
        self.routes = [(ws, key) for ws in world.workspaces for key in world.keys[ws]]
        rng.shuffle(self.routes)
        self.key_weights = list(itertools.accumulate(1 / (i + 1) ** 0.8 for i in range(len(self.routes))))
        popularity = [1 / (i + 1) for i in range(len(DEPLOYMENTS))]
        self.key_deployments = []
        for ws, _ in self.routes:
            deps = world.deployments[ws]
            main, n_main = set(), rng.randint(1, 4)
            while len(main) < n_main:
                main.add(rng.choices(range(len(deps)), popularity)[0])
            weights = [(0.95 / len(main) if i in main else 0) + 0.05 / len(deps) for i in range(len(deps))]
            self.key_deployments.append((deps, list(itertools.accumulate(weights))))

    def route(self):
        i = self.rng.choices(range(len(self.routes)), cum_weights=self.key_weights)[0]
        ws, key = self.routes[i]
        deps, weights = self.key_deployments[i]
        return ws, key, self.rng.choices(deps, cum_weights=weights)[0]


def growing_times(start: datetime, end: datetime, n: int, growth: float = 3.0):
    """n timestamps in order from start to end, the rate growing linearly `growth`× (inverse CDF)."""
    a = growth - 1
    span = (end - start).total_seconds()
    for i in range(n):
        u = i / n
        x = u if a == 0 else (-1 + math.sqrt(1 + 2 * a * u * (1 + a / 2))) / a
        yield start + timedelta(seconds=x * span)


def make_world(*, subs=SUBS, deployments=DEPLOYMENTS, keys_scale: float = 1.0) -> World:
    """The organisation (with its owner and a few members) and two small other organisations."""
    from console.audit import Actor
    from console.models import Role, User
    from console.services import membership_add, workspace_create
    from deployments.models import Deployment, DeploymentPrice
    from keys.models import ApiKey

    actor = Actor.system("bench")
    since = datetime(2000, 1, 1, tzinfo=UTC)
    owner = User.objects.create_user("bench-owner", "owner@example.com", None)
    name, slug, zone, n_keys = ORG
    org = workspace_create(name=name, slug=slug, actor=actor, time_zone=zone, owner=owner)
    for i, role in enumerate((Role.ADMIN, Role.DEVELOPER, Role.DEVELOPER, Role.VIEWER)):
        membership_add(workspace=org, user=User.objects.create_user(f"bench-member-{i}", None, None), role=role, actor=actor)

    def priced(ws, specs) -> list[tuple[int, str, int, int]]:
        out = []
        for dep_name, inp, outp in specs:
            d = Deployment.objects.create(workspace=ws, name=dep_name, model_id=f"@{ws.slug}/{dep_name}")
            DeploymentPrice.objects.create(
                deployment=d, effective_from=since, input_per_million=Decimal(inp) / 100, output_per_million=Decimal(outp) / 100
            )
            out.append((d.id, d.model_id, inp, outp))
        return out

    def keys_for(ws, n) -> list[int]:
        return [
            ApiKey.objects.create(workspace=ws, name=f"{ws.slug}-key-{k}", hint="gh_live…bnch").id
            for k in range(max(1, round(n * keys_scale)))
        ]

    org_deps = priced(org, deployments)
    workspaces, keys, deps = [org.id], {org.id: keys_for(org, n_keys)}, {org.id: org_deps}
    for sub_name, sub_slug, sub_zone, sub_keys in subs:
        sub = workspace_create(name=sub_name, slug=sub_slug, actor=actor, parent=org, time_zone=sub_zone)
        workspaces.append(sub.id)
        keys[sub.id], deps[sub.id] = keys_for(sub, sub_keys), org_deps

    o_ws, o_keys, o_deps = [], {}, {}
    for other_name, other_slug, other_zone in OTHER_ORGS:
        root = workspace_create(name=other_name, slug=other_slug, actor=actor, time_zone=other_zone)
        child = workspace_create(name=f"{other_name} team", slug=f"{other_slug}-team", actor=actor, parent=root, time_zone=other_zone)
        root_deps = priced(root, deployments[:4])
        for ws in (root, child):
            o_ws.append(ws.id)
            o_keys[ws.id], o_deps[ws.id] = keys_for(ws, 5), root_deps
    return World(org.slug, owner.username, workspaces, keys, deps, (o_ws, o_keys, o_deps))


def load_events(conn, world: World, *, events: int, other_events: int, start: datetime, end: datetime, seed: int = 1) -> None:
    """COPY the organisation's and the other organisations' events, each stream in created_at order."""
    OrgTraffic(world, seed=seed).copy(conn, growing_times(start, end, events))
    if other_events:
        other = Traffic(world.other, seed=seed + 1)
        other.prefix = "other"
        other.copy(conn, growing_times(start, end, other_events, growth=1.0))


# --- measurement -----------------------------------------------------------------------------


@dataclass
class Page:
    name: str
    url: str
    headers: dict = field(default_factory=dict)


@dataclass
class Result:
    page: Page
    statuses: set[int]
    queries: int
    bytes: int
    ms: list[float]
    sql: list[tuple[float, str, tuple]] = field(default_factory=list)  # (ms, sql, params) of the last request
    sql_ms: list[float] = field(default_factory=list)  # time in SQL of each timed request

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile of the timed requests."""
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    @property
    def ok(self) -> bool:
        return self.percentile(95) <= TARGET_P95_MS


def dashboard_pages(org_slug: str) -> list[Page]:
    """Each dashboard view as the organisation's owner opens it: the busiest sub-workspace, key
    and deployment for the filtered views (most rollup rows behind them)."""
    from django.db.models import Sum
    from django.utils import timezone

    from console.models import Workspace
    from deployments.models import Deployment
    from keys.models import ApiKey
    from usage.models import UsageDaily

    org = Workspace.objects.get(slug=org_slug)
    today = timezone.now().astimezone(org.tz).date()
    year = f"start={today - timedelta(days=365)}&end={today}"
    tree = UsageDaily.objects.filter(workspace__in=[org.id, *org.children.values_list("id", flat=True)])

    def busiest(field_name: str):
        row = tree.exclude(**{f"{field_name}__isnull": True}).values(field_name).annotate(n=Sum("requests")).order_by("-n").first()
        return row[field_name] if row else None

    sub = Workspace.objects.filter(id=busiest("workspace"), parent=org).first() or org.children.first()
    key = ApiKey.objects.filter(id=busiest("api_key")).first() or ApiKey.objects.filter(workspace=org).first()
    dep = Deployment.objects.filter(id=busiest("deployment")).first() or Deployment.objects.filter(workspace=org).first()
    last_month = (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    base = f"/w/{org_slug}"
    usage = f"{base}/usage/"
    # The usage page's htmx requests name the element they swap (usage/views.py, FRAGMENTS).
    results = {"HX-Request": "true", "HX-Target": "usage-results"}
    tab = {"HX-Request": "true", "HX-Target": "deployment-usage"}
    pages = [
        Page("overview page (shell)", f"{base}/"),
        Page("overview usage panel", f"{usage}overview-panel/", {"HX-Request": "true"}),
        Page("usage, default range (30 days)", usage),
        Page("usage, last 48 h (hourly)", f"{usage}?range=48h"),
        Page("usage, 1 year", f"{usage}?{year}"),
        Page("usage, 1 year, sorted by key name", f"{usage}?{year}&sort=name"),
        Page("usage, 1 year, sorted by requests ↑", f"{usage}?{year}&sort=requests"),
        Page(f"usage, sub-workspace ({sub.slug})", f"{usage}?workspace={sub.slug}"),
        Page(f"usage, key ({key.name})", f"{usage}?key={key.public_id}"),
        Page(f"usage, deployment ({dep.name})", f"{usage}?deployment={dep.public_id}"),
        Page(f"usage, 1 year, sub-workspace ({sub.slug})", f"{usage}?{year}&workspace={sub.slug}"),
        Page(f"usage, 1 year, deployment ({dep.name})", f"{usage}?{year}&deployment={dep.public_id}"),
        Page("usage, 1 year, htmx results", f"{usage}?{year}", results),
        Page(f"deployment Usage tab ({dep.name})", f"{usage}?deployment={dep.public_id}", tab),
        Page("usage CSV, 30 days", f"{usage}export.csv"),
        Page("usage CSV, last 48 h", f"{usage}export.csv?range=48h"),
        Page("usage CSV, 1 year", f"{usage}export.csv?{year}"),
        Page("usage flat CSV, 30 days", f"{usage}events.csv"),
        Page("usage flat CSV, 1 year", f"{usage}events.csv?{year}"),
        Page(f"usage flat CSV, 1 year, sub-workspace ({sub.slug})", f"{usage}events.csv?{year}&workspace={sub.slug}"),
        Page("billing, current month", f"{base}/billing/"),
        Page("billing, last month", f"{base}/billing/?month={last_month}"),
        Page("billing CSV, last month", f"{base}/billing/export.csv?month={last_month}"),
    ]
    return pages


def measure(
    pages: list[Page],
    *,
    username: str,
    iterations: int = 30,
    warmup: int = 3,
    page_budget_s: float = 10.0,
    min_iterations: int = 5,
    progress=None,
) -> list[Result]:
    """Request each page `warmup` times, then up to `iterations` timed times (fewer if a page
    uses up its time budget, never fewer than `min_iterations`), as a signed-in user."""
    from django.db import connection
    from django.test import Client

    from console.models import User

    client = Client()
    client.force_login(User.objects.get(username=username))
    # As console/asgi.py does once the app is loaded: startup objects out of the collector's way.
    from lib.runtime import freeze_startup_objects

    freeze_startup_objects()
    results = []
    for page in pages:
        statuses, ms, sql_ms, size = set(), [], [], 0
        log: list[tuple[float, str, tuple]] = []

        def record(execute, sql, params, many, context, log=log):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                log.append(((time.perf_counter() - started) * 1000, sql, params))

        for _ in range(warmup):
            statuses.add(client.get(page.url, headers=page.headers).status_code)
        page_started = time.perf_counter()
        for i in range(iterations):
            log.clear()
            with connection.execute_wrapper(record):
                started = time.perf_counter()
                response = client.get(page.url, headers=page.headers)
                body = response.content
                ms.append((time.perf_counter() - started) * 1000)
            sql_ms.append(sum(q[0] for q in log))
            statuses.add(response.status_code)
            size = len(body)
            if i + 1 >= min_iterations and time.perf_counter() - page_started > page_budget_s:
                break
        result = Result(page, statuses, len(log), size, ms, list(log), sql_ms)
        results.append(result)
        if progress:
            progress(result)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| page | queries | KB | requests | SQL ms, median | p50 ms | p95 ms | max ms | p95 ≤ 150 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.page.name} | {r.queries} | {r.bytes / 1024:.0f} | {len(r.ms)} | {statistics.median(r.sql_ms):.1f} | {r.percentile(50):.1f} | "
            f"{r.percentile(95):.1f} | {max(r.ms):.1f} | {'✓' if r.ok else '✗'} |"
        )
    return "\n".join(lines)


def explain(results: list[Result], top: int = 2) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each page's slowest queries, as run by its last request."""
    from django.db import connection

    for r in results:
        print(f"\n### {r.page.name}: {r.queries} queries, {sum(ms for ms, _, _ in r.sql):.1f} ms in SQL")
        for ms, sql, params in sorted(r.sql, key=lambda q: -q[0])[:top]:
            print(f"-- {ms:.1f} ms: {sql[:300]}{'…' if len(sql) > 300 else ''}")
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            with connection.cursor() as c:
                c.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
                print("\n".join(row[0] for row in c.fetchall()))


# --- preparing the database ------------------------------------------------------------------


def prepare_environment(args) -> None:
    # Production request handling: DEBUG off (no query log), the manifest static storage.
    os.environ["DEBUG"] = "0"
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key-" + "b" * 40)
    os.environ.setdefault("API_KEY_PEPPER", "bench-only-pepper-" + "p" * 20)
    os.environ["ALLOWED_HOSTS"] = "testserver"
    os.environ["GATEHOUSE_HTTPS"] = "0"
    setup_django(args.server, args.database, var_dir="bench-dashboards")


def read_meta(server: str, name: str) -> dict | None:
    import psycopg

    try:
        with psycopg.connect(f"{server}/{name}") as conn:
            row = conn.execute("SELECT value FROM bench_meta WHERE key = 'shape'").fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def prepare(args) -> dict:
    """Reuse the database if it holds this data shape; otherwise build it. Returns its metadata."""
    shape = {"version": DATA_SHAPE, "events": args.events, "other_events": args.other_events, "months": args.months, "seed": args.seed}
    meta = None if args.fresh else read_meta(args.server, args.database)
    if meta is not None and meta.get("shape") != shape:
        print(f"{args.database} holds another data shape ({meta.get('shape')}); rebuilding", flush=True)
        meta = None
    if meta is None:
        recreate_database(args.server, args.database, prefix=DB_PREFIX)
    prepare_environment(args)

    from django.core.management import call_command
    from django.db import connection

    from usage import rollup

    call_command("migrate", verbosity=0)  # on reuse too: applies new index migrations
    call_command("collectstatic", interactive=False, verbosity=0)
    if meta is not None:
        print(f"reusing {args.database}: {meta['events_total']:,} events up to {meta['end']}", flush=True)
        # A migration may have marked buckets dirty (or added rollup tables): the real rollup
        # pass brings them up to date, as it would in production.
        started = time.perf_counter()
        report = rollup.run()
        if report.day_buckets or report.hour_buckets:
            print(
                f"rolled up in {time.perf_counter() - started:.0f} s: {report.day_buckets} day buckets, {report.hour_buckets} hour buckets",
                flush=True,
            )
            vacuum(*ROLLUP_TABLES)
        else:
            with connection.cursor() as c:
                c.execute("; ".join(f"ANALYZE {t}" for t in ROLLUP_TABLES))
        return meta

    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=round(args.months * 365 / 12))
    world = make_world()
    started = time.perf_counter()
    load_events(connection.connection, world, events=args.events, other_events=args.other_events, start=start, end=end, seed=args.seed)
    connection.connection.commit()
    load_s = time.perf_counter() - started
    print(f"loaded {args.events + args.other_events:,} events in {load_s:.0f} s", flush=True)
    vacuum("usage_usageevent")
    started = time.perf_counter()
    report = rollup.run(now=end + timedelta(seconds=1))
    rollup_s = time.perf_counter() - started
    print(f"rolled up in {rollup_s:.0f} s: {report.day_buckets} day buckets, {report.hour_buckets} hour buckets", flush=True)
    # A rollup table in production has long been vacuumed and analysed.
    vacuum(*ROLLUP_TABLES)
    meta = {
        "shape": shape,
        "start": start.isoformat(),
        "end": end.isoformat(),
        "events_total": args.events + args.other_events,
        "org": world.org_slug,
        "owner": world.owner_username,
        "load_s": round(load_s),
        "rollup_s": round(rollup_s),
    }
    with connection.cursor() as c:
        c.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text PRIMARY KEY, value jsonb NOT NULL)")
        c.execute("INSERT INTO bench_meta VALUES ('shape', %s) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", [json.dumps(meta)])
    return meta


def ensure_budget(org_slug: str) -> None:
    """The organisation has a monthly budget, so the pages that show it read its spend too."""
    from console.audit import Actor
    from console.models import Workspace
    from usage.models import Budget
    from usage.services import budget_set

    org = Workspace.objects.get(slug=org_slug)
    if not Budget.objects.filter(workspace=org).exists():
        budget_set(workspace=org, amount=Decimal("250000"), currency="USD", block_requests=False, actor=Actor.system("bench"))


def vacuum(*tables: str) -> None:
    from django.db import connection

    connection.ensure_connection()
    raw = connection.connection
    raw.commit()
    previous, raw.autocommit = raw.autocommit, True  # VACUUM cannot run in a transaction
    try:
        with connection.cursor() as c:
            for t in tables:
                c.execute(f"VACUUM (ANALYZE) {t}")
    finally:
        raw.autocommit = previous


def counts(org_slug: str) -> dict:
    from django.db import connection

    with connection.cursor() as c:
        c.execute(
            """
            SELECT (SELECT count(*) FROM usage_usageevent),
                   (SELECT count(*) FROM usage_usageevent e JOIN console_workspace w ON w.id = e.workspace_id
                     WHERE w.slug = %(org)s OR w.parent_id = (SELECT id FROM console_workspace WHERE slug = %(org)s)),
                   (SELECT count(*) FROM usage_usagedaily),
                   (SELECT count(*) FROM usage_usagedaily d JOIN console_workspace w ON w.id = d.workspace_id
                     WHERE w.slug = %(org)s OR w.parent_id = (SELECT id FROM console_workspace WHERE slug = %(org)s)),
                   (SELECT count(*) FROM usage_usagehourly),
                   pg_size_pretty(pg_total_relation_size('usage_usagedaily'))
        """,
            {"org": org_slug},
        )
        events, org_events, daily, org_daily, hourly, daily_size = c.fetchone()
    return {"events": events, "org_events": org_events, "daily": daily, "org_daily": org_daily, "hourly": hourly, "daily_size": daily_size}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=10_000_000, help="the organisation's events")
    p.add_argument("--other-events", type=int, default=None, help="two other organisations' events (default: events / 10)")
    p.add_argument("--months", type=float, default=13)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--iterations", type=int, default=30, help="timed requests per page (fewer if a page exceeds --page-budget)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--page-budget", type=float, default=8.0, help="seconds of timed requests per page at most")
    p.add_argument("--database", default=DB_PREFIX)
    p.add_argument("--fresh", action="store_true", help="rebuild the database even if it holds this data shape")
    p.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE each page's slowest queries")
    p.add_argument("--pages", default="", help="only the pages whose name contains this text")
    p.add_argument("--server", default=os.environ.get("BENCH_PG", "postgres://postgres@localhost:5432"))
    args = p.parse_args(argv)
    if args.other_events is None:
        args.other_events = args.events // 10
    return args


def main() -> None:
    args = parse_args()
    meta = prepare(args)
    c = counts(meta["org"])
    print(f"events: {c['events']:,} ({c['org_events']:,} in {meta['org']}), {meta['start'][:10]} → {meta['end'][:16]} UTC")
    print(f"rollups: {c['daily']:,} daily rows ({c['org_daily']:,} in {meta['org']}; table {c['daily_size']}), {c['hourly']:,} hourly rows")
    age_h = (datetime.now(UTC) - datetime.fromisoformat(meta["end"])).total_seconds() / 3600
    if age_h > 24:
        print(f"note: the history ended {age_h:.0f} h ago; today's figures are empty (--fresh rebuilds)")
    load = os.getloadavg()[0]
    print(f"load average {load:.2f}; {args.warmup} warm-up + up to {args.iterations} timed requests per page\n", flush=True)

    ensure_budget(meta["org"])
    pages = [p for p in dashboard_pages(meta["org"]) if args.pages in p.name]
    started = time.perf_counter()
    results = measure(
        pages,
        username=meta["owner"],
        iterations=args.iterations,
        warmup=args.warmup,
        page_budget_s=args.page_budget,
        progress=lambda r: print(f"  {r.page.name}: p95 {r.percentile(95):.1f} ms", flush=True),
    )
    print(
        f"\nmeasured in {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.2f}; "
        f"{date.today()}, `bench/dashboards.py --events {args.events}`\n"
    )
    print(table(results))
    bad = [r for r in results if r.statuses != {200}]
    if bad:
        raise SystemExit(f"pages that did not answer 200: {[(r.page.name, r.statuses) for r in bad]}")
    if args.explain:
        explain(results)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
