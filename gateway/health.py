"""Health endpoints for orchestrators, answered by the ASGI app before Django's request stack.

- `GET /healthz` (liveness): the process is up and its event loop answers. No dependencies, so a
  database outage never gets healthy processes restarted.
- `GET /readyz` (readiness): PostgreSQL (or SQLite) answers `SELECT 1` and Redis answers PING,
  each within READY_TIMEOUT; 200 with the checks, or 503 naming what failed. The checks run on a
  thread of their own, so a slow database never queues them behind usage writes.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import orjson
from django.db import close_old_connections, connection

READY_TIMEOUT = 3.0
_TEXT = [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-store")]
_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")


async def healthz(send) -> None:
    await _respond(send, 200, b"ok", _TEXT)


async def readyz(gateway, send) -> None:
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(_executor, _database_ping), READY_TIMEOUT)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001  (any failure means not ready; the type names it)
        checks["database"] = _failure(exc)
    if gateway.redis is None:
        checks["redis"] = "not configured"
    else:
        try:
            await asyncio.wait_for(gateway.redis.ping(), READY_TIMEOUT)
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = _failure(exc)
    ready = all(value in ("ok", "not configured") for value in checks.values())
    body = orjson.dumps({"status": "ready" if ready else "not ready", "checks": checks})
    await _respond(send, 200 if ready else 503, body, _JSON)


def _database_ping() -> None:
    close_old_connections()  # drops a connection the server closed since the last check
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        connection.close()
        raise


def _failure(exc: BaseException) -> str:
    # The exception's type only: its text can hold a host name, a user or a password.
    return "timeout" if isinstance(exc, TimeoutError) else f"failed ({type(exc).__name__})"


async def _respond(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
