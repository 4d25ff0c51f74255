"""How a change to a key reaches every gateway process.

Key services call `key_changed(api_key_id)` inside their transaction. After commit it bumps a
generation counter in Redis (when REDIS_URL is set) and publishes the id on a channel; gateway
processes compare/subscribe and drop their cached copy. In the single-process embedded default
an in-process counter does the same job.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)

CHANNEL = "gatehouse:keys:changed"
GENERATION_KEY = "gatehouse:keys:generation"  # a Redis hash: api_key_id -> generation

local_generations: defaultdict[int, int] = defaultdict(int)


def key_changed(api_key_id: int) -> None:
    transaction.on_commit(lambda: _publish(api_key_id))


def _publish(api_key_id: int) -> None:
    local_generations[api_key_id] += 1
    if not settings.REDIS_URL:
        return
    from lib.redis import redis_client

    client = redis_client()
    pipe = client.pipeline()
    pipe.hincrby(GENERATION_KEY, str(api_key_id), 1)
    pipe.publish(CHANNEL, str(api_key_id))
    pipe.execute()


def keys_changed(api_key_ids: list[int]) -> None:
    """key_changed for many keys at once (e.g. every key of a workspace whose budget blocks or
    unblocks): one pipeline after commit instead of one per key."""
    ids = sorted(set(api_key_ids))
    if ids:
        transaction.on_commit(lambda: _publish_many(ids))


def _publish_many(api_key_ids: list[int]) -> None:
    for api_key_id in api_key_ids:
        local_generations[api_key_id] += 1
    if not settings.REDIS_URL:
        return
    from lib.redis import redis_client

    pipe = redis_client().pipeline()
    for api_key_id in api_key_ids:
        pipe.hincrby(GENERATION_KEY, str(api_key_id), 1)
        pipe.publish(CHANNEL, str(api_key_id))
    pipe.execute()
