"""How a change to a key reaches every gateway process.

Key services call `key_changed(api_key_id)` inside their transaction. After commit it bumps a
generation counter in Redis (when REDIS_URL is set) and publishes the id on a channel; gateway
processes compare/subscribe and drop their cached copy. In the single-process embedded default
an in-process counter does the same job. A change Redis does not take is retried on the worker
(keys.tasks.keys_announce) and never fails the request that made it.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from django.conf import settings
from django.db import transaction

from lib.redis import redis_client

log = logging.getLogger(__name__)

CHANNEL = "gatehouse:keys:changed"
GENERATION_KEY = "gatehouse:keys:generation"  # a Redis hash: api_key_id -> generation

local_generations: defaultdict[int, int] = defaultdict(int)


def key_changed(api_key_id: int) -> None:
    keys_changed([api_key_id])


def keys_changed(api_key_ids: list[int]) -> None:
    """Announce these keys' change to every gateway once the transaction commits (one pipeline
    for many keys, e.g. every key of a workspace whose budget blocks or unblocks)."""
    ids = sorted(set(api_key_ids))
    if ids:
        transaction.on_commit(lambda: _announce_after_commit(ids), robust=True)


def _announce_after_commit(api_key_ids: list[int]) -> None:
    """Never raises: the change is already committed, and the response that follows (a rotated
    key's only showing of its new secret) must not become a 500. When Redis does not answer, the
    worker retries the announcement; gateways pick the change up within GATEWAY_KEY_CACHE_TTL
    even if nobody ever announces it."""
    for api_key_id in api_key_ids:
        local_generations[api_key_id] += 1
    try:
        key_changes_announce(api_key_ids=api_key_ids)
    except Exception as exc:
        log.warning("key change of %d key(s) not announced to gateways (%s); retrying on the worker", len(api_key_ids), type(exc).__name__)
        _retry_on_worker(api_key_ids)


def _retry_on_worker(api_key_ids: list[int]) -> None:
    from keys.tasks import keys_announce  # here, not at the top: keys.tasks imports this module

    try:
        # The broker is usually the same Redis: one quick attempt, no long publish retries.
        keys_announce.apply_async(args=(api_key_ids,), countdown=1, retry=True, retry_policy={"max_retries": 1, "interval_start": 0.2})
    except Exception as exc:
        log.error(
            "key change of %d key(s) could not be queued for the worker either (%s); gateways apply it within GATEWAY_KEY_CACHE_TTL",
            len(api_key_ids),
            type(exc).__name__,
        )


def key_changes_announce(*, api_key_ids: list[int]) -> None:
    """Bump the keys' generations in Redis and publish them: every gateway drops its cached copies
    at its next request (or at once, through its subscription). Raises RedisError when Redis is
    unreachable. Safe to repeat: an extra bump only makes gateways reload a key once more."""
    if not settings.REDIS_URL:
        return
    pipe = redis_client().pipeline()
    for api_key_id in api_key_ids:
        pipe.hincrby(GENERATION_KEY, str(api_key_id), 1)
        pipe.publish(CHANNEL, str(api_key_id))
    pipe.execute()
