"""Usage events: exactly one durable row per admitted request, queued before its answer goes out
and committed right after it (docs/GATEWAY.md "Metering"; before it while the writer is degraded,
or with GATEWAY_USAGE_COMMIT_BEFORE_ANSWER).

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
import functools
import logging
import os
import socket
import time
from datetime import UTC, datetime
from decimal import Decimal

import django.db
import psycopg
from django.conf import settings
from django.db import connection

from gateway import metrics
from gateway.spool import Spool, row_decoder
from usage.models import UsageEvent
from usage.pricing import token_cost
from usage.seal import event_seal
from usage.spool_status import encode_status

log = logging.getLogger("gateway")

MAX_BATCH = 500
APPLICATION_NAME = "gatehouse-gateway-usage"  # visible in pg_stat_activity
REPLAY_RETRY = 1.0  # seconds between replay attempts while events wait in the spool
SCAN_INTERVAL = 15.0  # seconds between looks for spool files left by stopped processes


def usage_columns() -> list[str]:
    return [f.column for f in UsageEvent._meta.concrete_fields if not f.primary_key]


class UsageWriter:
    """Collects rows (dicts keyed by column name) and writes them in group-committed batches.

    With a spool (gateway.spool), a batch the database does not take within
    GATEWAY_USAGE_WRITE_TIMEOUT (after one reconnect) is appended to it instead and the requests
    go on; until a replay succeeds, later batches go straight to the spool rather than wait on a
    database that is away. `write()` raises only when neither could store the row.
    """

    def __init__(self, *, run_db=None, on_query=None, spool: Spool | None = None, publish=None):
        self.columns = usage_columns()
        self.pending: list[tuple[dict, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.run_db = run_db
        self.on_query = on_query or (lambda kind, n=1: None)
        self.use_psycopg = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
        self.live = Inserter(self)
        self.replayer = Inserter(self)  # its own connection: a replay never queues behind live writes
        self.spool = spool
        self.publish = publish  # async (name, status json | None): the admins' banner (usage.spool_status)
        self.published: set[str] = set()
        self.publish_failing = False
        self.db_down = False
        self.failing = False  # the last batch could be stored nowhere
        self.appending = 0  # spool appends in flight (the spool's depth does not show them yet)
        self.task: asyncio.Task | None = None
        self.replay_task: asyncio.Task | None = None
        self.wake_replay = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.task = loop.create_task(self._run())
        if self.spool is not None:
            self.replay_task = loop.create_task(self._replay_loop())

    async def stop(self) -> None:
        for task in (self.task, self.replay_task):
            if task:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        await self.live.close()
        await self.replayer.close()
        if self.spool is not None:
            await self._in_spool(self.spool.close)
            self.spool.executor.shutdown(wait=True)

    async def write(self, row: dict) -> None:
        await self.submit(row)

    def submit(self, row: dict) -> asyncio.Future:
        """Queue the row for the next group commit; the future resolves once it is stored (or fails)."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((row, future))
        self.wakeup.set()
        return future

    @property
    def healthy(self) -> bool:
        """The last batch went into the database: a request may answer before its row is committed."""
        return not self.db_down and not self.failing

    async def _run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            batch, self.pending = self.pending, []
            for start in range(0, len(batch), MAX_BATCH):
                chunk = batch[start : start + MAX_BATCH]
                try:
                    await self._store([row for row, _ in chunk])
                except Exception as exc:
                    log.error("usage events could not be written: %s", exc)
                    metrics.USAGE_UNRECORDED.inc(len(chunk))
                    self.failing = True
                    for _, future in chunk:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    self.failing = False
                    for _, future in chunk:
                        if not future.done():
                            future.set_result(None)

    async def _store(self, rows: list[dict]) -> None:
        if self.spool is None:
            await self.live.insert_with_retry(rows)
            return
        tried_db = not self.db_down
        if tried_db:
            try:
                await asyncio.wait_for(self.live.insert_with_retry(rows), settings.GATEWAY_USAGE_WRITE_TIMEOUT)
                return
            except Exception as exc:
                log.warning("usage events go to the local spool: the database did not take them (%s)", _describe(exc))
                await self.live.close()
                self.db_down = True
        self.appending += 1
        try:
            await self._in_spool(self.spool.append, rows)
        except Exception as exc:
            log.error("the usage spool cannot be written: %s", _describe(exc))
            if tried_db:
                raise
            # The spool is broken (disk full?) while we assumed the database away: it may be back.
            await asyncio.wait_for(self.live.insert_with_retry(rows), settings.GATEWAY_USAGE_WRITE_TIMEOUT)
            self.db_down = False
            return
        finally:
            self.appending -= 1
        metrics.USAGE_SPOOLED.inc(len(rows))
        self._update_gauges()
        self.wake_replay.set()

    async def _in_spool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.spool.executor, fn, *args)

    # ---- replay ----------------------------------------------------------------------------------
    async def _replay_loop(self) -> None:
        """Adopt spools left by stopped processes, replay every held spool, publish its status."""
        next_scan = 0.0
        while True:
            try:
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + SCAN_INTERVAL
                    await self._in_spool(self.spool.adopt_orphans)
                await self.replay()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replaying the usage spool failed; retrying")
            self._update_gauges()
            await self._publish_status()
            waiting = self.db_down or self.spool.depth() > 0
            try:
                await asyncio.wait_for(self.wake_replay.wait(), REPLAY_RETRY if waiting else SCAN_INTERVAL)
            except TimeoutError:
                pass
            self.wake_replay.clear()

    async def replay(self) -> int:
        """Move what the held spools hold into the database; returns how many events were replayed."""
        replayed = 0
        for spool_file in list(self.spool.files()):
            while spool_file.depth:
                rows = await self._in_spool(self.spool.batch, spool_file, MAX_BATCH)
                if not rows:
                    break
                decoded = [(seq, self.decode(blob)) for seq, blob in rows]
                try:
                    await asyncio.wait_for(self.replayer.insert_with_retry([r for _, r in decoded]), settings.GATEWAY_USAGE_WRITE_TIMEOUT)
                except Exception as exc:
                    if not _refused_for_good(exc):
                        await self.replayer.close()
                        return replayed  # still away: the next tick tries again
                    replayed += await self._replay_one_by_one(spool_file, decoded)
                    continue
                await self._in_spool(self.spool.forget, spool_file, [seq for seq, _ in rows])
                replayed += len(rows)
                metrics.USAGE_REPLAYED.inc(len(rows))
                self.db_down = False  # the database takes events again: new ones go straight to it
            if await self._in_spool(self.spool.release_if_done, spool_file):
                await self._publish(spool_file.name, None)
        if self.spool.depth() == 0 and not self.appending:
            self.db_down = False  # nothing waits: the next batch tries the database again
        return replayed

    async def _replay_one_by_one(self, spool_file, decoded: list[tuple[int, dict]]) -> int:
        replayed = 0
        for seq, row in decoded:
            try:
                await self.replayer.insert_with_retry([row])
            except Exception as exc:
                if not _refused_for_good(exc):
                    raise
                log.error("the database refused spooled usage event %s for good: %s", row["request_id"], _describe(exc))
                await self._in_spool(self.spool.reject, spool_file, seq, _describe(exc))
                continue
            await self._in_spool(self.spool.forget, spool_file, [seq])
            replayed += 1
            metrics.USAGE_REPLAYED.inc()
        return replayed

    @functools.cached_property
    def decode(self):
        return row_decoder(self.columns)

    def _update_gauges(self) -> None:
        oldest = self.spool.oldest()
        metrics.SPOOL_DEPTH.set(self.spool.depth())
        metrics.SPOOL_OLDEST.set(time.time() - oldest if oldest else 0)
        metrics.SPOOL_REJECTED.set(self.spool.rejected())

    async def _publish_status(self) -> None:
        if self.publish is None:
            return
        held = {f.name: f for f in self.spool.files() if f.depth or f.rejected}
        for name, spool_file in held.items():
            await self._publish(
                name,
                encode_status(
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    depth=spool_file.depth,
                    rejected=spool_file.rejected,
                    oldest=spool_file.oldest,
                ),
            )
        for name in self.published - set(held):
            await self._publish(name, None)

    async def _publish(self, name: str, value: str | None) -> None:
        if self.publish is None:
            return
        try:
            await self.publish(name, value)
        except Exception as exc:
            if not self.publish_failing:  # once per failure streak, not every second
                log.warning("spool status not published: %s", type(exc).__name__)
            self.publish_failing = True
            return
        self.publish_failing = False
        if value is None:
            self.published.discard(name)
        else:
            self.published.add(name)


