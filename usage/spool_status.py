"""What the gateways' usage spools hold, for the admins' banner.

Each gateway process publishes one entry per spool file it holds (its own, or one it adopted
from a stopped process) into one Redis hash, and removes the entry once the file is drained.
Redis rather than the spool directory: gateway processes may run on other machines than the
console serving the page, Redis is already what every gateway and the console share, and an
entry outlives the process that wrote it, so events left by a process that died (and that no
process has adopted yet) stay visible. Without REDIS_URL (the embedded default: console and
gateway are one process) the same entries live in this module.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings

from lib.redis import redis_client

STATUS_KEY = "gatehouse:usage-spool"
_local: dict[str, str] = {}


@dataclass(frozen=True)
class SpoolAlert:
    name: str
    host: str
    pid: int
    depth: int
    rejected: int
    oldest: float | None
    updated: float

    @property
    def oldest_at(self) -> datetime | None:
        return datetime.fromtimestamp(self.oldest, UTC) if self.oldest else None

    @property
    def stale(self) -> bool:
        """Its process stopped publishing (died): the events wait for a gateway on that host to start."""
        return time.time() - self.updated > 120


def encode_status(*, host: str, pid: int, depth: int, rejected: int, oldest: float | None) -> str:
    return json.dumps({"host": host, "pid": pid, "depth": depth, "rejected": rejected, "oldest": oldest, "updated": time.time()})


def local_publish(name: str, value: str | None) -> None:
    if value is None:
        _local.pop(name, None)
    else:
        _local[name] = value


def spool_alerts(*, now: float | None = None) -> list[SpoolAlert]:
    """Spool files with events older than GATEWAY_SPOOL_ALERT_SECONDS, or with rows the database refused."""
    now = now or time.time()
    if settings.REDIS_URL:
        try:
            raw = redis_client().hgetall(STATUS_KEY)
        except Exception:
            return []
    else:
        raw = dict(_local)
    alerts = []
    for name, value in raw.items():
        try:
            data = json.loads(value)
            alert = SpoolAlert(
                name=name.decode() if isinstance(name, bytes) else name,
                host=str(data["host"]),
                pid=int(data["pid"]),
                depth=int(data["depth"]),
                rejected=int(data.get("rejected") or 0),
                oldest=float(data["oldest"]) if data.get("oldest") else None,
                updated=float(data["updated"]),
            )
        except (ValueError, KeyError, TypeError):
            continue
        old = alert.depth and alert.oldest is not None and now - alert.oldest >= settings.GATEWAY_SPOOL_ALERT_SECONDS
        if old or alert.rejected:
            alerts.append(alert)
    return sorted(alerts, key=lambda a: (a.oldest or now, a.name))
