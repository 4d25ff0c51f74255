"""Admission: reserve tokens against a key's TPM and yearly limit, settle to real usage, release on failure.

A request reserves its prompt tokens plus a completion cap per choice. It asks for "up to" a cap
(what the client asked, or GATEWAY_DEFAULT_MAX_TOKENS); the limiter grants min(asked, what the
limits leave after the prompt), and refuses only when that is below a small floor
(GATEWAY_MIN_COMPLETION_TOKENS, or less when the client asked for less). The gateway then sends
the upstream exactly the granted cap, so the reservation is an upper bound of the completion.

TPM is a sliding 60-second window kept as per-second buckets in one Redis hash per key. A
reservation is added to the current second's bucket only if the window's sum plus the
reservation stays within the limit; settling later moves that same bucket by (actual -
reserved). So, across any number of gateway processes, the tokens charged to any 60 s window
never exceed the limit by more than the prompt-count errors of the requests in it.

The yearly limit is a counter per key and calendar year (in the workspace's time zone), seeded
from the usage events in the database the first time it is needed (or after Redis lost it).

Both checks, the grant, the reservation, and the current generations of the key and of the
deployment (see keys.changes and deployments.changes) are one Lua script: one round trip,
atomic. Without REDIS_URL (the single-process embedded default) the same rules run in process
memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.conf import settings

from deployments import changes as deployment_changes
from gateway.tokenizer import estimate_prompt_tokens  # noqa: F401  (re-exported: shapes count while parsing)
from keys.changes import GENERATION_KEY, local_generations
from keys.counters import tpm_counter_key, yearly_counter_key

ADMIT = 0
TPM_REFUSED = 1
QUOTA_REFUSED = 2
NEEDS_SEED = 3

# Returns {generation, outcome, retry_after, deployment generation, granted cap per choice,
# tokens the refusing limit had left}.
ADMIT_LUA = """
local gen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local dgen = tonumber(redis.call('HGET', KEYS[4], ARGV[8]) or '0')
local now = tonumber(ARGV[2])
local prompt = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local yearly = tonumber(ARGV[5])
local asked = tonumber(ARGV[9])
local choices = tonumber(ARGV[10])
local floor = tonumber(ARGV[11])
local granted = asked
local need = prompt + floor * choices
if yearly > 0 then
  local used = redis.call('GET', KEYS[3])
  if not used then
    local seed = tonumber(ARGV[6])
    if seed < 0 then return {gen, 3, 0, dgen, 0, 0} end
    redis.call('SET', KEYS[3], seed, 'EX', ARGV[7])
    used = seed
  end
  local room = yearly - tonumber(used)
  if need > room then return {gen, 2, 0, dgen, 0, math.max(0, room)} end
  granted = math.min(granted, math.floor((room - prompt) / choices))
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
  local room = tpm - sum
  if need > room then
    local left = math.max(0, room)
    if need > tpm then return {gen, 1, 60, dgen, 0, left} end
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local freed = 0
    for _, bucket in ipairs(live) do
      freed = freed + bucket[2]
      if sum - freed + need <= tpm then return {gen, 1, math.max(1, bucket[1] + 60 - now), dgen, 0, left} end
    end
    return {gen, 1, 60, dgen, 0, left}
  end
  granted = math.min(granted, math.floor((room - prompt) / choices))
end
local reserved = prompt + granted * choices
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], reserved)
  redis.call('EXPIRE', KEYS[2], 120)
end
if yearly > 0 then redis.call('INCRBY', KEYS[3], reserved) end
return {gen, 0, 0, dgen, granted, 0}
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


CAP_FIELDS = ("max_tokens", "max_completion_tokens")
CAPPED_HEADER = b"x-gatehouse-max-tokens-capped"


