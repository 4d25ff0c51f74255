"""Replicas behind one deployment, with real processes: three demo upstreams, two gateways and,
for the probes, a Celery worker.

Traffic follows the weights; an upstream killed mid-run costs no non-streamed request (retried on
another replica), streams already started on it end with an error event and are metered; the
restarted upstream is back on both gateways as soon as the worker's probe round finds it up; a
retry happens once, only before anything reached the client, never for a 4xx, only within the
request's timeout; the fallback deployment takes over when every replica is down; capped
replicas hold their cap across both gateways and queue fairly by sub-workspace and priority.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import threading
import time

import httpx
import pytest

from console.audit import Actor
from deployments import health, tasks
from deployments.services import deployment_create, deployment_update, replica_add
from tests import gateway_support
from tests.factories import make_key
from tests.gateway_support import UPSTREAM_KEY, Server, demo_stats, metric, start_demo, start_gateway, wait_for
from tests.worker_processes import Worker
from tests.worker_processes import wait_for as wait_for_worker
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)

COOLDOWN = 30  # longer than any phase below: only a probe can bring an ejected replica back early


@pytest.fixture(scope="module")
def upstreams():
    servers = [start_demo() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def pair(django_db_setup, django_db_blocker):
    a = start_gateway("gateway-replicas-a", GATEWAY_EJECT_SECONDS=str(COOLDOWN), GATEWAY_EJECT_MAX_SECONDS="120")
    try:
        b = start_gateway("gateway-replicas-b", GATEWAY_EJECT_SECONDS=str(COOLDOWN), GATEWAY_EJECT_MAX_SECONDS="120")
    except Exception:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def restart_demo(port: int) -> Server:
    import os
    import sys

    args = [sys.executable, "-m", "deployments.demo_model", "--port", str(port), "--api-key", UPSTREAM_KEY]
    return Server("demo", args, dict(os.environ), port, "/healthz")


def pool_deployment(world, urls: list[str], weights: list[int], *, upstream_model: str = "gatehouse-demo", name: str = "Pool", **fields):
    actor = Actor.system("tests")
    deployment = deployment_create(
        **fields,
        workspace=world.org,
        actor=actor,
        name=name,
        model_id=f"@acme/{name.lower()}",
        upstream_base_url=urls[0] + "/v1",
        upstream_weight=weights[0],
        upstream_api_key=UPSTREAM_KEY,
        upstream_model=upstream_model,
        input_per_million="1",
        output_per_million="2",
    )
    for url, weight in zip(urls[1:], weights[1:], strict=True):
        replica_add(deployment=deployment, actor=actor, base_url=url + "/v1", weight=weight, api_key=UPSTREAM_KEY)
    return deployment, list(deployment.replicas.order_by("id"))


def reset(servers) -> None:
    for server in servers:
        httpx.delete(server.url + "/_demo/stats", timeout=5)


def body(model: str, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}], **extra}


async def fire(gateways, plaintext: str, payload: dict, *, total: int, concurrency: int) -> list[int]:
    """`total` non-streamed requests, alternating between the gateways, `concurrency` at a time."""
    statuses: list[int] = []
    queue = list(range(total))
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {plaintext}"}) as client:

        async def worker():
            while queue:
                i = queue.pop()
                response = await client.post(gateways[i % len(gateways)].url + "/v1/chat/completions", json=payload)
                statuses.append(response.status_code)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_traffic_follows_the_weights_across_two_gateways(world, upstreams, pair):
    deployment, _ = pool_deployment(world, [u.url for u in upstreams], [1, 2, 3])
    _, plaintext = make_key(world.org, all_models=True)
    reset(upstreams)

    statuses = gateway_support.run_async(fire(pair, plaintext, body(deployment.model_id), total=600, concurrency=4))

    assert statuses == [200] * 600
    served = [demo_stats(u).get("requests", 0) for u in upstreams]
    assert sum(served) == 600
    for count, expected in zip(served, [100, 200, 300], strict=True):
        assert abs(count - expected) <= expected * 0.10, served
    # Each usage event names the replica that answered.
    by_replica = {r.id: 0 for r in deployment.replicas.all()}
    for replica_id in UsageEvent.objects.filter(deployment=deployment).values_list("replica_id", flat=True):
        by_replica[replica_id] += 1
    assert sorted(by_replica.values()) == sorted(served)


async def stream_until_first_chunk(client: httpx.AsyncClient, url: str, payload: dict):
    request = client.build_request("POST", url, json=payload)
    response = await client.send(request, stream=True)
    chunks = response.aiter_raw()
    first = await chunks.__anext__()
    return response, chunks, first


async def read_rest(response, chunks, first: bytes) -> bytes:
    data = first
    try:
        async for chunk in chunks:
            data += chunk
    finally:
        await response.aclose()
    return data


def test_an_upstream_killed_mid_run_fails_no_request_and_comes_back_after_a_probe(world, upstreams, pair, tmp_path):
    deployment, replicas = pool_deployment(world, [u.url for u in upstreams], [1, 1, 1], upstream_model="gatehouse-demo+latency_ms=20")
    _, plaintext = make_key(world.org, all_models=True)
    victim_index = 1
    victim, victim_replica = upstreams[victim_index], replicas[victim_index]
    slow_stream = body(deployment.model_id, stream=True, max_tokens=40, metadata={"demo_chunk_delay_ms": "150", "demo_reply_tokens": "40"})

    async def run():
        headers = {"authorization": f"Bearer {plaintext}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as client:
            # Six slow streams, spread over the replicas by the balancer, each past its first chunk.
            streams = [await stream_until_first_chunk(client, pair[i % 2].url + "/v1/chat/completions", slow_stream) for i in range(6)]
            statuses: list[int] = []
            stop = asyncio.Event()

            async def load(i: int):
                while not stop.is_set():
                    response = await client.post(pair[i % 2].url + "/v1/chat/completions", json=body(deployment.model_id))
                    statuses.append(response.status_code)

            loaders = [asyncio.create_task(load(i)) for i in range(4)]
            await asyncio.sleep(1.0)
            victim.process.send_signal(signal.SIGKILL)  # no goodbye: connections just die
            killed_at = time.time()
            await asyncio.sleep(1.5)
            failed_after_shift = sum(metric(g, "gatehouse_gateway_replica_requests_total", outcome="failed") for g in pair)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*loaders)
            failed_at_end = sum(metric(g, "gatehouse_gateway_replica_requests_total", outcome="failed") for g in pair)
            bodies = [await read_rest(*s) for s in streams]
            return statuses, bodies, [s[0].headers["x-request-id"] for s in streams], killed_at, failed_after_shift, failed_at_end

    statuses, bodies, stream_ids, killed_at, failed_after_shift, failed_at_end = gateway_support.run_async(run())
    victim.process.wait(5)

    # Zero failed non-streamed requests: the ones that hit the dead replica were retried elsewhere.
    # (Requests in flight on it when it died were retried; whether any were depends on timing, and
    # retries are proven on their own in test_a_dead_replica_costs_a_retry_not_a_failed_request.)
    assert len(statuses) > 20 and set(statuses) == {200}
    # Within one cooldown the traffic has shifted: no more attempts on the dead replica after the first failures.
    assert failed_after_shift >= 1 and failed_at_end == failed_after_shift, (failed_after_shift, failed_at_end)

    # Streams: those on the dead replica end with an error event and are metered as such.
    events = {e.request_id: e for e in UsageEvent.objects.filter(request_id__in=stream_ids)}
    assert len(events) == 6
    on_victim = [i for i, rid in enumerate(stream_ids) if events[rid].replica_id == victim_replica.id]
    assert on_victim, "the balancer put no stream on the victim"
    for i, request_id in enumerate(stream_ids):
        event, text = events[request_id], bodies[i].decode()
        if i in on_victim:
            last = [line for line in text.split("\n\n") if line.startswith("data: ")][-1]
            assert json.loads(last[6:])["error"]["code"] in ("upstream_unreachable", "upstream_incomplete")
            assert event.status_code == 502 and event.streamed and event.completion_tokens >= 1
        else:
            assert text.rstrip().endswith("data: [DONE]") and event.status_code == 200
    after_kill = UsageEvent.objects.filter(deployment=deployment, streamed=False, created_at__gt=_at(killed_at + 0.2))
    assert after_kill.exists() and not after_kill.filter(replica_id=victim_replica.id).exists()
    assert not UsageEvent.objects.filter(deployment=deployment, streamed=False).exclude(status_code=200).exists()

    # Restarted, it stays out (ejected for COOLDOWN seconds) until the worker's probe finds it up.
    upstreams[victim_index] = restart_demo(victim.port)
    payload = body(deployment.model_id)
    assert gateway_support.run_async(fire(pair, plaintext, payload, total=30, concurrency=2)) == [200] * 30
    assert demo_stats(upstreams[victim_index]).get("requests", 0) == 0
    # The next round of probes (what beat sends every minute), run by a real Celery worker: one
    # replica_probe task per replica, each publishing its result to the gateways over Redis.
    worker = Worker(tmp_path, default_queue=True)
    try:
        worker.run(tasks.deployments_probe_all)
        wait_for_worker(lambda: worker.succeeded_count(tasks.replica_probe) == 3, timeout=60, what="the worker to probe the three replicas")
    finally:
        worker.stop()
    victim_replica.refresh_from_db()
    assert victim_replica.status == "up"

    # Back on both gateways well within its cooldown (30 s doubled by each failure): the probe did it.
    def victim_served() -> bool:
        assert gateway_support.run_async(fire(pair, plaintext, payload, total=12, concurrency=2)) == [200] * 12
        return demo_stats(upstreams[victim_index]).get("requests", 0) >= 4

    assert wait_for(victim_served, timeout=10, interval=0.1)
    assert {g.url: metric(g, "gatehouse_gateway_replica_requests_total", replica=str(victim_replica), outcome="ok") > 0 for g in pair} == {
        g.url: True for g in pair
    }


def _at(epoch: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


def test_a_dead_replica_costs_a_retry_not_a_failed_request(world, upstreams, pair):
    dead = f"http://127.0.0.1:{gateway_support.free_port()}"
    deployment, replicas = pool_deployment(world, [dead, upstreams[0].url], [1, 1], name="Halfdead")
    _, plaintext = make_key(world.org, all_models=True)
    retries_before = sum(metric(g, "gatehouse_gateway_replica_retries_total") for g in pair)

    statuses = gateway_support.run_async(fire(pair, plaintext, body(deployment.model_id), total=20, concurrency=1))

    assert statuses == [200] * 20
    # Each gateway tried the dead replica once (round robin puts it first or second), retried on
    # the live one, and then left it alone (ejected).
    assert sum(metric(g, "gatehouse_gateway_replica_retries_total") for g in pair) - retries_before == 2
    assert set(UsageEvent.objects.filter(deployment=deployment).values_list("replica_id", flat=True)) == {replicas[1].id}
    assert all(metric(g, "gatehouse_gateway_replica_ejections_total", replica=replicas[0].__str__()) == 1 for g in pair)

    # The details page's figures: the gateways' live reports (every 5 s) and the last hour's events.
    from deployments.live import replica_figures
    from usage.selectors import replica_last_hour

    def reported():
        found = replica_figures(replicas, last_hour=replica_last_hour([r.id for r in replicas]))
        return found if found[replicas[0].id].processes == 2 else None

    figures = wait_for(reported, timeout=15)
    assert figures is not None
    dead_figures, live_figures = figures[replicas[0].id], figures[replicas[1].id]
    assert (dead_figures.ejections, dead_figures.ejected_on, dead_figures.inflight) == (2, 2, 0)
    assert (live_figures.requests, live_figures.errors, live_figures.ejections) == (20, 0, 0) and live_figures.p95_ms is not None


def served(servers) -> int:
    return sum(demo_stats(s).get("requests", 0) for s in servers)


class resetting_server:
    """A loopback TCP server that reads a request and resets the connection (RST) without answering."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def __exit__(self, *exc):
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() above
        self.sock.close()
        self.thread.join(5)


