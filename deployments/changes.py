"""How a change to a deployment (upstream, status, price, grants) reaches every gateway process.

The same pattern as keys.changes: services call `deployment_changed(deployment_id)` inside their
transaction; after commit a per-deployment generation counter is bumped in Redis (when
REDIS_URL is set) and the id is published, so gateways drop their cached copy. Without Redis
(the single-process embedded default) the in-process counter does the job. A change Redis does
not take is retried on the worker (deployments.tasks.deployments_announce) and never fails the
request that made it, exactly as for keys.
"""

from __future__ import annotations

import logging
from collections import defaultdict

from django.conf import settings
from django.db import transaction

from lib.redis import redis_client

log = logging.getLogger(__name__)

CHANNEL = "gatehouse:deployments:changed"
GENERATION_KEY = "gatehouse:deployments:generation"  # a Redis hash: deployment_id -> generation

local_generations: defaultdict[int, int] = defaultdict(int)


def deployment_changed(deployment_id: int) -> None:
    transaction.on_commit(lambda: _announce_after_commit(deployment_id), robust=True)


def _announce_after_commit(deployment_id: int) -> None:
    """Never raises: the change is already committed and the page that follows must not become a
    500. When Redis does not answer, the worker retries; gateways reload the deployment with its
    keys within GATEWAY_KEY_CACHE_TTL even if nobody ever announces it."""
    local_generations[deployment_id] += 1
    try:
        deployment_changes_announce(deployment_ids=[deployment_id])
    except Exception as exc:
        log.warning("deployment change not announced to gateways (%s); retrying on the worker", type(exc).__name__)
        _retry_on_worker([deployment_id])


def _retry_on_worker(deployment_ids: list[int]) -> None:
    from deployments.tasks import deployments_announce  # here, not at the top: deployments.tasks imports this module

    try:
        # The broker is usually the same Redis: one quick attempt, no long publish retries.
        deployments_announce.apply_async(
            args=(deployment_ids,), countdown=1, retry=True, retry_policy={"max_retries": 1, "interval_start": 0.2}
        )
    except Exception as exc:
        log.error(
            "deployment change could not be queued for the worker either (%s); gateways apply it within GATEWAY_KEY_CACHE_TTL",
            type(exc).__name__,
        )


def deployment_changes_announce(*, deployment_ids: list[int]) -> None:
    """Bump the deployments' generations in Redis and publish them. Raises RedisError when Redis is
    unreachable. Safe to repeat: an extra bump only makes gateways reload once more."""
    if not settings.REDIS_URL:
        return
    pipe = redis_client().pipeline()
    for deployment_id in deployment_ids:
        pipe.hincrby(GENERATION_KEY, str(deployment_id), 1)
        pipe.publish(CHANNEL, str(deployment_id))
    pipe.execute()


# Probe results reach the gateways' balancers directly (gateway/balancer.py): every probe is
# published, so a replica a gateway ejected after failures comes back at the next successful
# probe, and one the worker found down stops getting traffic, without reloading any key.
HEALTH_CHANNEL = "gatehouse:replicas:health"  # message: "<replica_id>:<1 up|0 down>:<replica public_id>"
local_health_listeners: list = []  # in-process listeners (the embedded default has no Redis)


def replica_probed(replica_id: int, public_id, *, up: bool) -> None:
    transaction.on_commit(lambda: _publish_health(replica_id, str(public_id), up))


def _publish_health(replica_id: int, public_id: str, up: bool) -> None:
    for listener in list(local_health_listeners):
        listener(replica_id, public_id, up)
    if not settings.REDIS_URL:
        return
    try:
        redis_client().publish(HEALTH_CHANNEL, f"{replica_id}:{int(up)}:{public_id}")
    except Exception:
        # Best effort: the gateways' own ejection cooldown still expires without it.
        pass
