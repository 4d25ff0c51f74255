"""Per-replica concurrency caps and the fair queue in front of a full deployment.

A replica with `max_concurrent` takes at most that many requests at once across every gateway
process: each request holds a lease in one Redis sorted set per replica (member = lease id, score
= expiry). One Lua call takes a lease on the first replica, in the balancer's order of
preference, that has room; releasing removes the lease without waiting for the reply; each
process renews its live leases every LEASE_RENEW_SECONDS, so the leases of a process that died
expire within LEASE_TTL_SECONDS instead of holding a slot for ever. Without Redis (the embedded
default, one process) the balancer's own in-flight counts are the caps.

When every replica is full the request waits in its deployment's queue (per process, bounded by
the deployment's queue_max_waiting, for at most its queue_timeout_seconds). One dispatcher per
queue asks for slots (at once when a request of this process ends, and every POLL_SECONDS for
slots freed elsewhere); the same Lua call that takes a slot gives it to the workspace whose
virtual clock is earliest (weighted fair queueing on admissions: each admission costs
ADMISSION_COST_MS ÷ the workspace's priority), with the clocks in Redis, so sub-workspaces take
turns across every gateway process and one team's burst cannot starve another. Admissions that
found a free slot are charged too (up to UNQUEUED_LEAD_MS ahead of now): a burst that filled the
deployment has used turns already, so the other sub-workspace goes first once it queues.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque

log = logging.getLogger("gateway")

LEASE_TTL_SECONDS = 30
LEASE_RENEW_SECONDS = 10
POLL_SECONDS = 0.025
UNCAPPED = 1 << 30

ACQUIRE_LUA = """
-- KEYS: a lease set per candidate replica, most preferred first, then the deployment's fair-share
--       clocks (hash: workspace -> virtual finish time)
-- ARGV: now_ms, expiry_ms, lease id, n candidates, their caps, then the workspace, its admission
--       cost and the most its clock may run ahead of now through admissions that did not queue
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[4])
for i = 1, n do
  local key = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) < tonumber(ARGV[4 + i]) then
    redis.call('ZADD', key, ARGV[2], ARGV[3])
    redis.call('PEXPIRE', key, 2 * (tonumber(ARGV[2]) - now))
    local clocks, workspace = KEYS[n + 1], ARGV[5 + n]
    local clock = math.max(tonumber(redis.call('HGET', clocks, workspace) or '0'), now)
    local charged = math.max(clock, math.min(clock + tonumber(ARGV[6 + n]), now + tonumber(ARGV[7 + n])))
    if charged > clock then
      redis.call('HSET', clocks, workspace, charged)
      redis.call('PEXPIRE', clocks, 3600000)
    end
    return i
  end
end
return 0
"""

RELEASE_LUA = "return redis.call('ZREM', KEYS[1], ARGV[1])"

# Every admission moves the workspace's virtual clock this far (÷ priority).
ADMISSION_COST_MS = 1000
# An admission that did not queue (a slot was free) charges the clock too, so the requests a
# burst already has in flight count against its turns once the deployment fills up; but only up
# to this far ahead of now, so a sub-workspace that had the deployment to itself for an hour is
# not made to wait behind every newcomer for as long.
UNQUEUED_LEAD_MS = 10 * ADMISSION_COST_MS

ACQUIRE_FAIR_LUA = """
-- KEYS: a lease set per candidate replica (most preferred first), the deployment's fair-share
--       clocks (hash: workspace -> virtual finish time), its waiting set (zset: "ws:process" -> expiry)
-- ARGV: now_ms, expiry_ms, lease id, n candidates, their caps, process id, then workspace id /
--       priority pairs of the workspaces waiting in this process
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[4])
local clocks, waiting = KEYS[n + 1], KEYS[n + 2]
local me = ARGV[5 + n]
-- Publish who waits here (and forget who no longer does); drop other processes' stale entries.
local mine = {}
for j = 6 + n, #ARGV, 2 do mine[ARGV[j] .. ':' .. me] = true end
for _, member in ipairs(redis.call('ZRANGE', waiting, 0, -1)) do
  if string.sub(member, -string.len(me) - 1) == ':' .. me and not mine[member] then redis.call('ZREM', waiting, member) end
