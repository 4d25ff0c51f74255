"""The gateway's accounting around a request: admission against the key's limits (seeding the
year's usage when Redis lacks it), the last-used stamp, and metering: settling the reservation
and writing the usage event (gateway/metering.py) for answers, upstream failures and refusals."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway import errors, metrics
from gateway.errors import GatewayError
from gateway.exchange import Exchange
from gateway.limits import NEEDS_SEED, Admission, LimiterUnavailable, Reservation
from gateway.metering import event_row
from gateway.routes import KeyEntry, Route
from keys.services import api_key_touch
from usage.selectors import tokens_used_in_year

log = logging.getLogger("gateway")


class Accounting:
    """Mixed into gateway.app.Gateway (it provides limiter, writer, run_db, touched, commit_before_answer)."""

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


def _touch_key(api_key_id: int, ip: str | None) -> None:
    api_key_touch(api_key_id=api_key_id, ip=ip)


def _log_touch_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        # Best effort: a missed last-used stamp is not worth failing a request for.
        log.warning("last-used update failed: %s", type(task.exception()).__name__)


def _yearly_usage(api_key_id: int, time_zone: ZoneInfo, year: int) -> int:
    return tokens_used_in_year({api_key_id: (time_zone, year)}).get(api_key_id, 0)
