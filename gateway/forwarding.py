"""Forwarding a request upstream and its answer back: one exchange through gateway/balancer.py,
a non-streamed answer translated into the client's shape, or a stream relayed as it arrives
(gateway/proxy.py's SseRelay), each metered once (gateway/accounting.py)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import orjson

from gateway import errors, metrics
from gateway.balancer import Answer, CapacityExceeded, Ticket, UpstreamFailed
from gateway.capacity import CapacityUnavailable
from gateway.errors import GatewayError
from gateway.exchange import JSON_HEADERS, SSE_HEADERS, ClientGone, Exchange, unless_client_leaves
from gateway.proxy import SseRelay, status_error, transport_error, upstream_call
from gateway.routes import KeyEntry, Route
from gateway.shapes import Call, Shape
from gateway.timing import Timing

log = logging.getLogger("gateway")


class Forwarding:
    """Mixed into gateway.app.Gateway (it provides upstream and, from Accounting, meter/upstream_failed)."""

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
            answer = await unless_client_leaves(
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


def _valid_usage(usage) -> bool:
    return isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int) and isinstance(usage.get("completion_tokens"), int)
