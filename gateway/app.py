"""The gateway: a lean raw-ASGI application (no Django request stack on the hot path).

console.asgi sends /v1/, /api/v2/ and /metrics here and everything else to Django. Per request:
parse the key (format + checksum, no I/O) → key from the in-process cache → expiry, IP allowlist
→ read and validate the body → resolve the model in the key's scope → reserve tokens (one Redis
Lua call, which also carries the key's generation) → proxy → settle the reservation and queue
the usage event → answer (with Server-Timing, gateway/timing.py) → await the event's commit.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
from django.conf import settings

from gateway import errors, metrics, tokenizer
from gateway.auth import KeyCache, listen_for_changes
from gateway.authlimit import AuthFailures
from gateway.balancer import Answer, Balancer, CapacityExceeded, Ticket, UpstreamFailed, UpstreamPool
from gateway.capacity import CapacityUnavailable, RedisCapacity
from gateway.credentials import parse_bearer
from gateway.errors import GatewayError
from gateway.limits import (
    CAPPED_HEADER,
    NEEDS_SEED,
    QUOTA_REFUSED,
    TPM_REFUSED,
    Admission,
    LimiterUnavailable,
    LocalLimiter,
    RedisLimiter,
    Reservation,
)
from gateway.metering import UsageWriter, event_row
from gateway.proxy import SseRelay, make_client, status_error, transport_error, upstream_call
from gateway.routes import KeyEntry, Route
from gateway.shapes import Call, Shape, completions, dashscope, embeddings, messages, rerank, responses, wrong_kind
from gateway.shapes import chat as chat_shape
from gateway.spool import Spool, database_identity
from gateway.timing import Timing
from lib.logsafe import loggable_path
from lib.net import ip_allowed, resolve_client_ip
from usage.selectors import tokens_used_in_year

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

V1_DEPLOYMENT_PATH = re.compile(r"^/v1/([0-9a-fA-F-]{36})/deployments/([0-9a-fA-F-]{36})/chat/completions/?$")
QUERY_KEY_HINTS = (b"gh_live_", b"api_key", b"apikey", b"api-key", b"access_token", b"appcode", b"key=", b"token=")
JSON_HEADERS = [(b"content-type", b"application/json")]
# POST paths and the API shape each speaks (gateway/shapes); all go through Gateway.handle.
SHAPES: dict[str, Shape] = {
    "/v1/chat/completions": chat_shape.SHAPE,
    "/api/v2/chat/completions": chat_shape.SHAPE,
    "/v1/embeddings": embeddings.SHAPE,
    "/v1/completions": completions.SHAPE,
    "/v1/rerank": rerank.SHAPE,
    "/v1/responses": responses.SHAPE,
    "/v1/messages": messages.SHAPE,
    "/api/v1/services/aigc/text-generation/generation": dashscope.SHAPE,
}
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]


_NOT_COUNTED = object()


class ClientGone(Exception):
    pass


class Exchange:
    """One request/response: tracks whether the response started, for errors and the access log."""

    __slots__ = (
        "send",
        "request_id",
        "status",
        "started",
        "model",
        "metric_model",
        "entry",
        "client_ip",
        "tokens",
        "response_started",
        "shape",
        "headers",
        "route",
        "asked_model",
        "endpoint",
        "refusal_reason",
        "metered",
        "timing",
        "pending_usage",
    )

    def __init__(self, send, request_id: str, timing: Timing):
        self.timing = timing
        self.send = send
        self.request_id = request_id
        self.status = 0
        self.started = time.time()
        self.model = ""
        self.metric_model = ""
        self.entry: KeyEntry | None = None
        self.client_ip: str | None = None
        self.tokens = 0
        self.response_started = False
        self.shape: Shape = chat_shape.SHAPE  # whose error body a failure gets
        self.headers: list[tuple[bytes, bytes]] = []  # added to every response (e.g. the cap header)
        # For the usage event of a refusal: what the request was for, as far as it got.
        self.route: Route | None = None
        self.asked_model = ""
        self.endpoint = ""  # when not the shape's (the models list)
        self.refusal_reason = ""  # recorded instead of the public error code (e.g. why a 401)
        self.metered = False  # a usage event was written (or attempted) for this request
        self.pending_usage: asyncio.Future | None = None  # its commit, when awaited after the answer

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.response_started = True
        await self.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, *self.headers, (b"x-request-id", self.request_id.encode()), self.timing.header()],
            }
        )

    async def respond(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        await self.send({"type": "http.response.body", "body": body})
        self.timing.finished = self.timing.mark("send")


class Gateway:
    def __init__(self):
        self.ready = False
        self._startup_lock: asyncio.Lock | None = None
        self.tasks: list[asyncio.Task] = []

    # ---- lifecycle -------------------------------------------------------------------------
    async def startup(self) -> None:
        if self.ready:
            return
        if self._startup_lock is None:
            self._startup_lock = asyncio.Lock()
        async with self._startup_lock:
            if self.ready:
                return
            self.db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-db", initializer=_count_orm_queries)
            self.cache = KeyCache(self.run_db, ttl=settings.GATEWAY_KEY_CACHE_TTL)
            self.http = make_client(kind=settings.GATEWAY_UPSTREAM_CLIENT, max_connections=settings.GATEWAY_UPSTREAM_CONNECTIONS)
            self.balancer = Balancer(eject_seconds=settings.GATEWAY_EJECT_SECONDS, eject_max_seconds=settings.GATEWAY_EJECT_MAX_SECONDS)
            self.upstream = UpstreamPool(self.http, self.balancer)
            if settings.REDIS_URL:
                import redis.asyncio as aioredis

                from gateway.resp import PipelinedRedis

                # redis-py for the change subscription; the lean pipelined client for admission.
                self.redis = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)
                self.limiter = RedisLimiter(PipelinedRedis(settings.REDIS_URL))
                # Per-replica caps count leases in the same Redis, so they hold across processes.
                self.upstream.capacity = RedisCapacity(self.limiter.redis)
                self.tasks.append(asyncio.get_running_loop().create_task(listen_for_changes(self.redis, self.cache, self.balancer)))
                self.tasks.append(asyncio.get_running_loop().create_task(self.publish_replica_stats()))
            else:
                self.redis = None
                self.limiter = LocalLimiter()
                # Single process: probe results published in this process reach the balancer directly.
                from deployments.changes import local_health_listeners

                local_health_listeners.append(self.balancer.probed)
            self.auth_failures = AuthFailures(
                limit=settings.GATEWAY_AUTH_FAILURES_PER_MINUTE, redis=self.limiter.redis if settings.REDIS_URL else None
            )
            self.writer = UsageWriter(
                run_db=self.run_db,
                on_query=lambda kind, n=1: metrics.DB_QUERIES.labels(kind).inc(n),
                spool=Spool(settings.GATEWAY_SPOOL_DIR, database_identity=database_identity()),
                publish=self.publish_spool_status,
            )
            self.writer.start()
            self.upstream.capacity.start()
            tokenizer.default_counter()  # load the BPE ranks now, not on the first request
            self.touched: dict[int, float] = {}
            self.stage_cpu = settings.GATEWAY_STAGE_TIMING
            self.commit_before_answer = settings.GATEWAY_USAGE_COMMIT_BEFORE_ANSWER
            self.ready = True

    async def shutdown(self) -> None:
        if not self.ready:
            return
        for task in self.tasks:
            task.cancel()
        await self.upstream.capacity.stop()
        await self.writer.stop()
        await self.http.aclose()
        if self.redis is not None:
            await self.redis.aclose()
            await self.limiter.redis.aclose()
        self.db_executor.shutdown(wait=False)
        self.ready = False

    async def publish_replica_stats(self) -> None:
        """Every few seconds, this process's in-flight count and ejections per replica into Redis,
        where the deployment's details page adds them up (deployments.live)."""
        from deployments.live import LIVE_EVERY_SECONDS, live_key

        process = f"{os.getpid()}-{id(self):x}"
        while True:
            await asyncio.sleep(LIVE_EVERY_SECONDS)
            snapshot = self.balancer.snapshot()
            if not snapshot:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                now = time.time()
                for uid, (inflight, ejections, ejected) in snapshot.items():
                    pipe.hset(live_key(uid), process, orjson.dumps([now, inflight, ejections, ejected]))
                    pipe.expire(live_key(uid), 3600)
                await pipe.execute()
            except Exception as exc:
                log.warning("publishing replica stats failed: %s", type(exc).__name__)

    async def publish_spool_status(self, name: str, value: str | None) -> None:
        """The admins' banner reads this (usage.spool_status): in Redis, or in process without it."""
        from usage.spool_status import STATUS_KEY, local_publish

        if self.redis is None:
            local_publish(name, value)
        elif value is None:
            await self.redis.hdel(STATUS_KEY, name)
        else:
            await self.redis.hset(STATUS_KEY, name, value)

    async def run_db(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.db_executor, _db_call, fn, args)

    # ---- ASGI entry --------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await self.lifespan(receive, send)
        if scope["type"] != "http":
            return
        if not self.ready:
            await self.startup()
        exchange = Exchange(send, "req_" + os.urandom(12).hex(), Timing(cpu=self.stage_cpu))
        try:
            await self.dispatch(scope, receive, exchange)
        except GatewayError as exc:
            metrics.REFUSED.labels(str(exc.status), exc.code, "known" if exchange.entry is not None else "unknown").inc()
            if exchange.response_started:
                log.warning("error after the response started: %s", exc.code)
            else:
                headers = [*JSON_HEADERS, *exc.headers]
                if exc.status == 413:
                    headers.append((b"connection", b"close"))
                status, body = exchange.shape.error_body(exc, exchange.request_id)
                if exchange.entry is not None and not exchange.metered:
                    await self.record_refusal(exchange, status, exchange.refusal_reason or exc.code)
                await exchange.respond(status, body, headers)
        except ClientGone:
            exchange.status = exchange.status or 499
        except Exception:
            log.exception("gateway request %s failed", exchange.request_id)
            if not exchange.response_started:
                if exchange.entry is not None and not exchange.metered:
                    await self.record_refusal(exchange, 500, "internal_error")
                error = GatewayError(500, "The gateway failed to handle this request.", code="internal_error", type="server_error")
                await exchange.respond(*exchange.shape.error_body(error, exchange.request_id))
        finally:
            if exchange.pending_usage is not None:
                await self.await_deferred_usage(exchange)
            self.finish(scope, exchange)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def finish(self, scope, exchange: Exchange) -> None:
        status = exchange.status or 500
        model = exchange.model if exchange.status and exchange.model else ""
        elapsed = time.time() - exchange.started
        metrics.REQUESTS.labels(str(status), exchange.metric_model if model else "").inc()
        if model:
            metrics.LATENCY.labels(exchange.metric_model).observe(elapsed)
        if scope["path"] == "/metrics":
            return
        timing = exchange.timing
        gateway_seconds = timing.gateway_seconds()
        if exchange.response_started:
            metrics.OVERHEAD.labels(exchange.endpoint or exchange.shape.endpoint).observe(gateway_seconds)
        if settings.GATEWAY_ACCESS_LOG:
            entry = exchange.entry
            # No query string, no headers, no bodies: nothing here can carry a secret.
            access_log.info(
                orjson.dumps(
                    {
                        "request_id": exchange.request_id,
                        "method": scope["method"],
                        "path": loggable_path(scope["path"]),
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                        "model": model,
                        "key": entry.public_id if entry else None,
                        "workspace": entry.workspace_public_id if entry else None,
                        "client_ip": exchange.client_ip,
                        "tokens": exchange.tokens,
                        "gateway_ms": round(gateway_seconds * 1000, 3),
                        "upstream_ms": round(timing.upstream * 1000, 3),
                        **({"stages": timing.stage_ms(), "cpu": timing.cpu_ms()} if timing.cpu is not None else {}),
                    }
                ).decode()
            )

    async def dispatch(self, scope, receive, exchange: Exchange) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/metrics":
            return await self.metrics_endpoint(scope, exchange)
        query = scope.get("query_string") or b""
        if query and any(hint in query.lower() for hint in QUERY_KEY_HINTS):
            raise errors.bad_request("API keys are not accepted in the URL; send the key in a request header.", code="key_in_query")
        shape = SHAPES.get(path)
        if shape is not None:
            exchange.shape = shape
            _require(method, "POST")
            return await self.handle(scope, receive, exchange, shape, deployment=None)
        if path in ("/v1/models", "/v1/models/"):
            _require(method, "GET")
            return await self.list_models(scope, exchange)
        if path == "/v1/messages/count_tokens":
            exchange.shape = messages.SHAPE
            _require(method, "POST")
            return await self.count_tokens(scope, receive, exchange)
        match = V1_DEPLOYMENT_PATH.match(path)
        if match:
            _require(method, "POST")
            return await self.handle(
                scope, receive, exchange, chat_shape.SHAPE, deployment=(match.group(1).lower(), match.group(2).lower())
            )
        raise GatewayError(404, f"Unknown path {path[:100]}.", code="unknown_url")

    # ---- endpoints ---------------------------------------------------------------------------
    async def metrics_endpoint(self, scope, exchange: Exchange) -> None:
        token = settings.METRICS_TOKEN
        if not token:
            raise GatewayError(404, "Not found.", code="unknown_url")
        auth = _header(scope, b"authorization") or b""
        expected = b"Bearer " + token.encode()
        if not hmac.compare_digest(auth, expected):
            raise GatewayError(401, "The metrics endpoint needs its bearer token.", code="invalid_metrics_token")
        body, content_type = metrics.render()
        await exchange.respond(200, body, [(b"content-type", content_type.encode())])

    async def list_models(self, scope, exchange: Exchange) -> None:
        headers = _headers(scope)
        key = parse_bearer(headers.get(b"authorization"), "Authorization")
        exchange.endpoint = "models"
        entry = await self.checked_entry(scope, headers, key, exchange)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gatehouse", "kind": kind} for name, kind in entry.model_list()]
        await exchange.respond(200, orjson.dumps({"object": "list", "data": data}))

    async def count_tokens(self, scope, receive, exchange: Exchange) -> None:
        """Anthropic's token counting (Claude Code asks before long requests): the admission estimate
        of the request's prompt, for a model the key may call. No model call, so nothing is metered."""
        headers = _headers(scope)
        key = messages.credential(headers, False)
        exchange.endpoint = "messages.count_tokens"
        entry = await self.checked_entry(scope, headers, key, exchange)
        payload = _json(await _read_body(receive, settings.GATEWAY_MAX_BODY_BYTES))
        route = self.resolve(entry, messages.count_model(payload), None)
        exchange.model = route.name
        await exchange.respond(200, orjson.dumps({"input_tokens": messages.count_tokens(payload, route.counter)}))

    async def checked_entry(self, scope, headers: dict, key: str, exchange: Exchange, *, reload: bool = False) -> KeyEntry:
        digest = _digest(key)
        if exchange.client_ip is None:
            exchange.client_ip = resolve_client_ip(
                _peer(scope), headers.get(b"x-forwarded-for", b"").decode("latin-1") or None, settings.TRUSTED_PROXY_NETWORKS
            )
        if reload:
            self.cache.drop_digest(digest)
        # A credential the cache does not know costs a database lookup: claimed against the
        # client's failed-authentication budget first (gateway.authlimit).
        lookup = not reload and not self.cache.holds(digest)
        if lookup:
            retry_after = await self.auth_failures.claim(exchange.client_ip)
            if retry_after:
                metrics.REFUSALS.labels("auth_failures").inc()
                raise errors.too_many_auth_failures(retry_after)
        try:
            entry = await self.cache.get(digest)
        except Exception as exc:
            log.error("key lookup failed: %s", type(exc).__name__)
            raise GatewayError(
                503,
                "Keys cannot be checked right now (the database is unavailable); retry shortly.",
                code="auth_unavailable",
                type="server_error",
            ) from None
        if entry is None:
            raise errors.invalid_key()
        if lookup:
            self.auth_failures.release(exchange.client_ip)
        exchange.entry = entry
        unusable = entry.unusable_reason(time.time())
        if unusable is not None:
            # One public answer for every unusable key; the usage event says which it was.
            exchange.refusal_reason = unusable
            raise errors.invalid_key()
        if entry.workspace_archived:
            raise errors.workspace_archived()
        if entry.networks and not ip_allowed(exchange.client_ip, entry.networks):
            raise GatewayError(
                403,
                f"Requests from {exchange.client_ip} are not allowed for this key (IP allowlist).",
                code="ip_not_allowed",
                type="permission_error",
            )
        return entry

    async def handle(self, scope, receive, exchange: Exchange, shape: Shape, *, deployment: tuple[str, str] | None) -> None:
        """The one request flow for every API shape: auth → scope → admission → proxy → meter."""
        headers = _headers(scope)
        key = shape.credential(headers, deployment is not None)
        # The key first, so an oversized body from a known key is on its record too (the body
        # itself is not read either way).
        await self.checked_entry(scope, headers, key, exchange)
        exchange.timing.mark("auth")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.GATEWAY_MAX_BODY_BYTES):
            raise _too_large()
        body = await _read_body(receive, settings.GATEWAY_MAX_BODY_BYTES)
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None
        if isinstance(payload, dict) and isinstance(payload.get("model"), str):
            exchange.asked_model = payload["model"]
        if shape.stream_header is not None and isinstance(payload, dict):
            payload["stream"] = headers.get(shape.stream_header, b"").lower() == b"enable"
        call = shape.parse(payload, deployment is None)
        counted_with = _NOT_COUNTED
        exchange.timing.mark("parse")

        # A newer key generation seen at admission means the cached copy is stale: drop it,
        # release what was reserved and check again with the fresh key (once).
        for attempt in range(2):
            entry = exchange.entry if attempt == 0 else await self.checked_entry(scope, headers, key, exchange, reload=True)
            route = self.resolve(entry, call.model, deployment)
            exchange.route = route
            if route.serves and route.serves != shape.model_kind:
                raise wrong_kind(route.name, route.serves, shape.endpoint)
            if shape.count is not None and route.counter is not counted_with:
                # Counted with the route's tokenizer (the deployment's own, or tiktoken), once.
                call.prompt_estimate = await shape.count(call, route.counter)
                counted_with = route.counter
            admission = Admission.of(call, entry)
            exchange.model = route.name
            exchange.metric_model = route.metric_name
            decision = await self.admit(entry, admission, route.deployment_id)
            if decision.generation == entry.generation and decision.deployment_generation == route.generation:
                break
            if decision.reservation is not None:
                await self.limiter.settle(decision.reservation, 0)
        else:
            raise GatewayError(
                503, "The key or deployment changed while this request was admitted; retry.", code="key_changed", type="server_error"
            )

        # Checked on the entry the admission confirmed current (its generation is bumped when a
        # budget blocks or unblocks); a plain float compare, no query.
        if entry.budget_blocked_until is not None and time.time() < entry.budget_blocked_until:
            if decision.reservation is not None:
                await self.limiter.settle(decision.reservation, 0)
            metrics.REFUSALS.labels("budget").inc()
            exchange.refusal_reason = "budget_exhausted"  # the client's code (insufficient_quota) is shared with the yearly limit
            raise errors.budget_exhausted()
        if decision.outcome == TPM_REFUSED:
            metrics.REFUSALS.labels("tpm").inc()
            raise errors.tpm_exceeded(decision.retry_after, entry.tpm_limit or 0, remaining=decision.remaining, **admission.shown())
        if decision.outcome == QUOTA_REFUSED:
            metrics.REFUSALS.labels("yearly").inc()
            raise errors.quota_exceeded(entry.yearly_limit or 0, remaining=decision.remaining, **admission.shown())
        if route.responses_passthrough and shape.passthrough is not None:
            shape = shape.passthrough
            call = shape.parse(payload, deployment is None)
        if admission.capped:
            capped = admission.apply_cap(call.body, shape.cap_param, decision.granted)
            if capped is not None:
                exchange.headers.append((CAPPED_HEADER, capped))
        self.touch(entry, exchange.client_ip)
        reservation = decision.reservation
        exchange.timing.mark("admission")
        try:
            if call.stream:
                await self.proxy_stream(receive, exchange, entry, route, shape, call, reservation)
            else:
                await self.proxy_once(receive, exchange, entry, route, shape, call, reservation)
        finally:
            if reservation is not None and not reservation.settled:
                # Anything that escaped metering (a bug, a cancellation): never keep tokens reserved.
                await asyncio.shield(self._settle_quietly(reservation, 0))

    def resolve(self, entry: KeyEntry, model: str | None, deployment: tuple[str, str] | None) -> Route:
        if deployment is not None:
            project_id, deployment_id = deployment
            route = entry.by_deployment.get(deployment_id) if project_id == entry.workspace_public_id else None
            if route is None:
                raise GatewayError(404, "The deployment does not exist or you do not have access to it.", code="model_not_found")
        else:
            route = entry.route_for(model)
            if route is None:
                raise errors.model_not_found(model)
        if route.status in ("stopped", "failed"):
            raise GatewayError(503, f"The deployment {route.name} is {route.status}.", code="deployment_unavailable", type="server_error")
        if route.credential_error:
            raise GatewayError(
                502,
                "The upstream credential for this model cannot be decrypted; ask an administrator.",
                code="upstream_credential",
                type="server_error",
            )
        return route

    async def admit(self, entry: KeyEntry, admission: Admission, deployment_id: int | None):
        year = datetime.now(entry.time_zone).year
        kwargs = dict(
            api_key_id=entry.api_key_id,
            public_id=entry.public_id,
            year=year,
            prompt=admission.prompt,
            completion=admission.completion,
            choices=admission.choices,
            floor=admission.floor,
            tpm_limit=entry.tpm_limit,
            yearly_limit=entry.yearly_limit,
            deployment_id=deployment_id,
        )
        try:
            decision = await self.limiter.admit(**kwargs)
            if decision.outcome == NEEDS_SEED:
                try:
                    seed = await self.run_db(_yearly_usage, entry.api_key_id, entry.time_zone, year)
                except Exception as exc:
                    # The year's usage is unknown (first use this year, or Redis lost the counter,
                    # while the database is away): refuse rather than guess past the yearly limit.
                    log.error("yearly usage for a key cannot be read: %s", type(exc).__name__)
                    metrics.REFUSALS.labels("limiter_unavailable").inc()
                    raise GatewayError(
                        503,
                        "This key's yearly token usage cannot be read right now (the database is unavailable); retry shortly.",
                        code="limiter_unavailable",
                        type="server_error",
                    ) from None
                metrics.DB_QUERIES.labels("yearly_seed").inc()
                decision = await self.limiter.admit(**kwargs, seed=seed)
        except LimiterUnavailable:
            metrics.REFUSALS.labels("limiter_unavailable").inc()
            raise errors.limiter_unavailable() from None
        return decision

    def touch(self, entry: KeyEntry, ip: str | None) -> None:
        """Stamp last use via keys.services.api_key_touch, off the hot path, once a minute per key and process."""
        now = time.monotonic()
        if self.touched.get(entry.api_key_id, 0) > now or self.writer.db_down:
            return  # while usage events go to the spool the database is away: stamp later
        self.touched[entry.api_key_id] = now + 60
        task = asyncio.ensure_future(self.run_db(_touch_key, entry.api_key_id, ip))
        task.add_done_callback(_log_touch_failure)

    # ---- proxying and metering ---------------------------------------------------------------
    async def meter(
        self,
        exchange: Exchange,
        entry: KeyEntry,
        route: Route,
        reservation: Reservation | None,
        *,
        prompt: int,
        completion: int,
        status: int,
        error_code: str = "",
        defer: bool = False,
        **flags,
    ) -> None:
        """Settle the reservation and write the usage event; raise if the event was not written.

        With `defer` and a healthy writer (its last batch went into the database) the commit is
        awaited after the answer went out (Gateway.__call__ → await_deferred_usage): the row is
        queued now, so it is in the next group commit either way, and a batch the database does not
        take still goes to the spool. While the writer is degraded (spooling, or the last batch
        stored nowhere) the answer waits for the row, so a row that cannot be stored anywhere is
        still a 503 instead of an unmetered answer."""
        exchange.metered = True
        row = event_row(
            request_id=exchange.request_id,
            started=exchange.started,
            entry=entry,
            route=route,
            model=route.name,
            prompt_tokens=prompt,
            completion_tokens=completion,
            status_code=status,
            error_code=error_code,
            client_ip=exchange.client_ip,
            endpoint=exchange.shape.endpoint,
            **flags,
        )
        exchange.tokens = prompt + completion
        written = self.writer.submit(row)
        if reservation is not None:
            # Sent without waiting for Redis (it rides the next pipelined write).
            await self._settle_quietly(reservation, prompt + completion)
        if prompt + completion:
            metrics.TOKENS.labels(route.metric_name, "prompt").inc(prompt)
            metrics.TOKENS.labels(route.metric_name, "completion").inc(completion)
        if defer and not self.commit_before_answer and self.writer.healthy:
            exchange.pending_usage = written
            return
        try:
            await written
        except Exception:
            raise errors.usage_unrecorded() from None

    async def await_deferred_usage(self, exchange: Exchange) -> None:
        """The commit of a usage event whose answer already went out (see meter)."""
        pending, exchange.pending_usage = exchange.pending_usage, None
        try:
            await pending
        except Exception as exc:
            # Neither the database nor the spool took it (the writer counted it in
            # gatehouse_gateway_usage_unrecorded); the answer is out, so say so loudly.
            log.error("the usage event of answered request %s could not be stored: %s", exchange.request_id, type(exc).__name__)

    async def record_refusal(self, exchange: Exchange, status: int, code: str) -> None:
        """The usage event of a request refused for a known key: its status and reason, zero tokens
        and zero cost. Only refusals pay for it (one row in the next group commit); a write that
        fails is logged and the refusal is answered as it would have been."""
        exchange.metered = True
        route = exchange.route
        row = event_row(
            request_id=exchange.request_id,
            started=exchange.started,
            entry=exchange.entry,
            route=route,
            model=route.name if route is not None else exchange.asked_model,
            endpoint=exchange.endpoint or exchange.shape.endpoint,
            prompt_tokens=0,
            completion_tokens=0,
            status_code=status,
            error_code=code,
            client_ip=exchange.client_ip,
        )
        try:
            await self.writer.write(row)
        except Exception as exc:
            metrics.REFUSALS_UNRECORDED.inc()
            log.warning("the usage event of a refused request could not be written: %s", type(exc).__name__)

    async def _settle_quietly(self, reservation: Reservation, actual: int) -> None:
        try:
            await self.limiter.settle(reservation, actual)
        except Exception as exc:
            # The reservation then simply ages out of the TPM window; the yearly counter is
            # re-seeded from usage events if it is ever lost.
            log.warning("settling a reservation failed: %s", type(exc).__name__)

    async def upstream_failed(
        self, exchange, entry, route, reservation, error: GatewayError, prompt: int = 0, completion: int = 0, **flags
    ) -> None:
        metrics.UPSTREAM_ERRORS.labels(route.metric_name, error.code).inc()
        await self.meter(
            exchange, entry, route, reservation, prompt=prompt, completion=completion, status=error.status, error_code=error.code, **flags
        )
        raise error

    async def send_upstream(
        self, route: Route, entry: KeyEntry, shape: Shape, call: Call, *, stream: bool, started: float, request_id: str
    ) -> Answer:
        """One upstream exchange through gateway.balancer: a replica of the route (or the route's
        own URL), at most one retry elsewhere before anything reached the client, the fallback
        deployment when every replica is out. Raises UpstreamFailed when no answer came."""
        built: dict[str, tuple] = {}

        def build(target: Route):
            # The body carries the upstream model name: built once per route tried.
            if target.name not in built:
                built[target.name] = (
                    upstream_call(target, call.body, stream=True, usage_option=shape.stream_usage_option)
                    if stream
                    else upstream_call(target, call.body, stream=False)
                )
            return built[target.name]

        deadline = time.monotonic() - (time.time() - started) + route.timeout
        ticket = Ticket(request_id, entry.workspace_id, entry.queue_priority)
        try:
            return await self.upstream.send(
                route, entry.routes, ticket, path=shape.upstream_path, build=build, stream=stream, deadline=deadline
            )
        except CapacityExceeded as exc:
            metrics.REFUSALS.labels("capacity").inc()
            if exc.queue_full:
                why = "every replica is busy and the queue is full"
            elif exc.route.queue_timeout:
                why = f"no replica freed up within {exc.route.queue_timeout:g} s"
            else:
                why = "every replica is busy (this deployment does not queue)"
            raise GatewayError(
                429,
                f"The deployment {exc.route.name} is at capacity: {why}. Retry shortly.",
                code="capacity_exceeded",
                type="rate_limit_error",
                headers=[(b"retry-after", b"1")],
            ) from None
        except CapacityUnavailable:
            metrics.REFUSALS.labels("limiter_unavailable").inc()
            raise errors.limiter_unavailable() from None

    async def proxy_once(self, receive, exchange: Exchange, entry: KeyEntry, route: Route, shape: Shape, call: Call, reservation) -> None:
        try:
            answer = await _unless_client_leaves(
                receive,
                self.send_upstream(route, entry, shape, call, stream=False, started=exchange.started, request_id=exchange.request_id),
            )
        except ClientGone:
            # The caller hung up while the model was still working: stop the upstream call (its
            # connection is closed, so a well-behaved server stops generating) and meter it.
            exchange.status = 499
            await self.meter(
                exchange,
                entry,
                route,
                reservation,
                prompt=call.prompt_estimate,
                completion=0,
                status=499,
                error_code="client_disconnected",
                estimated=True,
                aborted=True,
            )
            raise
        except UpstreamFailed as failed:
            exchange.timing.mark("upstream_head")
            return await self.upstream_failed(
                exchange, entry, failed.route, reservation, transport_error(failed.error), replica_id=_replica_id(failed.replica)
            )
        _mark_upstream(exchange.timing, answer.response, streamed=False)
        route, replica_id, body = answer.route, answer.replica_id, answer.body
        if answer.response.status != 200:
            error = status_error(answer.response.status, body)
            return await self.upstream_failed(exchange, entry, route, reservation, error, replica_id=replica_id)
        try:
            data = orjson.loads(body)
            if not isinstance(data, dict):
                raise ValueError
        except ValueError:
            error = GatewayError(502, "The model sent a response that is not JSON.", code="upstream_invalid", type="server_error")
            return await self.upstream_failed(exchange, entry, route, reservation, error, replica_id=replica_id)
        usage = shape.usage(data)
        estimated = usage is None
        if estimated:
            # The upstream did the work but did not count it: estimate, and say so.
            prompt, completion = call.prompt_estimate, shape.estimate_completion(data)
        else:
            prompt, completion = usage
        body = shape.respond(data, call, route.name, exchange.request_id)
        exchange.timing.mark("answer")
        await self.meter(
            exchange,
            entry,
            route,
            reservation,
            prompt=prompt,
            completion=completion,
            status=200,
            estimated=estimated,
            replica_id=replica_id,
            defer=True,
        )
        exchange.timing.mark("metering")
        await exchange.respond(200, body, _answer_headers(answer, JSON_HEADERS))

    async def proxy_stream(self, receive, exchange: Exchange, entry: KeyEntry, route: Route, shape: Shape, call: Call, reservation) -> None:
        try:
            answer = await self.send_upstream(
                route, entry, shape, call, stream=True, started=exchange.started, request_id=exchange.request_id
            )
        except UpstreamFailed as failed:
            exchange.timing.mark("upstream_head")
            error = transport_error(failed.error)
            return await self.upstream_failed(
                exchange, entry, failed.route, reservation, error, streamed=True, replica_id=_replica_id(failed.replica)
            )
        _mark_upstream(exchange.timing, answer.response, streamed=True)
        route, replica_id, response = answer.route, answer.replica_id, answer.response
        if response.status != 200:
            error = status_error(response.status, answer.body)
            return await self.upstream_failed(exchange, entry, route, reservation, error, streamed=True, replica_id=replica_id)
        relay = shape.relay(call, route, exchange.request_id)
        outcome = None
        try:
            await exchange.start(200, _answer_headers(answer, [*SSE_HEADERS, *shape.stream_headers]))
            opening = relay.opening()
            if opening:
                await exchange.send({"type": "http.response.body", "body": opening, "more_body": True})
            outcome = await self._pump(receive, exchange, response, relay)
        finally:
            await response.aclose()
            # A stream that broke (reset, timeout, cut short) counts against the replica; a client
            # that left says nothing about it.
            answer.done(True if outcome == "done" else None if outcome in ("client_gone", None) else False)
            exchange.timing.mark("upstream_body")

        state = relay.state
        prompt_estimate = call.prompt_estimate
        ttft = int((state.first_chunk_at - exchange.started) * 1000) if state.first_chunk_at else None
        if state.first_chunk_at:
            metrics.TTFT.labels(route.metric_name).observe(state.first_chunk_at - exchange.started)
        usage = state.usage if _valid_usage(state.usage) else None
        if usage is not None and outcome == "done":
            prompt, completion, estimated = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), False
        else:
            prompt, completion, estimated = prompt_estimate, relay.estimated_completion_tokens(), True
            if usage is not None:
                prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                estimated = False
        metered = functools.partial(
            self.meter,
            exchange,
            entry,
            route,
            reservation,
            prompt=prompt,
            completion=completion,
            estimated=estimated,
            streamed=True,
            ttft_ms=ttft,
            replica_id=replica_id,
        )
        if outcome == "client_gone":
            exchange.status = 499
            await metered(status=499, error_code="client_disconnected", aborted=True)
            raise ClientGone
        error = None
        if outcome != "done":
            error = (
                transport_error(outcome)
                if isinstance(outcome, Exception)
                else GatewayError(502, "The model ended the stream early.", code="upstream_incomplete", type="server_error")
            )
            metrics.UPSTREAM_ERRORS.labels(route.metric_name, error.code).inc()
        try:
            await metered(status=error.status if error else 200, error_code=error.code if error else "", defer=error is None)
        except GatewayError as unrecorded:
            error = error or unrecorded  # the stream's own failure is what the client most needs to hear
        if error is not None:
            exchange.status = error.status
        exchange.timing.mark("metering")
        await exchange.send({"type": "http.response.body", "body": relay.closing(error, (prompt, completion)), "more_body": False})
        exchange.timing.finished = exchange.timing.mark("send")

    async def _pump(self, receive, exchange: Exchange, response, relay: SseRelay):
        """Forward the stream until it ends ("done"/"eof"), fails (the exception) or the client leaves ("client_gone")."""

        async def forward():
            async for data in response.iter_raw():
                out = relay.feed(data)
                if out:
                    if relay.state.first_chunk_at is None:
                        relay.state.first_chunk_at = time.time()
                    await exchange.send({"type": "http.response.body", "body": out, "more_body": True})
            return "done" if relay.state.saw_done else "eof"

        async def client_left():
            while (await receive())["type"] != "http.disconnect":
                pass
            return "client_gone"

        pump = asyncio.ensure_future(forward())
        watcher = asyncio.ensure_future(client_left())
        try:
            done, _ = await asyncio.wait({pump, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watcher):
                if not task.done():
                    task.cancel()
        if pump in done:
            try:
                return pump.result()
            except Exception as exc:
                return exc
        try:
            await pump
        except BaseException:
            pass
        return "client_gone"


# ---- helpers -------------------------------------------------------------------------------
async def _unless_client_leaves(receive, work):
    """Await `work`, but raise ClientGone (cancelling it) if the client disconnects first.

    The request body has been read, so the next ASGI message can only be http.disconnect. One
    watcher task and a done-callback: cheaper than asyncio.wait over two tasks on the hot path."""
    task = asyncio.current_task()
    gone = False

    def on_message(watcher: asyncio.Future) -> None:
        nonlocal gone
        if not watcher.cancelled() and watcher.exception() is None and watcher.result()["type"] == "http.disconnect":
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_message)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()


