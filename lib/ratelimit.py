"""A fixed-window request counter: `allow(name, limit)` per calendar minute.

In Redis when REDIS_URL is set (shared by every process); otherwise in this process, which is
exact for the single-process embedded default only.
"""

from __future__ import annotations

import threading
import time

from django.conf import settings

from lib.redis import redis_client

_local: dict[str, int] = {}
_lock = threading.Lock()


def allow(name: str, limit: int, *, now: float | None = None) -> tuple[bool, int]:
    """Count one request against `name` in the current minute: (allowed, seconds until the window resets)."""
    now = time.time() if now is None else now
    window = int(now // 60)
    retry_after = 60 - int(now % 60)
    key = f"ratelimit:{name}:{window}"
    if settings.REDIS_URL:
        pipe = redis_client().pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
    else:
        with _lock:
            for stale in [k for k in _local if not k.endswith(f":{window}")]:
                del _local[stale]
            count = _local[key] = _local.get(key, 0) + 1
    return count <= limit, retry_after