class Admission:
    """What a request asks the limiter for: its prompt tokens and a completion cap per choice.

    When the key limits tokens (TPM or yearly) or its workspace has a blocking budget, the cap is
    what the client asked (or GATEWAY_DEFAULT_MAX_TOKENS), lowered by the limiter to what the
    limits leave, and it is sent upstream: the reservation then bounds what the answer may cost.
    """

    __slots__ = ("prompt", "asked", "completion", "choices", "floor", "capped")

    def __init__(self, *, prompt: int, asked: int | None, choices: int, capped: bool):
        self.prompt, self.asked, self.choices, self.capped = prompt, asked, choices, capped
        if capped:
            self.completion = asked if asked is not None else settings.GATEWAY_DEFAULT_MAX_TOKENS
            self.floor = min(settings.GATEWAY_MIN_COMPLETION_TOKENS, self.completion)
        else:
            # Nothing to protect: reserve what the client asked (the TPM page shows it), force no cap.
            self.completion, self.floor = asked or 0, 0

    @classmethod
    def of(cls, call, entry) -> Admission:
        """For a parsed call (gateway.shapes.Call) by a cached key (gateway.routes.KeyEntry)."""
        capped = bool(entry.tpm_limit or entry.yearly_limit or entry.budget_blocks)
        return cls(prompt=call.prompt_estimate, asked=call.completion_budget, choices=call.choices, capped=capped)

    def shown(self) -> dict:
        """The numbers a refusal states: what the request needs at least, and what it asked for."""
        return {"prompt": self.prompt, "floor": self.floor, "choices": self.choices, "asked": self.asked}

    def apply_cap(self, body: dict, cap_param: str | None, granted: int) -> bytes | None:
        """Put the granted cap in the upstream body: in the field(s) the client used, else the
        shape's own (`max_tokens` for chat). Returns the x-gatehouse-max-tokens-capped value when
        the cap is lower than the client asked, or the client asked none."""
        if cap_param is None or self.completion == 0:
            return None  # the call generates nothing
        fields = [name for name in CAP_FIELDS if body.get(name) is not None] or [cap_param]
        for name in fields:
            body[name] = granted
        if self.asked is None or granted < self.asked:
            return str(granted).encode()
        return None


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
    # Admitted: the completion cap per choice that was reserved (≤ what was asked).
    granted: int = 0
    # Refused: what the refusing limit had left (tokens), for the error message.
    remaining: int = 0


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
        prompt: int,
        tpm_limit: int | None,
        yearly_limit: int | None,
        completion: int = 0,
        choices: int = 1,
        floor: int = 0,
        seed: int = -1,
        deployment_id: int | None = None,
    ) -> Decision:
        """Reserve `prompt` + up to `completion` per choice (at least `floor` per choice, else refuse)."""
        now = int(time.time())
        tpm_key, yearly_key = _keys(public_id, year)
        floor = min(floor, completion)
        try:
            gen, outcome, extra, dgen, granted, remaining = await self.redis.evalsha(
                ADMIT_LUA,
                [GENERATION_KEY, tpm_key, yearly_key, deployment_changes.GENERATION_KEY],
                [
                    api_key_id,
                    now,
                    prompt,
                    tpm_limit or 0,
                    yearly_limit or 0,
                    seed,
                    _yearly_ttl(year),
                    deployment_id or 0,
                    completion,
                    choices,
                    floor,
                ],
            )
        except Exception as exc:
            raise LimiterUnavailable(str(type(exc).__name__)) from exc
        reservation = None
        if outcome == ADMIT:
            granted = int(granted)
            reservation = Reservation(tpm_key, yearly_key, now, prompt + granted * choices, bool(tpm_limit), bool(yearly_limit))
        return Decision(int(outcome), int(gen), int(extra), reservation, int(dgen), int(granted), int(remaining))

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
            lazy=True,  # rides the next admission's write (or goes out within resp.LAZY_FLUSH)
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
        prompt: int,
        tpm_limit: int | None,
        yearly_limit: int | None,
        completion: int = 0,
        choices: int = 1,
        floor: int = 0,
        seed: int = -1,
        deployment_id: int | None = None,
    ) -> Decision:
        # No await between the checks and the writes: atomic on the event loop.
        gen = local_generations.get(api_key_id, 0)
        dgen = deployment_changes.local_generations.get(deployment_id, 0) if deployment_id else 0
        now = int(time.time())
        tpm_key, yearly_key = _keys(public_id, year)
        need = prompt + min(floor, completion) * choices
        granted = completion
        if yearly_limit:
            used = self.yearly.get(yearly_key)
            if used is None:
                if seed < 0:
                    return Decision(NEEDS_SEED, gen, deployment_generation=dgen)
                used = self.yearly[yearly_key] = seed
            room = yearly_limit - used
            if need > room:
                return Decision(QUOTA_REFUSED, gen, deployment_generation=dgen, remaining=max(0, room))
            granted = min(granted, (room - prompt) // choices)
        if tpm_limit:
            buckets = self.buckets.setdefault(tpm_key, {})
            for second in [s for s in buckets if s < now - 59]:
                del buckets[second]
            total = sum(buckets.values())
            room = tpm_limit - total
            if need > room:
                retry = 60
                if need <= tpm_limit:
                    freed = 0
                    for second in sorted(buckets):
                        freed += buckets[second]
                        if total - freed + need <= tpm_limit:
                            retry = max(1, second + 60 - now)
                            break
                return Decision(TPM_REFUSED, gen, retry, deployment_generation=dgen, remaining=max(0, room))
            granted = min(granted, (room - prompt) // choices)
        reserved = prompt + granted * choices
        if tpm_limit:
            self.buckets[tpm_key][now] = self.buckets[tpm_key].get(now, 0) + reserved
        if yearly_limit:
            self.yearly[yearly_key] += reserved
        reservation = Reservation(tpm_key, yearly_key, now, reserved, bool(tpm_limit), bool(yearly_limit))
        return Decision(ADMIT, gen, 0, reservation, dgen, granted)

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
