"""Which replica of a deployment gets a request, and what happens when one fails.

A route to an endpoint deployment carries its enabled replicas (gateway.keyload loads them with the
key). Per gateway process the Balancer keeps, for each replica, the requests in flight and its
health:

- **Choice**: weighted least-in-flight. Among the healthy replicas, those with the fewest
  requests in flight per unit of weight (within one request per unit of weight of the least
  busy) are the candidates, and smooth weighted round robin picks among them: at low load
  traffic splits exactly by weight, and a replica that piles up requests (slow, stuck on long
  streams) is skipped until it catches up. In-flight counts are per process: see docs/GATEWAY.md for why that is enough.
- **Passive ejection**: a connect error, a timeout or a 5xx from a replica ejects it for a
  cooldown (GATEWAY_EJECT_SECONDS) that doubles on each consecutive failure up to
  GATEWAY_EJECT_MAX_SECONDS; a success resets the count. A successful worker probe
  (deployments.health → deployments.changes.replica_probed, fanned out over Redis) ends an
  ejection at once; a failed probe takes the replica out until a probe succeeds.
- **Panic**: when every replica is out, the caller may use a fallback deployment; without one,
  the replica whose ejection ends first is tried anyway (a failing request beats a certain 503).

UpstreamPool.send does one upstream exchange with at most one retry on another replica (or the
fallback) when the first fails before anything reached the client: a connect error, a reset
before the response head (or, for a non-streamed call, before its body was read), or an
upstream 502/503. Never a 4xx, never once a stream has started (the caller only gets the
response after its head was accepted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway import metrics
from gateway.capacity import FairQueue, LocalCapacity, QueueFull, QueueTimeout
from gateway.upstream import UpstreamTimeout

RETRY_STATUSES = (502, 503)
# A retry needs at least this much of the request's timeout left to be worth starting.
MIN_RETRY_SECONDS = 0.5
# How much busier (requests in flight per unit of weight) than the least busy replica a replica
# may be and still take its weighted turn.
LOAD_SLACK = 1.0


@dataclass(slots=True, frozen=True)
class Replica:
    """One enabled server of a deployment, as loaded with a key (gateway.keyload.load_key)."""

    id: int
    uid: str  # the public id: probe messages name both, so a stray message for another database's replica 7 is ignored
    base_url: str
    auth: bytes | None = field(repr=False)  # the Authorization header value, precomputed
    weight: int = 1
    max_concurrent: int | None = None
    probed_down: bool = False  # the worker's last probe when the key was loaded
    label: str = ""  # host:port, for metrics


class ReplicaState:
    __slots__ = ("uid", "inflight", "current", "failures", "ejected_until", "probe_up", "ejections")

    def __init__(self, uid: str) -> None:
        self.uid = uid
        self.inflight = 0
        self.current = 0  # smooth weighted round robin
        self.failures = 0  # consecutive
        self.ejected_until = 0.0
        self.probe_up: bool | None = None  # the latest probe heard over the fan-out; None: use the loaded status
        self.ejections = 0


class Balancer:
    def __init__(self, *, eject_seconds: float, eject_max_seconds: float, clock=time.monotonic):
        self.eject_seconds = eject_seconds
        self.eject_max_seconds = eject_max_seconds
        self.clock = clock
        self.states: dict[int, ReplicaState] = {}

    def state(self, replica: Replica) -> ReplicaState:
        state = self.states.get(replica.id)
        if state is None or state.uid != replica.uid:
            state = self.states[replica.id] = ReplicaState(replica.uid)
        return state

    def healthy(self, replica: Replica, now: float) -> bool:
        state = self.state(replica)
        if state.ejected_until > now:
            return False
        return state.probe_up if state.probe_up is not None else not replica.probed_down

    def pick(self, replicas: tuple[Replica, ...], *, exclude: int | None = None) -> Replica | None:
        """A healthy replica by weight among the least busy; None when none is healthy.

        Load = requests in flight per unit of weight. Candidates are the healthy replicas within
        LOAD_SLACK of the least loaded one; smooth weighted round robin chooses among them. At
        low concurrency every replica is a candidate and traffic splits exactly by weight; a
        replica that piles up requests (slow, or a long stream) drops out until it catches up.
        """
        now = self.clock()
        healthy: list[tuple[Replica, ReplicaState, float]] = []
        least = None
        for replica in replicas:
            if replica.id == exclude or not self.healthy(replica, now):
                continue
            state = self.states[replica.id]  # made by healthy()
            load = state.inflight / replica.weight
            healthy.append((replica, state, load))
            if least is None or load < least:
                least = load
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0][0]
        total, chosen = 0, None
        for replica, state, load in healthy:
            if load > least + LOAD_SLACK:
                continue
            state.current += replica.weight
            total += replica.weight
            if chosen is None or state.current > chosen[1].current:
                chosen = (replica, state)
        chosen[1].current -= total
        return chosen[0]

    def panic_pick(self, replicas: tuple[Replica, ...], *, exclude: int | None = None) -> Replica | None:
        """Every replica is out: the one whose ejection ends first (probed-down ones last)."""
        others = [r for r in replicas if r.id != exclude]
        if not others:
            return None

        def order(replica: Replica) -> tuple:
            state = self.state(replica)
            down = state.probe_up is False or (state.probe_up is None and replica.probed_down)
            return (down, state.ejected_until, state.inflight / replica.weight)

        return min(others, key=order)

    def acquire(self, replica: Replica) -> None:
        self.state(replica).inflight += 1
        metrics.REPLICA_INFLIGHT.labels(replica.label).inc()

    def release(self, replica: Replica, *, ok: bool | None) -> None:
        """End of one exchange: ok=True resets the failure count, False ejects, None (a 4xx, the client left) neither."""
        state = self.state(replica)
        state.inflight -= 1
        metrics.REPLICA_INFLIGHT.labels(replica.label).dec()
        metrics.REPLICA_REQUESTS.labels(replica.label, "ok" if ok else "failed" if ok is False else "other").inc()
        if ok:
            state.failures = 0
        elif ok is False:
            self.eject(replica)

    def eject(self, replica: Replica) -> None:
        state = self.state(replica)
        state.failures += 1
        cooldown = min(self.eject_seconds * 2 ** (state.failures - 1), self.eject_max_seconds)
        state.ejected_until = max(state.ejected_until, self.clock() + cooldown)
        state.ejections += 1
        metrics.REPLICA_EJECTIONS.labels(replica.label).inc()

    def probed(self, replica_id: int, uid: str, up: bool) -> None:
        """A worker probe's result (deployments.changes.replica_probed): up ends an ejection."""
        state = self.states.get(replica_id)
        if state is None or state.uid != uid:
            state = self.states[replica_id] = ReplicaState(uid)
        state.probe_up = up
        if up:
            state.ejected_until = 0.0
            state.failures = 0

    def snapshot(self) -> dict[str, tuple[int, int, bool]]:
        """uid -> (in flight, ejections so far, ejected now), for the console (deployments.live)."""
        now = self.clock()
        return {state.uid: (state.inflight, state.ejections, state.ejected_until > now) for state in self.states.values()}

    def forget_probes(self) -> None:
        """The fan-out was interrupted: fall back to the statuses loaded with the keys."""
        for state in self.states.values():
            state.probe_up = None


