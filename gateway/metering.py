"""Usage events: exactly one durable row per admitted request, written before its response completes.

Group commit: every request hands its row to one writer task per process and awaits it. The
writer inserts everything that queued up while the previous INSERT was in flight as ONE
multi-row `INSERT ... ON CONFLICT (request_id) DO NOTHING` (one commit, one fsync), so
throughput scales with concurrency while a lone request pays a single round trip. A duplicate
request id is a no-op, so a retried write can never double-bill.

On PostgreSQL the writer uses its own psycopg async connection (no thread hop, no ORM on the
hot path); the column list still comes from the UsageEvent model, the single schema. Without
PostgreSQL (the SQLite embedded default) the same batches go through the ORM on the DB thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from decimal import Decimal

from django.conf import settings

log = logging.getLogger("gateway")

MAX_BATCH = 500
APPLICATION_NAME = "gatehouse-gateway-usage"  # visible in pg_stat_activity
MILLION = Decimal(1_000_000)


def usage_columns() -> list[str]:
    from usage.models import UsageEvent

    return [f.column for f in UsageEvent._meta.concrete_fields if not f.primary_key]


def cost_of(prompt_tokens: int, completion_tokens: int, price) -> Decimal:
    if price is None:
        return Decimal(0)
    cost = (Decimal(prompt_tokens) * price.input_per_million + Decimal(completion_tokens) * price.output_per_million) / MILLION
    return cost.quantize(Decimal("0.000000001"))


class UsageWriter:
    """Collects rows (dicts keyed by column name) and writes them in group-committed batches."""

    def __init__(self, *, run_db=None, on_query=None):
        self.columns = usage_columns()
        self.pending: list[tuple[dict, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.run_db = run_db
        self.on_query = on_query or (lambda kind, n=1: None)
        self.conn = None
        self.sql: str | None = None
        self.use_psycopg = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.conn is not None:
            await self.conn.close()

    async def write(self, row: dict) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((row, future))
        self.wakeup.set()
        await future

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.pending = self.pending, []
            for start in range(0, len(batch), MAX_BATCH):
                chunk = batch[start : start + MAX_BATCH]
                try:
                    await self._insert_with_retry([row for row, _ in chunk])
                except Exception as exc:
                    log.error("usage events could not be written: %s", exc)
                    for _, future in chunk:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, future in chunk:
                        if not future.done():
                            future.set_result(None)

    async def _insert_with_retry(self, rows: list[dict]) -> None:
        try:
            await self._insert(rows)
        except Exception:
            # One reconnect and retry: the conflict clause makes a repeated batch harmless.
            await self._reset()
            await self._insert(rows)

    async def _reset(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            except Exception:
                pass
            self.conn = None

    async def _connection(self):
        if self.conn is None or self.conn.closed:
            import psycopg

            self.conn = await psycopg.AsyncConnection.connect(**pg_params(), autocommit=True)
            if not settings.GATEWAY_USAGE_SYNCHRONOUS_COMMIT:
                # Opt-in trade-off: the commit returns before PostgreSQL flushes its WAL, saving
                # one disk flush per batch; a PostgreSQL crash (not a gateway crash) can then lose
                # the last ~0.6 s of events.
                await self.conn.execute("SET synchronous_commit TO off")
        return self.conn

    def _unnest_sql(self) -> str:
        # One fixed statement for any batch size: one array parameter per column. psycopg
        # prepares it once; a VALUES list would be a new statement (and a re-parse) per size.
        if self.sql is None:
            from django.db import connection

            from usage.models import UsageEvent

            fields = {f.column: f for f in UsageEvent._meta.concrete_fields}
            casts = ", ".join(f"%s::{fields[c].db_type(connection)}[]" for c in self.columns)
            self.sql = (
                f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(self.columns)}) "
                f"SELECT * FROM unnest({casts}) ON CONFLICT (request_id) DO NOTHING"
            )
        return self.sql

    async def _insert(self, rows: list[dict]) -> None:
        self.on_query("usage_insert")
        if self.use_psycopg:
            params = [[row[c] for row in rows] for c in self.columns]
            conn = await self._connection()
            await conn.execute(self._unnest_sql(), params, prepare=True)
        else:
            await self.run_db(_orm_insert, rows)


def _orm_insert(rows: list[dict]) -> None:
    from usage.models import UsageEvent

    fields = {f.column: f.attname for f in UsageEvent._meta.concrete_fields}
    UsageEvent.objects.bulk_create([UsageEvent(**{fields[c]: v for c, v in row.items()}) for row in rows], ignore_conflicts=True)


def pg_params() -> dict:
    db = settings.DATABASES["default"]
    params = {
        "dbname": db["NAME"],
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
    }
    skip = {"pool", "isolation_level", "server_side_binding", "assume_role"}
    params.update({k: v for k, v in (db.get("OPTIONS") or {}).items() if k not in skip})
    params.setdefault("application_name", APPLICATION_NAME)
    params.setdefault("connect_timeout", 5)  # a database that drops packets must not hang requests forever
    return {k: v for k, v in params.items() if v is not None}


def event_row(
    *,
    request_id: str,
    started: float,
    entry,
    route,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    status_code: int,
    error_code: str = "",
    estimated: bool = False,
    aborted: bool = False,
    streamed: bool = False,
    ttft_ms: int | None = None,
    client_ip: str | None,
    endpoint: str = "chat.completions",
) -> dict:
    now = time.time()
    price = route.price_at(now) if route is not None else None
    return {
        "request_id": request_id,
        "created_at": datetime.fromtimestamp(now, UTC),
        "workspace_id": entry.workspace_id,
        "api_key_id": entry.api_key_id,
        "deployment_id": route.deployment_id if route is not None else None,
        "model": model[:200],
        "endpoint": endpoint,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "estimated": estimated,
        "status_code": status_code,
        "error_code": error_code[:64],
        "aborted": aborted,
        "streamed": streamed,
        "is_test_call": entry.kind == "test_call",
        "latency_ms": int((now - started) * 1000),
        "ttft_ms": ttft_ms,
        "client_ip": client_ip,
        "input_price_per_million": price.input_per_million if price else Decimal(0),
        "output_price_per_million": price.output_per_million if price else Decimal(0),
        "currency": price.currency if price else "USD",
        "cost": cost_of(prompt_tokens, completion_tokens, price),
    }
