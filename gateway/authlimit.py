"""A per-client-IP limit on failed authentications, so forged keys cannot turn into database lookups.

Every credential that is not in the key cache (neither a cached key nor a digest recently found
unknown) costs one database lookup. Each such lookup is claimed against the client IP's budget
of GATEWAY_AUTH_FAILURES_PER_MINUTE before it runs, and handed back when a key is found: only
failures stay counted. Over the budget, a lookup is refused with 429 and Retry-After, without
touching the database; keys already cached keep working from that address. The claim comes
before the lookup, so a burst of concurrent forged keys is bounded too.

Counted in Redis (one fixed 60-second window per IP, shared by every gateway process) when
REDIS_URL is set, in process memory otherwise. If Redis cannot be reached the check lets the
lookup through (logged): the key check itself stays exact, and admission fails closed anyway.
"""

from __future__ import annotations

import logging
import math
import time

log = logging.getLogger("gateway")

WINDOW = 60
CLAIM_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return {n, redis.call('TTL', KEYS[1])}
"""
RELEASE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
return 1
"""


def counter_key(ip: str) -> str:
    return f"gatehouse:authfail:{ip}"


class AuthFailures:
    def __init__(self, *, limit: int, redis=None):
        self.limit = limit
        self.redis = redis  # gateway.resp.PipelinedRedis, or None: in process memory
        self.local: dict[str, tuple[float, int]] = {}

    async def claim(self, ip: str | None) -> int:
        """Count a lookup for this client; 0 if it may run, else the seconds until it may."""
        ip = ip or "unknown"
        if self.redis is not None:
            try:
                count, ttl = await self.redis.evalsha(CLAIM_LUA, [counter_key(ip)], [WINDOW])
            except Exception as exc:
                log.warning("failed-authentication counter unavailable (%s); not limiting", type(exc).__name__)
                return 0
            return 0 if int(count) <= self.limit else max(1, int(ttl))
        now = time.time()
        started, count = self.local.get(ip, (now, 0))
        if now - started >= WINDOW:
            started, count = now, 0
        if len(self.local) > 100_000:  # a flood of addresses: forget the old windows
            self.local = {k: v for k, v in self.local.items() if now - v[0] < WINDOW}
        self.local[ip] = (started, count + 1)
        return 0 if count + 1 <= self.limit else max(1, math.ceil(started + WINDOW - now))

    def release(self, ip: str | None) -> None:
        """The lookup found a key: it was not a failure."""
        ip = ip or "unknown"
        if self.redis is not None:
            self.redis.fire(RELEASE_LUA, [counter_key(ip)], [])
            return
        started, count = self.local.get(ip, (0.0, 0))
        if count:
            self.local[ip] = (started, count - 1)