def test_a_retry_happens_once_only_before_any_byte_never_for_a_4xx_and_only_within_the_timeout(world, upstreams, pair):
    urls = [u.url for u in upstreams]
    refusing, _ = pool_deployment(world, urls, [1, 1, 1], upstream_model="gatehouse-demo+fail=400", name="Refusing")
    failing, failing_replicas = pool_deployment(world, urls, [1, 1, 1], upstream_model="gatehouse-demo+fail=503", name="Failing")
    slow, _ = pool_deployment(
        world, urls, [1, 1, 1], upstream_model="gatehouse-demo+latency_ms=700+fail=503", name="Slow", timeout_seconds=1
    )
    dead = f"http://127.0.0.1:{gateway_support.free_port()}"
    halfdead, halfdead_replicas = pool_deployment(world, [dead, upstreams[0].url], [1, 1], name="Halfdead-stream")
    _, plaintext = make_key(world.org, all_models=True)  # made last: its routes include every deployment above
    headers = {"authorization": f"Bearer {plaintext}"}
    gateway = pair[0]

    def retries() -> float:
        return metric(gateway, "gatehouse_gateway_replica_retries_total")

    def call(deployment, **extra) -> httpx.Response:
        return httpx.post(gateway.url + "/v1/chat/completions", json=body(deployment.model_id, **extra), headers=headers, timeout=30)

    # A 4xx is the caller's answer: passed on at once, no second replica asked.
    reset(upstreams)
    before = retries()
    response = call(refusing)
    assert response.status_code == 400 and response.json()["error"]["code"] == "upstream_rejected"
    assert served(upstreams) == 1 and retries() == before

    # A 503 is retried once on another replica, and only once though a third one is there; the
    # request is metered once, with the replica that gave the answer the client got.
    reset(upstreams)
    before = retries()
    response = call(failing)
    assert response.status_code == 502 and response.json()["error"]["code"] == "upstream_error", response.text
    assert served(upstreams) == 2 and retries() == before + 1
    event = UsageEvent.objects.get(deployment=failing)
    assert event.request_id == response.headers["x-request-id"] and event.status_code == 502
    asked = [i for i, u in enumerate(upstreams) if demo_stats(u).get("requests", 0)]
    assert len(asked) == 2 and event.replica_id in {failing_replicas[i].id for i in asked}

    # The retry has to fit in the request's timeout: a 503 that took 0.7 s of a 1 s timeout is
    # not sent anywhere else (less than MIN_RETRY_SECONDS would be left).
    reset(upstreams)
    before = retries()
    response = call(slow)
    assert response.status_code in (502, 504), response.text
    assert served(upstreams) == 1 and retries() == before
    assert UsageEvent.objects.filter(deployment=slow).count() == 1

    # A server that takes the request and resets the connection before any response head: retried.
    with resetting_server() as resetter:
        flaky, flaky_replicas = pool_deployment(world, [resetter.url, upstreams[0].url], [1, 1], name="Resetting")
        _, flaky_key = make_key(world.org, deployments=[flaky])
        before = retries()
        response = httpx.post(
            gateway.url + "/v1/chat/completions", json=body(flaky.model_id), headers={"authorization": f"Bearer {flaky_key}"}, timeout=30
        )
        assert resetter.accepted >= 1  # the first try went there and was cut off
    assert response.status_code == 200 and retries() == before + 1
    assert UsageEvent.objects.get(deployment=flaky).replica_id == flaky_replicas[1].id

    # A stream whose replica refuses the connection is retried too (nothing was sent yet), and
    # the client gets one whole stream from the live replica.
    before = retries()
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body(halfdead.model_id, stream=True), headers=headers, timeout=30
    ) as response:
        text = response.read().decode()
    assert response.status_code == 200 and text.rstrip().endswith("data: [DONE]") and retries() == before + 1
    event = UsageEvent.objects.get(deployment=halfdead)
    assert event.replica_id == halfdead_replicas[1].id and event.streamed and event.status_code == 200