end
for member, _ in pairs(mine) do redis.call('ZADD', waiting, now + 2000, member) end
redis.call('ZREMRANGEBYSCORE', waiting, '-inf', now)
redis.call('PEXPIRE', waiting, 60000)
local slot = 0
for i = 1, n do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if slot == 0 and redis.call('ZCARD', KEYS[i]) < tonumber(ARGV[4 + i]) then slot = i end
end
if slot == 0 then return {0, 0} end
-- The earliest virtual clock among the workspaces waiting anywhere; when that one waits only in
-- another process, the slot is left for that process.
local best, best_vft = nil, nil
for _, member in ipairs(redis.call('ZRANGE', waiting, 0, -1)) do
  local ws = string.match(member, '^([^:]+):')
  local vft = math.max(tonumber(redis.call('HGET', clocks, ws) or '0'), now)
  if best == nil or vft < best_vft then best, best_vft = ws, vft end
end
local chosen, priority = nil, nil
for j = 6 + n, #ARGV, 2 do
  if ARGV[j] == best then chosen, priority = ARGV[j], tonumber(ARGV[j + 1]) end
end
if chosen == nil then  -- a local workspace tied with the best one will do
  for j = 6 + n, #ARGV, 2 do
    local vft = math.max(tonumber(redis.call('HGET', clocks, ARGV[j]) or '0'), now)
    if vft <= best_vft then chosen, priority = ARGV[j], tonumber(ARGV[j + 1]) end
  end
end
if chosen == nil then return {0, 0} end
best = chosen
best_vft = math.max(tonumber(redis.call('HGET', clocks, best) or '0'), now)
redis.call('HSET', clocks, best, best_vft + math.floor(ADMISSION_COST / priority))
redis.call('PEXPIRE', clocks, 3600000)
redis.call('ZADD', KEYS[slot], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[slot], 2 * (tonumber(ARGV[2]) - now))
return {slot, tonumber(best)}
""".replace("ADMISSION_COST", str(ADMISSION_COST_MS))

LEAVE_LUA = """
-- KEYS: the waiting set; ARGV: process id. Nobody waits in this process any more.
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, -string.len(ARGV[1]) - 1) == ':' .. ARGV[1] then redis.call('ZREM', KEYS[1], member) end
end
return 1
"""

PROCESS_ID = os.urandom(6).hex()  # names this process's entries in the waiting sets

RENEW_LUA = """
-- KEYS: lease sets; ARGV: expiry_ms, key ttl_ms, then the lease id held in each
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', ARGV[1], ARGV[2 + i])
  redis.call('PEXPIRE', key, ARGV[2])