class Lease:
    """A replica held by one try: the balancer's in-flight count and, for a capped replica, a capacity lease."""

    __slots__ = ("replica", "lease_id", "deployment_id", "queued_ms")

    def __init__(self, replica: Replica, lease_id: str | None, deployment_id: int | None, queued_ms: int = 0):
        self.replica, self.lease_id, self.deployment_id = replica, lease_id, deployment_id
        self.queued_ms = queued_ms


class Answer:
    """An upstream response whose head was accepted (no more retries), and who gave it.

    For a non-streamed call (and any error answer) the body is already read and the replica
    released; for a stream the caller relays `response` and then calls `done(ok)` once."""

    __slots__ = ("response", "body", "route", "replica", "fallback", "retried", "queued_ms", "_pool", "_lease")

    def __init__(self, pool, response, body, lease: Lease | None, *, leased: bool):
        self.response, self.body = response, body
        self.replica = lease.replica if lease is not None else None
        self.route = None
        self.fallback = self.retried = False
        self.queued_ms = 0
        self._pool = pool
        self._lease = lease if leased else None

    @property
    def replica_id(self) -> int | None:
        return self.replica.id if self.replica is not None else None

    def done(self, ok: bool | None) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            self._pool.release(lease, ok=ok)


class UpstreamFailed(Exception):
    """No try got a response head; `error` is the last transport error."""

    def __init__(self, error: Exception, route, replica):
        super().__init__(str(error))
        self.error, self.route, self.replica = error, route, replica


