"""The fair queue on the in-process capacity (the embedded default): turns by priority, a full
queue, a wait that runs out, a waiter that leaves. Redis-backed caps across gateway processes are
tested with real processes in test_gateway_replicas.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.balancer import Balancer, Replica
from gateway.capacity import FairQueue, LocalCapacity, QueueFull, QueueTimeout
from tests.gateway_support import run_async

REPLICA = Replica(id=1, uid="uid-1", base_url="http://127.0.0.1:9/v1", auth=None, max_concurrent=1, label="r1")


def setup():
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60)
    capacity = LocalCapacity(balancer)
    queue = FairQueue(capacity, "dep")
    return balancer, queue, lambda: [(REPLICA, 1)] if balancer.state(REPLICA).inflight < 1 else []


def test_queued_workspaces_take_turns_by_priority():
    async def run():
        balancer, queue, candidates = setup()
        balancer.acquire(REPLICA)  # full
        order = []

        async def request(workspace_id, priority, name):
            replica, lease = await queue.wait(
                workspace_id=workspace_id, priority=priority, limit=100, deadline=time.monotonic() + 10, candidates=candidates
            )
            balancer.acquire(replica)
            order.append(name)
            await asyncio.sleep(0.01)
            balancer.release(replica, ok=True)
            queue.notify()

        tasks = [asyncio.create_task(request(1, 1, f"a{i}")) for i in range(6)]
        tasks += [asyncio.create_task(request(2, 2, f"b{i}")) for i in range(6)]
        await asyncio.sleep(0.01)
        balancer.release(REPLICA, ok=True)
        queue.notify()
        await asyncio.gather(*tasks)
        return order

    order = run_async(run())
    # Priority 2 takes two turns for every one of priority 1 while both wait.
    first_nine = order[:9]
    assert sum(name.startswith("b") for name in first_nine) == 6 and sum(name.startswith("a") for name in first_nine) == 3


def test_a_full_queue_and_an_expired_wait_are_refused_and_leave_nothing_behind():
    async def run():
        balancer, queue, candidates = setup()
        balancer.acquire(REPLICA)
        waiting = asyncio.create_task(
            queue.wait(workspace_id=1, priority=1, limit=1, deadline=time.monotonic() + 0.2, candidates=candidates)
        )
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await queue.wait(workspace_id=2, priority=1, limit=1, deadline=time.monotonic() + 5, candidates=candidates)
        with pytest.raises(QueueTimeout):
            await waiting
        assert queue.size == 0 and not queue.by_workspace
        # A waiter whose client leaves is forgotten too.
        leaving = asyncio.create_task(queue.wait(workspace_id=3, priority=1, limit=5, deadline=time.monotonic() + 5, candidates=candidates))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert queue.size == 0
        balancer.release(REPLICA, ok=True)
        got = await queue.wait(workspace_id=4, priority=1, limit=5, deadline=time.monotonic() + 5, candidates=candidates)
        assert got[0] is REPLICA

    run_async(run())
