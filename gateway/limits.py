"""Admission: reserve tokens against a key's TPM and yearly limit, settle to real usage, release on failure.

TPM is a sliding 60-second window kept as per-second buckets in one Redis hash per key. A
reservation adds its estimate (prompt estimate + max_tokens) to the current second's bucket
only if the window's sum plus the estimate stays within the limit; settling later moves that
same bucket by (actual - estimate). So, across any number of gateway processes, the tokens
charged to any 60 s window never exceed the limit by more than the estimate errors of the
requests in it.

The yearly limit is a counter per key and calendar year (in the workspace's time zone), seeded
from the usage events in the database the first time it is needed (or after Redis lost it).

Both checks, the reservation, and the current generations of the key and of the deployment (see
keys.changes and deployments.changes) are one Lua script: one round trip, atomic. Without REDIS_URL (the single-process embedded default) the
same rules run in process memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from deployments import changes as deployment_changes
from keys.changes import GENERATION_KEY, local_generations
from keys.counters import tpm_counter_key, yearly_counter_key

ADMIT = 0
TPM_REFUSED = 1
QUOTA_REFUSED = 2
NEEDS_SEED = 3

ADMIT_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local dgen = tonumber(redis.call('HGET', KEYS[4], ARGV[8]) or '0')
local now = tonumber(ARGV[2])
local est = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local yearly = tonumber(ARGV[5])
if yearly > 0 then
  local used = redis.call('GET', KEYS[3])
  if not used then
    local seed = tonumber(ARGV[6])
    if seed < 0 then return {gen, 3, 0, dgen} end
    redis.call('SET', KEYS[3], seed, 'EX', ARGV[7])
    used = seed
  end
  if tonumber(used) + est > yearly then return {gen, 2, 0, dgen} end
end
if tpm > 0 then
  local buckets = redis.call('HGETALL', KEYS[2])
  local oldest = now - 59
  local sum = 0
  local live = {}
  for i = 1, #buckets, 2 do
    local second = tonumber(buckets[i])
    if second < oldest then
      redis.call('HDEL', KEYS[2], buckets[i])
    else
      local amount = tonumber(buckets[i + 1])
      sum = sum + amount
      live[#live + 1] = {second, amount}
    end
  end
  if sum + est > tpm then
    if est > tpm then return {gen, 1, 60, dgen} end
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local freed = 0
    for _, bucket in ipairs(live) do
      freed = freed + bucket[2]
      if sum - freed + est <= tpm then return {gen, 1, math.max(1, bucket[1] + 60 - now), dgen} end
    end
    return {gen, 1, 60, dgen}
  end
  redis.call('HINCRBY', KEYS[2], ARGV[2], est)
  redis.call('EXPIRE', KEYS[2], 120)
end
if yearly > 0 then redis.call('INCRBY', KEYS[3], est) end
return {gen, 0, 0, dgen}
"""

# A settlement only touches buckets that still exist: a window that has moved on stays closed.
SETTLE_LUA = """
local delta = tonumber(ARGV[2])
if ARGV[3] == '1' and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('INCRBY', KEYS[2], delta)
end
return 1
"""


class LimiterUnavailable(Exception):
    pass


@dataclass(slots=True)
class Reservation:
    """What a request holds between admission and settlement."""

    tpm_key: str
    yearly_key: str
    second: int
    estimate: int
    has_tpm: bool
    has_yearly: bool
    settled: bool = False


@dataclass(slots=True)
class Decision:
    outcome: int
    generation: int
    retry_after: int = 0
    reservation: Reservation | None = None
    deployment_generation: int = 0


def _keys(public_id: str, year: int) -> tuple[str, str]:
    # Named in keys.counters: the usage pages read the same counters.
    return tpm_counter_key(public_id), yearly_counter_key(public_id, year)


def _yearly_ttl(year: int) -> int:
    # Keep a year's counter into the next year, long enough for late settlements and reports.
    return 400 * 86400


