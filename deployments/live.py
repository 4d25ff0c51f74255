"""What the details page shows about each replica right now and over the last hour.

Live figures come from the gateways: each process writes its in-flight count and ejections per
replica to a Redis hash every LIVE_EVERY_SECONDS (gateway.app.publish_replica_stats); entries
older than LIVE_STALE_SECONDS (a stopped process) are ignored. The last hour's requests, error
rate and p95 latency are read from the usage events, which name the replica that answered
(usage.selectors.replica_last_hour; the page passes them in).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from django.conf import settings

from lib.redis import redis_client

LIVE_EVERY_SECONDS = 5
LIVE_STALE_SECONDS = 20


def live_key(uid: str) -> str:
    return f"gatehouse:replica:{uid}:live"


@dataclass
class ReplicaFigures:
    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None
    inflight: int | None = None  # None: unknown (no Redis, or no gateway reported)
    ejections: int | None = None
    ejected_on: int = 0  # gateway processes that have it ejected right now
    processes: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def replica_figures(replicas: list, *, last_hour: dict[int, tuple[int, int, float | None]]) -> dict[int, ReplicaFigures]:
    """`last_hour`: (requests, errors, p95 ms) per replica id, from usage.selectors.replica_last_hour."""
    figures = {r.id: ReplicaFigures() for r in replicas}
    if not replicas:
        return figures
    for replica_id, (requests, errors, p95_ms) in last_hour.items():
        if replica_id in figures:
            figures[replica_id].requests, figures[replica_id].errors, figures[replica_id].p95_ms = requests, errors, p95_ms
    if settings.REDIS_URL:
        _live(replicas, figures)
    return figures


def _live(replicas: list, figures: dict[int, ReplicaFigures]) -> None:
    try:
        pipe = redis_client().pipeline(transaction=False)
        for r in replicas:
            pipe.hgetall(live_key(str(r.public_id)))
        answers = pipe.execute()
    except Exception:
        return  # the page still shows the last hour
    now = time.time()
    for replica, entries in zip(replicas, answers, strict=True):
        f = figures[replica.id]
        for raw in entries.values():
            published, inflight, ejections, ejected = json.loads(raw)
            if now - published > LIVE_STALE_SECONDS:
                continue
            f.processes += 1
            f.inflight = (f.inflight or 0) + inflight
            f.ejections = (f.ejections or 0) + ejections
            f.ejected_on += bool(ejected)