class CapacityExceeded(Exception):
    """Every replica is at its cap and the queue is full or the wait ran out."""

    def __init__(self, route, *, queue_full: bool):
        super().__init__("queue full" if queue_full else "queue wait expired")
        self.route, self.queue_full = route, queue_full


class Ticket:
    """Who is asking, for the fair queue and the capacity leases."""

    __slots__ = ("request_id", "workspace_id", "priority")

    def __init__(self, request_id: str, workspace_id: int, priority: int = 1):
        self.request_id, self.workspace_id, self.priority = request_id, workspace_id, max(1, priority)


class UpstreamPool:
    """Sends one upstream exchange to a replica of the route (gateway.routes.Route.replicas), with at
    most one retry elsewhere. Routes without replicas (router, BYOK) go to their own base URL.
    Replicas with a cap (max_concurrent) are taken through gateway.capacity, queueing fairly
    when all are full."""

    def __init__(self, http, balancer: Balancer, capacity=None):
        self.http = http
        self.balancer = balancer
        self.capacity = capacity or LocalCapacity(balancer)
        self.queues: dict[int | None, object] = {}

    def choose(self, route, routes: dict, *, exclude: int | None = None):
        """(route, replica) for the next try, or None when a retry has nowhere else to go."""
        if not route.replicas:
            return None if exclude is not None else (route, None)
        replica = self.balancer.pick(route.replicas, exclude=exclude)
        if replica is not None:
            return route, replica
        fallback = routes.get(route.fallback) if route.fallback else None
        if fallback is not None and fallback.deployment_id != route.deployment_id:
            if not fallback.replicas:
                return fallback, None
            replica = self.balancer.pick(fallback.replicas)
            if replica is not None:
                return fallback, replica
        if exclude is not None:
            return None
        return route, self.balancer.panic_pick(route.replicas)

    async def take(self, route, routes: dict, ticket: Ticket, *, attempt: int, exclude: int | None, deadline: float):
        """(route, Lease or None) for one try; None when a retry has nowhere to go. The first try
        of a capped deployment queues when every replica is full (CapacityExceeded when it cannot)."""
        target = self.choose(route, routes, exclude=exclude)
        if target is None:
            return None
        target_route, replica = target
        if replica is None:
            return target_route, None
        if not target_route.capped:
            self.balancer.acquire(replica)
            return target_route, Lease(replica, None, target_route.deployment_id)
        lease_id = f"{ticket.request_id}:{attempt}"
        balancer = self.balancer

        def candidates(first=None) -> list:
            # The balancer's choice first, then the other healthy replicas, least busy first;
            # those this process alone already fills are not worth asking Redis about.
            now = balancer.clock()
            others = sorted(
                (r for r in target_route.replicas if r is not first and r.id != exclude and balancer.healthy(r, now)),
                key=lambda r: balancer.state(r).inflight / r.weight,
            )
            found = [first] if first is not None else []
            return [
                (r, r.max_concurrent)
                for r in [*found, *others]
                if r.max_concurrent is None or balancer.state(r).inflight < r.max_concurrent
            ]

        queue = self.queues.get(target_route.deployment_id)
        if attempt > 0 or queue is None or not queue.size:  # never ahead of requests already waiting
            ordered = candidates(replica)
            got = (
                await self.capacity.acquire(
                    ordered,
                    lease_id,
                    deployment_key=target_route.deployment_public_id or "",
                    workspace_id=ticket.workspace_id,
                    priority=ticket.priority,
                )
                if ordered
                else None
            )
            if got is not None:
                self.balancer.acquire(got)
                return target_route, Lease(got, lease_id, target_route.deployment_id)
        if attempt > 0:
            return None
        # Looked up again: another request may have made the queue while this one asked Redis.
        queue = self.queues.get(target_route.deployment_id)
        if queue is None:
            queue = self.queues[target_route.deployment_id] = FairQueue(self.capacity, target_route.deployment_public_id or "")
        queued_at = time.monotonic()
        try:
            got, lease_id = await queue.wait(
                workspace_id=ticket.workspace_id,
                priority=ticket.priority,
                limit=target_route.queue_max,
                deadline=min(deadline, queued_at + target_route.queue_timeout),
                candidates=candidates,
            )
        except QueueFull:
            raise CapacityExceeded(target_route, queue_full=True) from None
        except QueueTimeout:
            raise CapacityExceeded(target_route, queue_full=False) from None
        self.balancer.acquire(got)
        return target_route, Lease(got, lease_id, target_route.deployment_id, int((time.monotonic() - queued_at) * 1000))

    def release(self, lease: Lease, *, ok: bool | None) -> None:
        self.balancer.release(lease.replica, ok=ok)
        if lease.lease_id is not None:
            queue = self.queues.get(lease.deployment_id)
            self.capacity.release(lease.lease_id, then=queue.notify if queue is not None else None)

    async def send(self, route, routes: dict, ticket: Ticket, *, path: str, build, stream: bool, deadline: float) -> Answer:
        """`build(route)` → (headers, body) for the upstream. Raises UpstreamFailed or CapacityExceeded."""
        target = await self.take(route, routes, ticket, attempt=0, exclude=None, deadline=deadline)
        queued_ms = target[1].queued_ms if target[1] is not None else 0
        for attempt in range(2):
            target_route, lease = target
            replica = lease.replica if lease is not None else None
            headers, body = build(target_route)
            if replica is not None:
                headers = [h for h in headers if h[0] != b"authorization"]
                if replica.auth is not None:
                    headers.append((b"authorization", replica.auth))
                url = replica.base_url + path
            else:
                url = target_route.base_url + path
            timeout = max(0.001, deadline - time.monotonic())
            outcome = await self._try(url, lease, headers, body, stream=stream, timeout=timeout)
            fallback = target_route is not route
            if isinstance(outcome, Answer):
                outcome.route, outcome.fallback, outcome.retried = target_route, fallback, attempt == 1
                outcome.queued_ms = queued_ms
                return outcome
            error, retriable, answer = outcome
            if attempt == 0 and retriable and deadline - time.monotonic() > MIN_RETRY_SECONDS:
                following = await self.take(
                    route, routes, ticket, attempt=1, exclude=replica.id if replica is not None else -1, deadline=deadline
                )
                if following is not None:
                    metrics.REPLICA_RETRIES.labels(replica.label if replica is not None else "").inc()
                    target = following
                    continue
            if answer is not None:  # the upstream's own error answer: the caller maps its status
                answer.route, answer.fallback, answer.retried = target_route, fallback, attempt == 1
                return answer
            raise UpstreamFailed(error, target_route, replica)
        raise AssertionError("unreachable")

    async def _try(self, url: str, lease: Lease | None, headers, body: bytes, *, stream: bool, timeout: float):
        """An Answer, or (error, retriable, error answer or None) after releasing the replica."""
        released = lease is None
        try:
            try:
                response = await self.http.open(url, headers, body, timeout=timeout, connect_timeout=min(timeout, 10.0))
            except Exception as exc:
                if lease is not None:
                    self.release(lease, ok=False)
                    released = True
                # A timeout has used the request's time; anything else failed before the head.
                return exc, not isinstance(exc, UpstreamTimeout), None
            if stream and response.status == 200:
                released = True  # the caller relays it and calls Answer.done
                return Answer(self, response, None, lease, leased=True)
            try:
                data = await response.read()
            except Exception as exc:
                await response.aclose()
                if lease is not None:
                    self.release(lease, ok=False)
                    released = True
                # Non-streamed: nothing reached the client yet, so a reset mid-body may be retried.
                return exc, not stream and not isinstance(exc, UpstreamTimeout), None
            await response.aclose()
            status = response.status
            if lease is not None:
                self.release(lease, ok=True if status < 400 else False if status >= 500 else None)
                released = True
            answer = Answer(self, response, data, lease, leased=False)
            if status in RETRY_STATUSES:
                return None, True, answer
            return answer
        finally:
            if not released:
                # Cancelled (the client left) or a bug: neither healthy nor failed.
                self.release(lease, ok=None)
