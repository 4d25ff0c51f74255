"""The balancer's choices, ejection and probe handling, on a fake clock (no I/O)."""

from __future__ import annotations

from collections import Counter

from gateway.balancer import Balancer, Replica


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replicas(*weights: int, down: tuple[int, ...] = ()) -> tuple[Replica, ...]:
    return tuple(
        Replica(
            id=i + 1,
            uid=f"uid-{i + 1}",
            base_url=f"http://127.0.0.1:{9000 + i}/v1",
            auth=None,
            weight=w,
            probed_down=i + 1 in down,
            label=f"r{i + 1}",
        )
        for i, w in enumerate(weights)
    )


def test_an_idle_deployment_splits_traffic_exactly_by_weight():
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60, clock=Clock())
    pool = replicas(1, 2, 3)
    picks = Counter(balancer.pick(pool).id for _ in range(600))
    assert picks == {1: 100, 2: 200, 3: 300}


def test_a_replica_far_busier_than_the_least_busy_one_is_skipped():
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60, clock=Clock())
    a, b = replicas(1, 2)
    for _ in range(5):
        balancer.acquire(b)  # b: 2.5 in flight per weight, a: 0
    assert {balancer.pick((a, b)).id for _ in range(6)} == {1}
    balancer.acquire(a)
    balancer.acquire(a)  # a: 2.0, b: 2.5 -> both within one of the least busy: by weight again
    assert {balancer.pick((a, b)).id for _ in range(6)} == {1, 2}
    balancer.release(a, ok=True)
    balancer.release(a, ok=True)
    assert balancer.states[1].inflight == 0


def test_failures_eject_for_a_cooldown_that_doubles_and_a_success_resets_it():
    clock = Clock()
    balancer = Balancer(eject_seconds=5, eject_max_seconds=12, clock=clock)
    a, b = replicas(1, 1)
    balancer.acquire(a)
    balancer.release(a, ok=False)
    assert {balancer.pick((a, b)).id for _ in range(10)} == {2}
    clock.now += 5.01
    assert {balancer.pick((a, b)).id for _ in range(10)} == {1, 2}
    balancer.eject(a)  # second failure in a row: 10 s
    clock.now += 9.9
    assert {balancer.pick((a, b)).id for _ in range(10)} == {2}
    clock.now += 0.2
    balancer.eject(a)  # third: capped at 12 s
    assert balancer.states[1].ejected_until == clock.now + 12
    clock.now += 12.01
    balancer.acquire(a)
    balancer.release(a, ok=True)
    assert balancer.states[1].failures == 0
    balancer.eject(a)
    assert balancer.states[1].ejected_until == clock.now + 5
    assert balancer.states[1].ejections == 4


def test_a_4xx_or_a_client_leaving_neither_ejects_nor_heals():
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60, clock=Clock())
    (a,) = replicas(1)
    balancer.eject(a)
    balancer.acquire(a)
    balancer.release(a, ok=None)
    assert balancer.states[1].failures == 1 and balancer.states[1].inflight == 0


def test_a_successful_probe_ends_an_ejection_and_a_failed_one_takes_the_replica_out():
    clock = Clock()
    balancer = Balancer(eject_seconds=60, eject_max_seconds=60, clock=clock)
    a, b = replicas(1, 1)
    balancer.eject(a)
    balancer.probed(1, "uid-1", True)
    assert {balancer.pick((a, b)).id for _ in range(4)} == {1, 2}
    balancer.probed(2, "uid-2", False)
    assert {balancer.pick((a, b)).id for _ in range(4)} == {1}
    balancer.forget_probes()  # the fan-out reconnected: back to the loaded status (up)
    assert {balancer.pick((a, b)).id for _ in range(4)} == {1, 2}


def test_a_probe_message_for_another_databases_replica_is_ignored():
    balancer = Balancer(eject_seconds=60, eject_max_seconds=60, clock=Clock())
    a, b = replicas(1, 1)
    balancer.pick((a, b))
    balancer.probed(1, "someone-elses-replica-1", False)
    assert {balancer.pick((a, b)).id for _ in range(4)} == {1, 2}


def test_a_replica_the_worker_found_down_gets_no_traffic_until_it_is_probed_up():
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60, clock=Clock())
    pool = replicas(1, 1, down=(2,))
    assert {balancer.pick(pool).id for _ in range(6)} == {1}
    balancer.probed(2, "uid-2", True)
    assert {balancer.pick(pool).id for _ in range(6)} == {1, 2}


def test_when_every_replica_is_out_the_one_back_soonest_is_tried():
    clock = Clock()
    balancer = Balancer(eject_seconds=5, eject_max_seconds=60, clock=clock)
    a, b, c = replicas(1, 1, 1, down=(3,))
    balancer.eject(a)
    balancer.eject(a)  # 10 s
    balancer.eject(b)  # 5 s
    assert balancer.pick((a, b, c)) is None
    assert balancer.panic_pick((a, b, c)).id == 2
    assert balancer.panic_pick((a, b, c), exclude=2).id == 1
