"""Who is calling: the per-process key cache and what keeps it fresh.

A key is looked up by its digest once (gateway/keyload.py) and kept in an in-process dict with
everything the hot path needs (gateway/routes.py's KeyEntry: limits, allowlist, expiry, the
models it may call with their upstream routes and price versions), so a cache hit does no
database read. Freshness:

- every admitted request compares the key's generation in Redis (keys.changes bumps it after a
  key's transaction commits) inside the admission Lua call: a revocation or edit is seen by the
  next request on every process, with no window;
- a pub/sub listener drops changed keys from the cache at once, so refusal paths (expired,
  revoked, IP) see edits too, and the whole cache is dropped when that subscription reconnects;
- entries older than GATEWAY_KEY_CACHE_TTL are refreshed in the background (deployment status,
  grants and prices, which do not bump a key's generation).

Credentials are parsed in gateway/credentials.py.
"""

from __future__ import annotations

import asyncio
import logging
import time

from django.conf import settings

from deployments import changes as deployment_changes
from gateway.keyload import load_key
from gateway.routes import KeyEntry
from keys.changes import CHANNEL, local_generations

log = logging.getLogger("gateway")


class KeyCache:
    """digest -> KeyEntry, with unknown digests remembered briefly and concurrent misses coalesced."""

    MISSING_TTL = 2.0
    MAX_MISSING = 10_000

    def __init__(self, run_db, *, ttl: float):
        self.run_db = run_db  # async callable running a sync function on the DB thread
        self.ttl = ttl
        self.entries: dict[str, KeyEntry] = {}
        self.by_id: dict[int, set[str]] = {}
        self.by_deployment: dict[int, set[str]] = {}
        self.missing: dict[str, float] = {}
        self.inflight: dict[str, asyncio.Future] = {}

    def holds(self, digest: str) -> bool:
        """Whether get() can answer without a database lookup of its own: a cached key, a digest
        recently unknown, or one whose lookup is in flight (the caller joins it)."""
        if digest in self.entries or digest in self.inflight:
            return True
        expiry = self.missing.get(digest)
        return expiry is not None and expiry > time.monotonic()

    async def get(self, digest: str, *, claim=None) -> KeyEntry | None:
        """The entry, or None for an unknown key. `claim`: an async callable the request that
        starts a database lookup runs first (raising refuses it, and the requests that joined it)."""
        entry = self.entries.get(digest)
        if entry is not None:
            if not settings.REDIS_URL and local_generations.get(entry.api_key_id, 0) != entry.generation:
                self.drop(entry.api_key_id)
            else:
                if time.monotonic() - entry.loaded_at > self.ttl and not entry.refreshing:
                    entry.refreshing = True
                    asyncio.get_running_loop().create_task(self._refresh(digest))
                return entry
        expiry = self.missing.get(digest)
        if expiry is not None:
            if expiry > time.monotonic():
                return None
            del self.missing[digest]
        return await self.load(digest, claim=claim)

    async def load(self, digest: str, *, claim=None) -> KeyEntry | None:
        pending = self.inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self.inflight[digest] = future
        try:
            if claim is not None:
                await claim()
            entry = await self.run_db(load_key, digest)
            self._store(digest, entry)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it
            raise
        finally:
            del self.inflight[digest]

    def _store(self, digest: str, entry: KeyEntry | None) -> None:
        if entry is None:
            if len(self.missing) >= self.MAX_MISSING:
                self.missing.clear()
            self.missing[digest] = time.monotonic() + self.MISSING_TTL
            self.entries.pop(digest, None)
            return
        self.entries[digest] = entry
        self.by_id.setdefault(entry.api_key_id, set()).add(digest)
        for route in entry.by_deployment.values():
            self.by_deployment.setdefault(route.deployment_id, set()).add(digest)

    async def _refresh(self, digest: str) -> None:
        try:
            await self.load(digest)
        except Exception as exc:
            # The database may be away: the cached copy keeps serving (its generation is still
            # checked at every admission), and the next refresh is one TTL later.
            log.warning("background refresh of a cached key failed (%s); keeping the cached copy", type(exc).__name__)
            entry = self.entries.get(digest)
            if entry is not None:
                entry.refreshing = False
                entry.loaded_at = time.monotonic()

    def drop_digest(self, digest: str) -> None:
        entry = self.entries.pop(digest, None)
        if entry is not None:
            self.by_id.get(entry.api_key_id, set()).discard(digest)

    def drop(self, api_key_id: int) -> None:
        for digest in self.by_id.pop(api_key_id, ()):
            self.entries.pop(digest, None)

    def drop_deployment(self, deployment_id: int) -> None:
        for digest in self.by_deployment.pop(deployment_id, ()):
            self.entries.pop(digest, None)

    def clear(self) -> None:
        self.entries.clear()
        self.by_id.clear()
        self.by_deployment.clear()
        self.missing.clear()


async def listen_for_changes(redis, cache: KeyCache, balancer=None) -> None:
    """Drop changed keys and deployments from the cache as keys.changes / deployments.changes
    announce them, and pass replica probe results to the balancer (runs for the process's life)."""
    health_channels = (deployment_changes.HEALTH_CHANNEL, deployment_changes.HEALTH_CHANNEL.encode())
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL, deployment_changes.CHANNEL, deployment_changes.HEALTH_CHANNEL)
            # Anything may have changed while we were not subscribed.
            cache.clear()
            if balancer is not None:
                balancer.forget_probes()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                channel = message.get("channel")
                if channel in health_channels:
                    _health_message(balancer, message.get("data"))
                    continue
                try:
                    changed = int(message["data"])
                except (TypeError, ValueError):
                    cache.clear()
                    continue
                if channel in (CHANNEL, CHANNEL.encode()):
                    cache.drop(changed)
                else:
                    cache.drop_deployment(changed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost: retry, the admission check still holds meanwhile
            log.warning("change subscription lost (%s); retrying", type(exc).__name__)
            await asyncio.sleep(0.5)
        finally:
            try:
                await pubsub.aclose()
            except Exception:
                pass


def _health_message(balancer, data) -> None:
    if balancer is None:
        return
    try:
        replica_id, up, uid = (data.decode() if isinstance(data, bytes) else str(data)).split(":")
        balancer.probed(int(replica_id), uid, up == "1")
    except ValueError:
        log.warning("ignored a malformed replica health message")