class RedisLimiter:
    def __init__(self, redis):
        self.redis = redis  # gateway.resp.PipelinedRedis

    async def admit(
        self,
        *,
        api_key_id: int,
        public_id: str,
        year: int,
        estimate: int,
        tpm_limit: int | None,
        yearly_limit: int | None,
        seed: int = -1,
        deployment_id: int | None = None,
    ) -> Decision:
        now = int(time.time())
        tpm_key, yearly_key = _keys(public_id, year)
        try:
            gen, outcome, extra, dgen = await self.redis.evalsha(
                ADMIT_LUA,
                [GENERATION_KEY, tpm_key, yearly_key, deployment_changes.GENERATION_KEY],
                [api_key_id, now, estimate, tpm_limit or 0, yearly_limit or 0, seed, _yearly_ttl(year), deployment_id or 0],
            )
        except Exception as exc:
            raise LimiterUnavailable(str(type(exc).__name__)) from exc
        reservation = None
        if outcome == ADMIT:
            reservation = Reservation(tpm_key, yearly_key, now, estimate, bool(tpm_limit), bool(yearly_limit))
        return Decision(int(outcome), int(gen), int(extra), reservation, int(dgen))

    async def settle(self, reservation: Reservation, actual: int) -> None:
        """Move the reservation to the real usage (0 releases it). Idempotent per reservation.

        Sent without waiting for the reply (it rides in the next pipelined write): admission is
        decided by reservations, so a settlement a moment later only returns tokens a moment later.
        """
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual - reservation.estimate
        if delta == 0 or not (reservation.has_tpm or reservation.has_yearly):
            return
        self.redis.fire(
            SETTLE_LUA,
            [reservation.tpm_key, reservation.yearly_key],
            [reservation.second, delta, int(reservation.has_tpm), int(reservation.has_yearly)],
        )


class LocalLimiter:
    """The same rules in process memory, for the single-process embedded default (no REDIS_URL)."""

    def __init__(self):
        self.buckets: dict[str, dict[int, int]] = {}
        self.yearly: dict[str, int] = {}

    async def admit(
        self,
        *,
        api_key_id: int,
        public_id: str,
        year: int,
        estimate: int,
        tpm_limit: int | None,
        yearly_limit: int | None,
        seed: int = -1,
        deployment_id: int | None = None,
    ) -> Decision:
        # No await between the checks and the writes: atomic on the event loop.
        gen = local_generations.get(api_key_id, 0)
        dgen = deployment_changes.local_generations.get(deployment_id, 0) if deployment_id else 0
        now = int(time.time())
        tpm_key, yearly_key = _keys(public_id, year)
        if yearly_limit:
            used = self.yearly.get(yearly_key)
            if used is None:
                if seed < 0:
                    return Decision(NEEDS_SEED, gen, deployment_generation=dgen)
                used = self.yearly[yearly_key] = seed
            if used + estimate > yearly_limit:
                return Decision(QUOTA_REFUSED, gen, deployment_generation=dgen)
        if tpm_limit:
            buckets = self.buckets.setdefault(tpm_key, {})
            for second in [s for s in buckets if s < now - 59]:
                del buckets[second]
            total = sum(buckets.values())
            if total + estimate > tpm_limit:
                retry = 60
                if estimate <= tpm_limit:
                    freed = 0
                    for second in sorted(buckets):
                        freed += buckets[second]
                        if total - freed + estimate <= tpm_limit:
                            retry = max(1, second + 60 - now)
                            break
                return Decision(TPM_REFUSED, gen, retry, deployment_generation=dgen)
            buckets[now] = buckets.get(now, 0) + estimate
        if yearly_limit:
            self.yearly[yearly_key] += estimate
        return Decision(ADMIT, gen, 0, Reservation(tpm_key, yearly_key, now, estimate, bool(tpm_limit), bool(yearly_limit)), dgen)

    async def settle(self, reservation: Reservation, actual: int) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        delta = actual - reservation.estimate
        if reservation.has_tpm:
            buckets = self.buckets.get(reservation.tpm_key, {})
            if reservation.second in buckets:
                buckets[reservation.second] += delta
        if reservation.has_yearly and reservation.yearly_key in self.yearly:
            self.yearly[reservation.yearly_key] += delta


def estimate_prompt_tokens(messages: list) -> int:
    """A cheap upper-leaning estimate: about one token per 3 characters plus per-message overhead."""
    chars = 0
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
            tool_calls = message.get("tool_calls")
            if tool_calls:
                chars += len(str(tool_calls))
    return chars // 3 + 4 * len(messages) + 1