def test_the_fallback_deployment_answers_when_every_replica_is_down(world, upstreams, pair):
    dead = [f"http://127.0.0.1:{gateway_support.free_port()}" for _ in range(2)]
    primary, _ = pool_deployment(world, dead, [1, 1], name="Primary")
    fallback, _ = pool_deployment(world, [upstreams[0].url], [1], name="Spare")
    deployment_update(
        deployment=primary,
        actor=Actor.system("tests"),
        name=primary.name,
        model_id=primary.model_id,
        upstream_base_url=primary.upstream_base_url,
        upstream_model=primary.upstream_model,
        fallback=fallback,
    )
    fallback.prices.update(input_per_million="5", output_per_million="7")
    _, both = make_key(world.org, all_models=True)
    _, primary_only = make_key(world.org, deployments=[primary])
    # The worker finds both replicas down (and tells the gateways).
    health.deployment_health_check(deployment_id=primary.id)
    primary.refresh_from_db()
    assert primary.status == "unreachable"
    time.sleep(0.3)

    for gateway in pair:
        response = httpx.post(
            gateway.url + "/v1/chat/completions", json=body(primary.model_id), headers={"authorization": f"Bearer {both}"}, timeout=30
        )
        assert response.status_code == 200
        assert response.headers["x-gatehouse-fallback"] == fallback.model_id
        assert response.json()["model"] == fallback.model_id
        event = UsageEvent.objects.get(request_id=response.headers["x-request-id"])
        assert event.deployment_id == fallback.id and (event.input_price_per_million, event.output_price_per_million) == (5, 7)

    # A key that may not call the fallback gets the primary's own failure (after one retry).
    refused = httpx.post(
        pair[1].url + "/v1/chat/completions", json=body(primary.model_id), headers={"authorization": f"Bearer {primary_only}"}, timeout=30
    )
    assert refused.status_code == 502 and "x-gatehouse-fallback" not in refused.headers
    assert refused.json()["error"]["code"] == "upstream_unreachable"
    assert UsageEvent.objects.get(request_id=refused.headers["x-request-id"]).deployment_id == primary.id


