"""The fair queue on the in-process capacity (the embedded default): turns by priority, never more
than the cap at once, a full queue, a wait that runs out, a waiter that leaves, and slots taken
without queueing counted against a workspace's turns. Each request takes and gives back its slot
as gateway.balancer.UpstreamPool does. Redis-backed caps across gateway processes are tested with
real processes in test_gateway_replicas.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.balancer import Balancer, Replica
from gateway.capacity import ADMISSION_COST_MS, UNQUEUED_LEAD_MS, FairQueue, LocalCapacity, QueueFull, QueueTimeout
from tests.gateway_support import run_async

REPLICA = Replica(id=1, uid="uid-1", base_url="http://127.0.0.1:9/v1", auth=None, max_concurrent=1, label="r1")


class Pool:
    """A capped replica, its capacity and its queue, used the way UpstreamPool uses them."""

    def __init__(self, replica: Replica = REPLICA):
        self.replica = replica
        self.balancer = Balancer(eject_seconds=5, eject_max_seconds=60)
        self.capacity = LocalCapacity(self.balancer)
        self.queue = FairQueue(self.capacity, "dep")
        self.active = self.most_active = 0

    def candidates(self) -> list:
        return [(self.replica, self.replica.max_concurrent)]

    async def take_now(self, lease_id: str, workspace_id: int):
        got = await self.capacity.acquire(self.candidates(), lease_id, deployment_key="dep", workspace_id=workspace_id, priority=1)
        assert got is self.replica
        self._started()
        return lease_id

    async def wait(self, workspace_id: int, priority: int = 1, *, limit: int = 100, seconds: float = 10):
        got, lease_id = await self.queue.wait(
            workspace_id=workspace_id, priority=priority, limit=limit, deadline=time.monotonic() + seconds, candidates=self.candidates
        )
        assert got is self.replica
        self._started()
        return lease_id

    def _started(self) -> None:
        self.balancer.acquire(self.replica)
        self.active += 1
        self.most_active = max(self.most_active, self.active)

    def give_back(self, lease_id: str) -> None:
        self.active -= 1
        self.balancer.release(self.replica, ok=True)
        self.capacity.release(lease_id, then=self.queue.notify)


def test_queued_workspaces_take_turns_by_priority_never_more_than_the_cap_at_once():
    async def run():
        pool = Pool()
        first = await pool.take_now("first", workspace_id=9)  # full
        order = []

        async def request(workspace_id, priority, name):
            lease_id = await pool.wait(workspace_id, priority)
            order.append(name)
            await asyncio.sleep(0.01)
            pool.give_back(lease_id)

        tasks = [asyncio.create_task(request(1, 1, f"a{i}")) for i in range(6)]
        tasks += [asyncio.create_task(request(2, 2, f"b{i}")) for i in range(6)]
        await asyncio.sleep(0.01)
        pool.give_back(first)
        await asyncio.gather(*tasks)
        return order, pool.most_active

    order, most_active = run_async(run())
    # Priority 2 takes two turns for every one of priority 1 while both wait.
    first_nine = order[:9]
    assert sum(name.startswith("b") for name in first_nine) == 6 and sum(name.startswith("a") for name in first_nine) == 3
    # One slot: the queue never granted a second before the first was given back.
    assert most_active == 1


def test_a_full_queue_and_an_expired_wait_are_refused_and_leave_nothing_behind():
    async def run():
        pool = Pool()
        first = await pool.take_now("first", workspace_id=9)
        waiting = asyncio.create_task(pool.wait(1, limit=1, seconds=0.2))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await pool.wait(2, limit=1, seconds=5)
        with pytest.raises(QueueTimeout):
            await waiting
        assert pool.queue.size == 0 and not pool.queue.by_workspace
        # A waiter whose client leaves is forgotten too.
        leaving = asyncio.create_task(pool.wait(3, limit=5, seconds=5))
        await asyncio.sleep(0.01)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert pool.queue.size == 0
        pool.give_back(first)
        await pool.wait(4, limit=5, seconds=5)
        assert pool.capacity.held == {REPLICA.id: 1}

    run_async(run())


def test_slots_taken_without_queueing_count_against_a_workspaces_turns_up_to_a_bound():
    async def run():
        pool = Pool(Replica(id=2, uid="uid-2", base_url="http://127.0.0.1:9/v1", auth=None, max_concurrent=3, label="r2"))
        # Workspace 1's burst takes all three slots at once; then both workspaces queue, 1 first.
        held = [await pool.take_now(f"now{i}", workspace_id=1) for i in range(3)]
        order = []

        async def request(workspace_id):
            await pool.wait(workspace_id)
            order.append(workspace_id)

        tasks = [asyncio.create_task(request(1)) for _ in range(2)]
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(request(2)) for _ in range(2)]
        await asyncio.sleep(0.01)
        for lease_id in held:
            pool.give_back(lease_id)
        while len(order) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        admitted = list(order)
        for task in tasks:
            task.cancel()

        # However long a workspace had the deployment to itself, its clock runs at most
        # UNQUEUED_LEAD_MS ahead of now through such admissions.
        alone = LocalCapacity(Balancer(eject_seconds=5, eject_max_seconds=60))
        for i in range(100):
            await alone.acquire([(pool.replica, None)], f"alone{i}", deployment_key="dep", workspace_id=7, priority=1)
        lead = alone.clocks["dep"][7] - time.monotonic() * 1000
        return admitted, lead

    admitted, lead = run_async(run())
    # Of the three slots freed, workspace 2 (nothing in flight yet) gets two before workspace 1,
    # which queued first but already had three; the fourth waiter is still waiting.
    assert admitted == [2, 2, 1]
    assert UNQUEUED_LEAD_MS - ADMISSION_COST_MS < lead <= UNQUEUED_LEAD_MS