def _mark_upstream(timing: Timing, response, *, streamed: bool) -> None:
    """Split the upstream's time at the arrival of its response head (clients stamp `head_at`)."""
    head_at = getattr(response, "head_at", None)
    if head_at is not None and head_at >= timing.last:
        timing.mark("upstream_head", head_at)
        if not streamed:
            timing.mark("upstream_body")
    else:
        timing.mark("upstream_head")


def _replica_id(replica) -> int | None:
    return replica.id if replica is not None else None


def _answer_headers(answer: Answer, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    if answer.fallback:
        # The client called another deployment: say which one answered (and was metered).
        headers = [*headers, (b"x-gatehouse-fallback", answer.route.name.encode())]
    if answer.queued_ms:
        # It waited for a free replica (the deployment was at capacity): how long.
        headers = [*headers, (b"x-gatehouse-queued-ms", str(answer.queued_ms).encode())]
    return headers


def _json(body: bytes):
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise errors.bad_request("The request body is not valid JSON.", code="invalid_json") from None


def _require(method: str, expected: str) -> None:
    if method != expected:
        raise GatewayError(405, f"Use {expected} for this endpoint.", code="method_not_allowed")


def _headers(scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in headers:
            if name == b"x-forwarded-for":
                headers[name] += b"," + value
            elif name in (b"authorization", b"x-apig-appcode", b"x-api-key"):
                # Two credentials in one request: ambiguous, refuse rather than pick one.
                headers[name] = b"\x00"
            continue
        headers[name] = value
    return headers


def _header(scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None


def _peer(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _digest(key: str) -> str:
    from keys.tokens import digest

    return digest(key, settings.API_KEY_PEPPER)


def _too_large() -> GatewayError:
    return GatewayError(413, f"The request body is larger than {settings.GATEWAY_MAX_BODY_BYTES} bytes.", code="request_too_large")


async def _read_body(receive, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large()
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _valid_usage(usage) -> bool:
    return isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int)


def _db_call(fn, args):
    from django.db import close_old_connections

    close_old_connections()
    try:
        return fn(*args)
    except Exception:
        # A broken connection must not poison the next call on this thread.
        from django.db import connection

        connection.close()
        raise


def _count_orm_queries() -> None:
    from django.db import connection

    def counter(execute, sql, params, many, context):
        metrics.DB_QUERIES.labels("orm").inc()
        return execute(sql, params, many, context)

    connection.execute_wrappers.append(counter)


def _touch_key(api_key_id: int, ip: str | None) -> None:
    from keys.services import api_key_touch

    api_key_touch(api_key_id=api_key_id, ip=ip)


def _log_touch_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Best effort: a missed last-used stamp is not worth failing a request for.
        log.warning("last-used update failed: %s", type(task.exception()).__name__)


def _yearly_usage(api_key_id: int, time_zone: ZoneInfo, year: int) -> int:
    return tokens_used_in_year({api_key_id: (time_zone, year)}).get(api_key_id, 0)


gateway = Gateway()