def warm(pair, model_id: str, keys: list[str]) -> None:
    """One call per key on each gateway, so the keys are cached and a burst arrives in the order it is sent."""
    for gateway in pair:
        for key in keys:
            response = httpx.post(
                gateway.url + "/v1/chat/completions", json=body(model_id), headers={"authorization": f"Bearer {key}"}, timeout=30
            )
            assert response.status_code == 200


async def burst(pair, model_id: str, plan: list[tuple[str, str]], refusals: list) -> list[tuple[str, int, int]]:
    """Every (name, key) of the plan at once, sent 3 ms apart (all in flight together, arriving in
    the order sent); each name's requests alternate between the gateways, as a load balancer in
    front would spread them. (name, status, queued ms) per request; (Retry-After, code) per 429."""
    results: list = []

    async def one(client, gateway, key, name, delay):
        await asyncio.sleep(delay)
        response = await client.post(gateway.url + "/v1/chat/completions", json=body(model_id), headers={"authorization": f"Bearer {key}"})
        results.append((name, response.status_code, int(response.headers.get("x-gatehouse-queued-ms", "0"))))
        if response.status_code == 429:
            refusals.append((response.headers.get("retry-after"), response.json()["error"]["code"]))

    seen: dict[str, int] = {}
    jobs = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        for name, key in plan:
            seen[name] = seen.get(name, -1) + 1
            jobs.append(one(client, pair[seen[name] % 2], key, name, len(jobs) * 0.003))
        await asyncio.gather(*jobs)
    return results


