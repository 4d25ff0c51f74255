"""The gateway: a lean raw-ASGI application (no Django request stack on the hot path).

console.asgi sends /v1/, /api/v2/ and /metrics here and everything else to Django. Per request:
parse the key (format + checksum, no I/O) → key from the in-process cache → expiry, IP allowlist
→ read and validate the body → resolve the model in the key's scope → reserve tokens (one Redis
Lua call, which also carries the key's generation) → proxy → settle the reservation and queue
the usage event → answer (with Server-Timing, gateway/timing.py) → await the event's commit.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import redis.asyncio as aioredis
from django.conf import settings
from django.db import close_old_connections, connection

from deployments.changes import local_health_listeners
from deployments.live import LIVE_EVERY_SECONDS, live_key
from gateway import errors, metrics, tokenizer
from gateway.accounting import Accounting
from gateway.auth import KeyCache, listen_for_changes
from gateway.authlimit import AuthFailures
from gateway.balancer import Balancer, UpstreamPool
from gateway.capacity import RedisCapacity
from gateway.credentials import parse_bearer
from gateway.errors import GatewayError
from gateway.exchange import (
    JSON_HEADERS,
    ClientGone,
    Exchange,
    client_peer,
    header_value,
    parse_json,
    read_body,
    request_headers,
    require_method,
    too_large,
)
from gateway.forwarding import Forwarding
from gateway.limits import (
    CAPPED_HEADER,
    QUOTA_REFUSED,
    TPM_REFUSED,
    Admission,
    LocalLimiter,
    RedisLimiter,
)
from gateway.metering import UsageWriter
from gateway.proxy import make_client
from gateway.resp import PipelinedRedis
from gateway.routes import KeyEntry, Route
from gateway.shapes import Shape, completions, dashscope, embeddings, messages, rerank, responses, wrong_kind
from gateway.shapes import chat as chat_shape
from gateway.spool import Spool, database_identity
from gateway.timing import Timing
from keys.tokens import digest
from lib.logsafe import loggable_path
from lib.net import ip_allowed, resolve_client_ip
from usage.spool_status import STATUS_KEY, local_publish

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

V1_DEPLOYMENT_PATH = re.compile(r"^/v1/([0-9a-fA-F-]{36})/deployments/([0-9a-fA-F-]{36})/chat/completions/?$")
QUERY_KEY_HINTS = (b"gh_live_", b"api_key", b"apikey", b"api-key", b"access_token", b"appcode", b"key=", b"token=")
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


_NOT_COUNTED = object()


class Gateway(Accounting, Forwarding):
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
            require_method(method, "POST")
            return await self.handle(scope, receive, exchange, shape, deployment=None)
        if path in ("/v1/models", "/v1/models/"):
            require_method(method, "GET")
            return await self.list_models(scope, exchange)
        if path == "/v1/messages/count_tokens":
            exchange.shape = messages.SHAPE
            require_method(method, "POST")
            return await self.count_tokens(scope, receive, exchange)
        match = V1_DEPLOYMENT_PATH.match(path)
        if match:
            require_method(method, "POST")
            return await self.handle(
                scope, receive, exchange, chat_shape.SHAPE, deployment=(match.group(1).lower(), match.group(2).lower())
            )
        raise GatewayError(404, f"Unknown path {path[:100]}.", code="unknown_url")

    # ---- endpoints ---------------------------------------------------------------------------
    async def metrics_endpoint(self, scope, exchange: Exchange) -> None:
        token = settings.METRICS_TOKEN
        if not token:
            raise GatewayError(404, "Not found.", code="unknown_url")
        auth = header_value(scope, b"authorization") or b""
        expected = b"Bearer " + token.encode()
        if not hmac.compare_digest(auth, expected):
            raise GatewayError(401, "The metrics endpoint needs its bearer token.", code="invalid_metrics_token")
        body, content_type = metrics.render()
        await exchange.respond(200, body, [(b"content-type", content_type.encode())])

    async def list_models(self, scope, exchange: Exchange) -> None:
        headers = request_headers(scope)
        key = parse_bearer(headers.get(b"authorization"), "Authorization")
        exchange.endpoint = "models"
        entry = await self.checked_entry(scope, headers, key, exchange)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "gatehouse", "kind": kind} for name, kind in entry.model_list()]
        await exchange.respond(200, orjson.dumps({"object": "list", "data": data}))

    async def count_tokens(self, scope, receive, exchange: Exchange) -> None:
        """Anthropic's token counting (Claude Code asks before long requests): the admission estimate
        of the request's prompt, for a model the key may call. No model call, so nothing is metered."""
        headers = request_headers(scope)
        key = messages.credential(headers, False)
        exchange.endpoint = "messages.count_tokens"
        entry = await self.checked_entry(scope, headers, key, exchange)
        payload = parse_json(await read_body(receive, settings.GATEWAY_MAX_BODY_BYTES))
        route = self.resolve(entry, messages.count_model(payload), None)
        exchange.model = route.name
        await exchange.respond(200, orjson.dumps({"input_tokens": messages.count_tokens(payload, route.counter)}))

    async def checked_entry(self, scope, headers: dict, key: str, exchange: Exchange, *, reload: bool = False) -> KeyEntry:
        digest = _digest(key)
        if exchange.client_ip is None:
            exchange.client_ip = resolve_client_ip(
                client_peer(scope), headers.get(b"x-forwarded-for", b"").decode("latin-1") or None, settings.TRUSTED_PROXY_NETWORKS
            )
        if reload:
            self.cache.drop_digest(digest)
        # A credential the cache does not know costs a database lookup: claimed against the
        # client's failed-authentication budget first (gateway.authlimit). Requests for the same
        # credential arriving while its lookup runs join it and claim nothing: a burst of
        # connections for a key this process has not loaded yet is one lookup, not a refusal.
        lookup = not reload and not self.cache.holds(digest)
        claimed = False

        async def claim() -> None:
            nonlocal claimed
            retry_after = await self.auth_failures.claim(exchange.client_ip)
            if retry_after:
                metrics.REFUSALS.labels("auth_failures").inc()
                raise errors.too_many_auth_failures(retry_after)
            claimed = True

        try:
            entry = await self.cache.get(digest, claim=claim if lookup else None)
        except GatewayError:
            raise
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
        if claimed:
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
        headers = request_headers(scope)
        key = shape.credential(headers, deployment is not None)
        # The key first, so an oversized body from a known key is on its record too (the body
        # itself is not read either way).
        await self.checked_entry(scope, headers, key, exchange)
        exchange.timing.mark("auth")
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.GATEWAY_MAX_BODY_BYTES):
            raise too_large()
        body = await read_body(receive, settings.GATEWAY_MAX_BODY_BYTES)
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


# ---- helpers -------------------------------------------------------------------------------
def _digest(key: str) -> str:
    return digest(key, settings.API_KEY_PEPPER)


def _db_call(fn, args):
    close_old_connections()
    try:
        return fn(*args)
    except Exception:
        # A broken connection must not poison the next call on this thread.
        connection.close()
        raise


def _count_orm_queries() -> None:
    def counter(execute, sql, params, many, context):
        metrics.DB_QUERIES.labels("orm").inc()
        return execute(sql, params, many, context)

    connection.execute_wrappers.append(counter)


gateway = Gateway()
