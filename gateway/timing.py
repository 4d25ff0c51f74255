"""Where a request's time goes: the gateway's own stages vs the upstream's, per request.

Each request carries one `Timing`. `mark(stage)` closes the stage that ran since the previous
mark (perf_counter, a vDSO call: no syscall), so the stages add up to the request's wall time:

    auth           credential, key cache, expiry, IP allowlist
    parse          body read, JSON parse, the shape's validation
    admission      resolve the model, count prompt tokens, the Redis admission script, the cap
    upstream_head  from handing the request to the balancer to the upstream's response head
    upstream_body  reading the upstream's body (non-streamed); relaying the stream (streamed)
    answer         the answer's JSON parse and translation into the client's shape
    metering       the usage row, the settlement and (when awaited before the answer) the commit
    send           handing the response to the server (uvicorn writes it to the socket)

`upstream` is upstream_head + upstream_body; everything else is the gateway's own time. It is
published on every response as `Server-Timing: gateway;dur=…, upstream;dur=…` (milliseconds,
what is known when the head is sent) and as the histogram
gatehouse_gateway_overhead_seconds{endpoint}; the access log line carries both, and with
GATEWAY_STAGE_TIMING the per-stage split (wall and this thread's CPU time) for bench/gateway.py.
"""

from __future__ import annotations

from time import perf_counter, thread_time

UPSTREAM_STAGES = ("upstream_head", "upstream_body")


class Timing:
    __slots__ = ("origin", "last", "stages", "cpu", "last_cpu", "upstream", "finished")

    def __init__(self, cpu: bool = False):
        self.origin = self.last = perf_counter()
        self.stages: dict[str, float] = {}
        self.upstream = 0.0
        self.finished: float | None = None  # when the response was complete (the overhead's end)
        self.cpu: dict[str, float] | None = {} if cpu else None
        self.last_cpu = thread_time() if cpu else 0.0

    def mark(self, stage: str, now: float | None = None) -> float:
        """Close `stage` at `now` (default: now): the time since the previous mark is its."""
        if now is None:
            now = perf_counter()
        spent = now - self.last
        self.stages[stage] = self.stages.get(stage, 0.0) + spent
        if stage in UPSTREAM_STAGES:
            self.upstream += spent
        self.last = now
        if self.cpu is not None:
            cpu = thread_time()
            self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self.last_cpu
            self.last_cpu = cpu
        return now

    def gateway_seconds(self) -> float:
        """The gateway's own time so far (or up to the end of the response)."""
        end = self.finished if self.finished is not None else self.last
        return max(0.0, end - self.origin - self.upstream)

    def header(self) -> tuple[bytes, bytes]:
        """The Server-Timing header for what is known now (milliseconds, two decimals)."""
        gateway = (perf_counter() - self.origin - self.upstream) * 1000
        return (b"server-timing", b"gateway;dur=%.2f, upstream;dur=%.2f" % (max(0.0, gateway), self.upstream * 1000))

    def stage_ms(self) -> dict[str, float]:
        return {stage: round(seconds * 1000, 3) for stage, seconds in self.stages.items()}

    def cpu_ms(self) -> dict[str, float] | None:
        if self.cpu is None:
            return None
        return {stage: round(seconds * 1000, 3) for stage, seconds in self.cpu.items()}
