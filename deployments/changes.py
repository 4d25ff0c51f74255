"""How a change to a deployment (upstream, status, price, grants) reaches every gateway process.

The same pattern as keys.changes: services call `deployment_changed(deployment_id)` inside their
transaction; after commit a per-deployment generation counter is bumped in Redis (when
REDIS_URL is set) and the id is published, so gateways drop their cached copy. Without Redis
(the single-process embedded default) the in-process counter does the job.
"""

from __future__ import annotations

from collections import defaultdict

from django.conf import settings
from django.db import transaction

CHANNEL = "gatehouse:deployments:changed"
GENERATION_KEY = "gatehouse:deployments:generation"  # a Redis hash: deployment_id -> generation

local_generations: defaultdict[int, int] = defaultdict(int)


def deployment_changed(deployment_id: int) -> None:
    transaction.on_commit(lambda: _publish(deployment_id))


def _publish(deployment_id: int) -> None:
    local_generations[deployment_id] += 1
    if not settings.REDIS_URL:
        return
    from lib.redis import redis_client

    pipe = redis_client().pipeline()
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
    from lib.redis import redis_client

    try:
        redis_client().publish(HEALTH_CHANNEL, f"{replica_id}:{int(up)}:{public_id}")
    except Exception:
        # Best effort: the gateways' own ejection cooldown still expires without it.
        pass
