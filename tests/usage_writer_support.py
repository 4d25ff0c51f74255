"""Shared pieces of the usage writer's tests (tests/test_gateway_spool.py, tests/test_gateway_timing.py):
a usage row as the gateway builds it, and a database that can be switched away."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from types import SimpleNamespace

from django.db import connection

from gateway.metering import event_row
from gateway.routes import Price, Route


def row(
    world,
    key,
    request_id: str,
    *,
    workspace_id: int | None = None,
    prompt: int = 7,
    completion: int = 3,
    streamed: bool = True,
    client_ip: str = "2001:db8::1",
    age: float = 0.25,
) -> dict:
    """A usage row as the gateway's metering builds it (gateway.metering.event_row), `age` seconds old."""
    entry = SimpleNamespace(workspace_id=workspace_id or world.org.id, api_key_id=key.id, kind="user")
    route = Route(
        name="m",
        kind="deployment",
        chat_url="",
        upstream_model="m",
        api_key=None,
        timeout=1.0,
        prices=(Price(0.0, Decimal("2"), Decimal("4"), "EUR"),),
    )
    return event_row(
        request_id=request_id,
        started=time.time() - age,
        entry=entry,
        route=route,
        model="m",
        prompt_tokens=prompt,
        completion_tokens=completion,
        status_code=200,
        streamed=streamed,
        client_ip=client_ip,
    )


def closing_connection(fn, *args):
    """Run fn on a worker thread's own connection and close it after (no connection left open)."""
    try:
        return fn(*args)
    finally:
        connection.close()


class FlakyDatabase:
    """The writer's database, reachable or not: set `down` to cut it off and to bring it back."""

    def __init__(self, *, down: bool):
        self.down = down

    async def run(self, fn, *args):
        """The writer's run_db: refused with a connection error while down."""
        if self.down:
            raise ConnectionError("database away")
        return await asyncio.to_thread(closing_connection, fn, *args)

    def wrap(self, insert):
        """A psycopg-path insert that is refused while down."""

        async def wrapped(rows):
            if self.down:
                raise ConnectionError("database away")
            await insert(rows)

        return wrapped
