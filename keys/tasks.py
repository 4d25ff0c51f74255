"""Celery tasks for keys: thin and safe to run twice (an extra generation bump only makes gateways
reload a key once more)."""

from __future__ import annotations

from celery import shared_task
from redis.exceptions import RedisError

from keys.changes import key_changes_announce


# Bounded: ~15 s of retries (1, 2, 4, 8 s). After that every gateway has refreshed the key from
# the database anyway (GATEWAY_KEY_CACHE_TTL, 10 s by default), so retrying longer buys nothing.
@shared_task(acks_late=True, autoretry_for=(RedisError, OSError), retry_backoff=1, retry_backoff_max=8, retry_jitter=False, max_retries=4)
def keys_announce(api_key_ids: list[int]) -> None:
    key_changes_announce(api_key_ids=api_key_ids)