def median_waits(results) -> tuple[dict[str, list[int]], dict[str, float]]:
    waits: dict[str, list[int]] = {}
    for name, _, waited in results:
        waits.setdefault(name, []).append(waited)
    for w in waits.values():
        w.sort()
    return waits, {name: (w[len(w) // 2 - 1] + w[len(w) // 2]) / 2 for name, w in waits.items()}


def test_capacity_caps_each_replica_and_queues_fairly_across_sub_workspaces(world, upstreams, pair):
    from console.services import workspace_create
    from deployments.services import model_grant_add, replica_update

    actor = Actor.system("tests")
    servers = [upstreams[0], upstreams[2]]
    deployment, replicas = pool_deployment(world, [s.url for s in servers], [1, 1], upstream_model="gatehouse-demo+latency_ms=400")
    for replica in replicas:
        replica_update(replica=replica, actor=actor, base_url=replica.base_url, weight=1, max_concurrent=4)
    big = world.sub
    small = workspace_create(name="Support", slug="acme-support", parent=world.org, actor=actor)
    for workspace in (big, small):
        model_grant_add(deployment=deployment, workspace=workspace, actor=actor)
    _, big_key = make_key(big, all_models=True)
    _, small_key = make_key(small, all_models=True)
    warm(pair, deployment.model_id, [big_key, small_key])
    reset(servers)

    # 40 at once: 30 from the big sub-workspace, 10 from the small one, arriving interleaved 3:1.
    refusals: list = []  # (Retry-After, error code) of every 429
    plan = [("big", big_key) if i % 4 != 3 else ("small", small_key) for i in range(40)]
    results = gateway_support.run_async(burst(pair, deployment.model_id, plan, refusals))

    assert [status for _, status, _ in results] == [200] * 40
    stats = [demo_stats(s) for s in servers]
    assert all(s["max_inflight"] <= 4 for s in stats), stats  # the upstreams counted their own concurrency
    assert sum(s["requests"] for s in stats) == 40
    waits, median = median_waits(results)
    assert median["big"] > 0 and median["small"] <= median["big"] / 2, waits

    # Queue full: a short queue sends the overflow back at once with 429 and Retry-After.
    deployment_update(
        deployment=deployment,
        actor=actor,
        name=deployment.name,
        model_id=deployment.model_id,
        upstream_base_url=deployment.upstream_base_url,
        upstream_model=deployment.upstream_model,
        queue_max_waiting=2,
    )
    time.sleep(0.3)
    reset(servers)
    overflow = gateway_support.run_async(burst(pair, deployment.model_id, [("big", big_key)] * 24, refusals))
    statuses = [status for _, status, _ in overflow]
    assert statuses.count(200) >= 8 and statuses.count(429) >= 1 and set(statuses) == {200, 429}
    assert refusals == [("1", "capacity_exceeded")] * statuses.count(429)
    assert all(s["max_inflight"] <= 4 for s in (demo_stats(s) for s in servers))
    refused = UsageEvent.objects.filter(deployment=deployment, status_code=429)
    assert refused.count() == statuses.count(429) and set(refused.values_list("error_code", flat=True)) == {"capacity_exceeded"}
    response = httpx.post(
        pair[0].url + "/v1/chat/completions",
        json=body(deployment.model_id),
        headers={"authorization": f"Bearer {big_key}"},
        timeout=30,
    )
    assert response.status_code == 200  # nothing left behind: the slots were all given back

    # A wait that runs out: with a 1 s queue wait and 0.4 s answers, the back of a 40-request
    # burst over 8 slots (five rounds) is still waiting after a second and gets the same 429.
    deployment_update(
        deployment=deployment,
        actor=actor,
        name=deployment.name,
        model_id=deployment.model_id,
        upstream_base_url=deployment.upstream_base_url,
        upstream_model=deployment.upstream_model,
        queue_timeout_seconds=1,
        queue_max_waiting=100,
    )
    time.sleep(0.3)
    refusals.clear()
    expired = gateway_support.run_async(burst(pair, deployment.model_id, [("big", big_key)] * 40, refusals))
    statuses = [status for _, status, _ in expired]
    assert statuses.count(200) >= 8 and statuses.count(429) >= 1 and set(statuses) == {200, 429}
    assert refusals == [("1", "capacity_exceeded")] * statuses.count(429)
    last = UsageEvent.objects.filter(deployment=deployment, status_code=429).order_by("-created_at").first()
    assert last.error_code == "capacity_exceeded"


def test_a_sub_workspace_with_a_higher_queue_priority_waits_less_across_two_gateways(world, upstreams, pair):
    """The priority set by the organisation weighs the fair queue's turns in Redis (one clock per
    sub-workspace shared by both gateways): with equal bursts, priority 4 against 1 gets about
    four admissions for each one of the other while both wait."""
    from django.db import transaction

    from console.services import workspace_create
    from deployments.services import model_grant_add, replica_update, workspace_queue_priority_set

    actor = Actor.system("tests")
    servers = [upstreams[0], upstreams[2]]
    deployment, replicas = pool_deployment(world, [s.url for s in servers], [1, 1], upstream_model="gatehouse-demo+latency_ms=400")
    for replica in replicas:
        replica_update(replica=replica, actor=actor, base_url=replica.base_url, weight=1, max_concurrent=4)
    urgent = world.sub
    batch = workspace_create(name="Batch", slug="acme-batch", parent=world.org, actor=actor)
    with transaction.atomic():
        workspace_queue_priority_set(workspace=urgent, actor=actor, priority=4)
    for workspace in (urgent, batch):
        model_grant_add(deployment=deployment, workspace=workspace, actor=actor)
    _, urgent_key = make_key(urgent, all_models=True)
    _, batch_key = make_key(batch, all_models=True)
    warm(pair, deployment.model_id, [urgent_key, batch_key])
    reset(servers)

    # 40 at once, 20 from each, arriving interleaved 1:1.
    plan = [("urgent", urgent_key) if i % 2 == 0 else ("batch", batch_key) for i in range(40)]
    refusals: list = []
    results = gateway_support.run_async(burst(pair, deployment.model_id, plan, refusals))

    assert [status for _, status, _ in results] == [200] * 40 and not refusals
    assert all(s["max_inflight"] <= 4 for s in (demo_stats(s) for s in servers))
    waits, median = median_waits(results)
    assert median["batch"] > 0 and median["urgent"] <= median["batch"] / 2, waits


def test_without_redis_one_gateway_process_holds_the_cap_and_queues(world, upstreams):
    """The embedded default (no REDIS_URL: one process, in-process leases): a burst of 12 on one
    replica capped at 2 all succeed through the queue, and the upstream never sees more than 2."""
    from deployments.services import replica_update

    server = upstreams[2]
    deployment, (replica,) = pool_deployment(world, [server.url], [1], upstream_model="gatehouse-demo+latency_ms=200", name="Solo")
    replica_update(replica=replica, actor=Actor.system("tests"), base_url=replica.base_url, weight=1, max_concurrent=2)
    _, key = make_key(world.org, all_models=True)
    alone = start_gateway("gateway-no-redis", REDIS_URL="", CELERY_BROKER_URL="")
    try:
        warm([alone], deployment.model_id, [key])
        reset([server])
        refusals: list = []
        results = gateway_support.run_async(burst([alone, alone], deployment.model_id, [("all", key)] * 12, refusals))
    finally:
        alone.stop()
    assert [status for _, status, _ in results] == [200] * 12 and not refusals
    stats = demo_stats(server)
    assert stats["requests"] == 12 and stats["max_inflight"] == 2, stats
    assert max(waited for _, _, waited in results) > 0  # most of them queued