end
return #KEYS
"""


def lease_key(replica) -> str:
    return f"gatehouse:replica:{replica.uid}:leases"


class CapacityUnavailable(Exception):
    pass


class RedisCapacity:
    """Global caps: a lease per request in Redis (gateway.resp.PipelinedRedis)."""

    def __init__(self, redis):
        self.redis = redis
        self.held: dict[str, str] = {}  # lease id -> lease set key, for renewal
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._renew())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def acquire(self, candidates: list, lease_id: str, *, deployment_key: str, workspace_id: int, priority: int):
        """The first candidate (replica, cap) with room, leased and charged to the workspace's
        fair-share clock; None when all are full."""
        now = int(time.time() * 1000)
        keys = [lease_key(replica) for replica, _ in candidates]
        try:
            index = await self.redis.evalsha(
                ACQUIRE_LUA,
                [*keys, f"gatehouse:fair:{deployment_key}"],
                [
                    now,
                    now + LEASE_TTL_SECONDS * 1000,
                    lease_id,
                    len(candidates),
                    *[cap or UNCAPPED for _, cap in candidates],
                    workspace_id,
                    ADMISSION_COST_MS // max(1, priority),
                    UNQUEUED_LEAD_MS,
                ],
            )
        except Exception as exc:
            raise CapacityUnavailable(type(exc).__name__) from exc
        if not index:
            return None
        self.held[lease_id] = keys[int(index) - 1]
        return candidates[int(index) - 1][0]

    async def acquire_fair(self, candidates: list, lease_id: str, contenders: list, deployment_key: str):
        """A slot on the first candidate with room, and which contending workspace gets it: (replica, workspace id) or None."""
        now = int(time.time() * 1000)
        keys = [lease_key(replica) for replica, _ in candidates]
        args = [now, now + LEASE_TTL_SECONDS * 1000, lease_id, len(candidates), *[cap or UNCAPPED for _, cap in candidates], PROCESS_ID]
        for workspace_id, priority in contenders:
            args += [workspace_id, max(1, priority)]
        try:
            index, workspace_id = await self.redis.evalsha(
                ACQUIRE_FAIR_LUA, [*keys, f"gatehouse:fair:{deployment_key}", f"gatehouse:waiting:{deployment_key}"], args
            )
        except Exception as exc:
            raise CapacityUnavailable(type(exc).__name__) from exc
        if not index:
            return None
        self.held[lease_id] = keys[int(index) - 1]
        return candidates[int(index) - 1][0], int(workspace_id)

    def leave(self, deployment_key: str) -> None:
        """Nobody of this process waits for the deployment any more: stop holding other processes back."""
        self.redis.fire(LEAVE_LUA, [f"gatehouse:waiting:{deployment_key}"], [PROCESS_ID])

    def release(self, lease_id: str, then=None) -> None:
        """Give the slot back without waiting; `then()` runs once Redis has it (to wake this
        process's next waiter, which would otherwise ask before the slot is free)."""
        key = self.held.pop(lease_id, None)
        if key is None:
            return
        task = asyncio.ensure_future(self.redis.evalsha(RELEASE_LUA, [key], [lease_id]))
        task.add_done_callback(lambda done: _released(done, then))

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_SECONDS)
            if not self.held:
                continue
            held = list(self.held.items())
            try:
                await self.redis.evalsha(
                    RENEW_LUA,
                    [key for _, key in held],
                    [int(time.time() * 1000) + LEASE_TTL_SECONDS * 1000, 2 * LEASE_TTL_SECONDS * 1000, *[lease for lease, _ in held]],
                )
            except Exception as exc:
                log.warning("renewing replica leases failed: %s", type(exc).__name__)


class LocalCapacity:
    """One process: a lease per request, counted in memory.

    The leases, not the balancer's in-flight counts, are the caps: the queue's dispatcher may
    grant several slots before the first waiter it woke has run (and counted itself in flight)."""

    def __init__(self, balancer):
        self.balancer = balancer
        self.clocks: dict[str, dict[int, float]] = {}
        self.leases: dict[str, int] = {}  # lease id -> replica id
        self.held: dict[int, int] = {}  # replica id -> leases

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def acquire(self, candidates: list, lease_id: str, *, deployment_key: str, workspace_id: int, priority: int):
        replica = self._take(candidates, lease_id)
        if replica is not None:
            now = time.monotonic() * 1000
            clocks = self.clocks.setdefault(deployment_key, {})
            clock = max(clocks.get(workspace_id, 0.0), now)
            clocks[workspace_id] = max(clock, min(clock + ADMISSION_COST_MS / max(1, priority), now + UNQUEUED_LEAD_MS))
        return replica

    def _take(self, candidates: list, lease_id: str):
        for replica, cap in candidates:
            if cap is None or self.held.get(replica.id, 0) < cap:
                self.leases[lease_id] = replica.id
                self.held[replica.id] = self.held.get(replica.id, 0) + 1
                return replica
        return None

    async def acquire_fair(self, candidates: list, lease_id: str, contenders: list, deployment_key: str):
        replica = self._take(candidates, lease_id)
        if replica is None:
            return None
        now = time.monotonic() * 1000
        clocks = self.clocks.setdefault(deployment_key, {})
        workspace_id, priority = min(contenders, key=lambda c: max(clocks.get(c[0], 0.0), now))
        clocks[workspace_id] = max(clocks.get(workspace_id, 0.0), now) + ADMISSION_COST_MS / max(1, priority)
        return replica, workspace_id

    def leave(self, deployment_key: str) -> None:
        pass

    def release(self, lease_id: str, then=None) -> None:
        replica_id = self.leases.pop(lease_id, None)
        if replica_id is not None:
            self.held[replica_id] -= 1
        if then is not None:
            then()