class Inserter:
    """One database connection's worth of the writer's INSERT."""

    def __init__(self, writer: UsageWriter):
        self.writer = writer
        self.conn = None
        self.sql: str | None = None
        self.single_sql: str | None = None

    async def insert_with_retry(self, rows: list[dict]) -> None:
        try:
            await self.insert(rows)
        except Exception as exc:
            if _refused_for_good(exc):
                raise
            # One reconnect and retry: the conflict clause makes a repeated batch harmless.
            await self.close()
            await self.insert(rows)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 2)
            except BaseException:
                pass

    async def _connection(self):
        if self.conn is None or self.conn.closed:
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
            fields = {f.column: f for f in UsageEvent._meta.concrete_fields}
            columns = self.writer.columns
            casts = ", ".join(f"%s::{fields[c].db_type(connection)}[]" for c in columns)
            self.sql = (
                f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(columns)}) "
                f"SELECT * FROM unnest({casts}) ON CONFLICT (request_id) DO NOTHING"
            )
        return self.sql

    def _single_sql(self) -> str:
        # A lone row (every request at one connection): plain scalar parameters, which psycopg
        # dumps in C; the array parameters of the unnest form cost ~25 Python-level list dumps.
        if self.single_sql is None:
            columns = self.writer.columns
            self.single_sql = (
                f"INSERT INTO {UsageEvent._meta.db_table} ({', '.join(columns)}) "
                f"VALUES ({', '.join(['%s'] * len(columns))}) ON CONFLICT (request_id) DO NOTHING"
            )
        return self.single_sql

    async def insert(self, rows: list[dict]) -> None:
        writer = self.writer
        writer.on_query("usage_insert")
        if writer.use_psycopg:
            conn = await self._connection()
            if len(rows) == 1:
                row = rows[0]
                await conn.execute(self._single_sql(), [row[c] for c in writer.columns], prepare=True)
                return
            params = [[row[c] for row in rows] for c in writer.columns]
            await conn.execute(self._unnest_sql(), params, prepare=True)
        else:
            await writer.run_db(_orm_insert, rows)


def _refused_for_good(exc: BaseException) -> bool:
    """The database answered and refused these rows (a constraint, bad data): retrying cannot help."""
    permanent = (django.db.IntegrityError, django.db.DataError, psycopg.IntegrityError, psycopg.DataError)
    return isinstance(exc, permanent)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip()[:200]}" if str(exc).strip() else type(exc).__name__


def _orm_insert(rows: list[dict]) -> None:
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
    replica_id: int | None = None,
) -> dict:
    now = time.time()
    price = route.price_at(now) if route is not None else None
    row = {
        "request_id": request_id,
        "created_at": datetime.fromtimestamp(now, UTC),
        "workspace_id": entry.workspace_id,
        "api_key_id": entry.api_key_id,
        "deployment_id": route.deployment_id if route is not None else None,
        "replica_id": replica_id,
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
        "cost": token_cost(prompt_tokens, completion_tokens, price),
    }
    row["seal"] = event_seal(row)
    return row