def _released(task: asyncio.Future, then) -> None:
    if not task.cancelled() and task.exception() is not None:
        # The lease expires by itself within LEASE_TTL_SECONDS.
        log.warning("releasing a replica lease failed: %s", type(task.exception()).__name__)
    if then is not None:
        then()


class QueueFull(Exception):
    pass


class QueueTimeout(Exception):
    pass


class FairQueue:
    """Requests of one deployment in one process waiting for a slot.

    A dispatcher task (alive while anyone waits) asks for a slot on behalf of every workspace
    with waiters here; the capacity's `acquire_fair` decides which workspace gets it: the one
    with the earliest virtual finish time (each admission moves a workspace's clock by
    ADMISSION_COST_MS / priority, and an idle workspace starts from now). With Redis those
    clocks are shared by every gateway process, so the round robin is global. Within a
    workspace, first come first served.
    """

    def __init__(self, capacity, deployment_key: str):
        self.capacity = capacity
        self.deployment_key = deployment_key
        self.by_workspace: dict[int, deque] = {}
        self.priorities: dict[int, int] = {}
        self.size = 0
        self.candidates = None  # callable -> [(replica, cap)], the latest waiter's view of the replicas
        self.wake = asyncio.Event()
        self.dispatcher: asyncio.Task | None = None

    def notify(self) -> None:
        self.wake.set()

    async def wait(self, *, workspace_id: int, priority: int, limit: int, deadline: float, candidates):
        """Wait for a slot: (replica, lease id), or QueueFull / QueueTimeout."""
        if self.size >= limit:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self.by_workspace.setdefault(workspace_id, deque()).append(future)
        self.priorities[workspace_id] = priority
        self.size += 1
        self.candidates = candidates
        if self.dispatcher is None or self.dispatcher.done():
            self.dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            if future.done() and not future.cancelled():  # granted at the last moment: keep it
                return future.result()
            raise QueueTimeout from None
        except BaseException:
            # Cancelled (the client left) just as a slot was granted: give it back.
            if future.done() and not future.cancelled():
                self.capacity.release(future.result()[1], then=self.notify)
            raise
        finally:
            if not future.done():
                future.cancel()
            self._forget(workspace_id, future)

    def _forget(self, workspace_id: int, future) -> None:
        waiters = self.by_workspace.get(workspace_id)
        if waiters is None:
            return
        try:
            waiters.remove(future)
            self.size -= 1
        except ValueError:
            pass
        if not waiters:
            del self.by_workspace[workspace_id]

    async def _dispatch(self) -> None:
        try:
            await self._dispatch_loop()
        finally:
            self.capacity.leave(self.deployment_key)

    async def _dispatch_loop(self) -> None:
        serial = 0
        while self.by_workspace:
            # Drop waiters that gave up (timed out, client left).
            for workspace_id in list(self.by_workspace):
                waiters = self.by_workspace[workspace_id]
                while waiters and waiters[0].done():
                    waiters.popleft()
                    self.size -= 1
                if not waiters:
                    del self.by_workspace[workspace_id]
            if not self.by_workspace:
                return
            candidates = self.candidates() if self.candidates is not None else []
            granted = None
            if candidates:
                serial += 1
                lease_id = f"q{id(self):x}:{time.monotonic_ns()}:{serial}"
                contenders = [(ws, self.priorities.get(ws, 1)) for ws in self.by_workspace]
                try:
                    granted = await self.capacity.acquire_fair(candidates, lease_id, contenders, self.deployment_key)
                except Exception as exc:
                    log.warning("queued requests could not ask for a slot: %s", type(exc).__name__)
                    granted = None
            if granted is not None:
                replica, workspace_id = granted
                waiters = self.by_workspace.get(workspace_id)
                while waiters and waiters[0].done():
                    waiters.popleft()
                    self.size -= 1
                if waiters:
                    waiters.popleft().set_result((replica, lease_id))
                    self.size -= 1
                    if not waiters:
                        del self.by_workspace[workspace_id]
                else:  # that workspace's waiter left meanwhile: give the slot back
                    self.capacity.release(lease_id)
                continue  # maybe another slot is free right away
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), POLL_SECONDS)
            except TimeoutError:
                pass
