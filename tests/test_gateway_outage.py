"""Nothing lost when the database is away: real gateway processes, real PostgreSQL behind a TCP
proxy that cuts every connection, plain and streamed requests under load.

Every request the client saw answered must have exactly one usage event once the database is
back; events spooled by a process killed with SIGKILL land when a gateway starts again.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import ROOT, UPSTREAM_KEY, chat_body, metric, start_gateway, wait_for
from usage.models import UsageEvent
from usage.spool_status import spool_alerts

pytestmark = pytest.mark.django_db(transaction=True)
demo = gateway_support.demo

OUTAGE_SECONDS = 30
RESULTS = ROOT / "artifacts" / "outage"


class TcpProxy:
    """tests/tcp_proxy.py as a separate process between the gateways and PostgreSQL."""

    def __init__(self):
        settings = connection.settings_dict
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.tcp_proxy", "--target-port", str(settings["PORT"] or 5432)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        line = self.process.stdout.readline().split()
        assert line[:1] == ["listening"], line
        self.port = int(line[1])

    def database_url(self) -> str:
        s = connection.settings_dict
        auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
        return f"postgres://{auth}@127.0.0.1:{self.port}/{s['NAME']}"

    def _signal(self, sig: int, expect: str) -> None:
        self.process.send_signal(sig)
        assert self.process.stdout.readline().strip() == expect

    def cut(self) -> None:
        self._signal(signal.SIGUSR1, "cut")

    def restore(self) -> None:
        self._signal(signal.SIGUSR2, "restored")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def proxy():
    p = TcpProxy()
    yield p
    p.stop()


def gateway_behind(proxy: TcpProxy, name: str, spool_dir: Path, **env):
    # A short key-cache TTL, so background refreshes happen (and fail) during the outage.
    return start_gateway(
        name,
        DATABASE_URL=proxy.database_url(),
        GATEWAY_SPOOL_DIR=str(spool_dir),
        GATEWAY_KEY_CACHE_TTL="5",
        GATEWAY_USAGE_WRITE_TIMEOUT="3",
        **env,
    )


def setup_key(world, demo):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=10**8, yearly_token_limit=10**10)
    return deployment, key, plaintext


async def call(client: httpx.AsyncClient, url: str, plaintext: str, model: str, *, stream: bool) -> tuple[int, str | None]:
    """(status, request id) of one call; a stream counts as answered only with its final [DONE]."""
    body = chat_body(model, "Tell me about the outage.", stream=stream, metadata={"demo_reply_tokens": "12"})
    headers = {"authorization": f"Bearer {plaintext}"}
    if not stream:
        response = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
        return response.status_code, response.headers.get("x-request-id")
    async with client.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        text = (await response.aread()).decode()
        status = response.status_code if text.rstrip().endswith("data: [DONE]") else 599
        return status, response.headers.get("x-request-id")


def spool_rows(spool_dir: Path) -> int:
    total = 0
    for path in spool_dir.glob("usage-*.spool"):
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            total += conn.execute("SELECT count(*) FROM events").fetchone()[0]
    return total


def spool_metrics(*servers) -> dict:
    names = ("spooled_total", "replayed_total", "spool_depth", "unrecorded_total")
    return {name: sum(metric(s, f"gatehouse_gateway_usage_{name}") for s in servers) for name in names}


def test_a_30_second_database_outage_under_load_loses_no_event_and_bills_none_twice(world, demo, proxy, tmp_path):
    deployment, key, plaintext = setup_key(world, demo)
    gateways = [gateway_behind(proxy, f"outage-{i}", tmp_path / "spool") for i in range(2)]
    try:
        answered: list[str] = []
        failed: list[tuple[int, str | None]] = []
        phase = {"name": "before"}
        by_phase: dict[str, int] = {}

        async def worker(client, gateway, stream: bool, stop: asyncio.Event) -> None:
            while not stop.is_set():
                status, request_id = await call(client, gateway.url, plaintext, deployment.model_id, stream=stream)
                if status == 200:
                    answered.append(request_id)
                    by_phase[phase["name"]] = by_phase.get(phase["name"], 0) + 1
                else:
                    failed.append((status, request_id))
                await asyncio.sleep(0.02)

        async def load() -> dict:
            stop = asyncio.Event()
            async with httpx.AsyncClient(timeout=60) as client:
                for gateway in gateways:  # warm: the key is cached and its yearly counter seeded
                    assert (await call(client, gateway.url, plaintext, deployment.model_id, stream=False))[0] == 200
                workers = [
                    asyncio.create_task(worker(client, gateway, stream, stop)) for gateway in gateways for stream in (False, True, False)
                ]
                await asyncio.sleep(2)
                phase["name"] = "outage"
                await asyncio.to_thread(proxy.cut)
                cut_at = time.monotonic()
                await asyncio.sleep(OUTAGE_SECONDS)
                await asyncio.to_thread(proxy.restore)
                outage = time.monotonic() - cut_at
                phase["name"] = "after"
                restored_at = time.monotonic()
                await asyncio.sleep(3)
                stop.set()
                await asyncio.gather(*workers)
                return {"outage_seconds": round(outage, 1), "restored_at": restored_at}

        timing = gateway_support.run_async(load())
        during = spool_metrics(*gateways)
        drained = wait_for(lambda: spool_metrics(*gateways)["spool_depth"] == 0 and spool_rows(tmp_path / "spool") == 0, timeout=90)
        drain_seconds = time.monotonic() - timing["restored_at"]
        after = spool_metrics(*gateways)

        assert failed == []  # nothing was refused or cut short: not a single 503 for the outage
        assert by_phase.get("outage", 0) > 0
        assert drained, after
        assert after["spooled_total"] > 0  # the outage was real: events went through the spool
        assert after["replayed_total"] == after["spooled_total"]
        assert after["unrecorded_total"] == 0
        # Exactly once: every answered request has its one event, and nothing else was billed.
        ids = set(answered)
        assert len(ids) == len(answered)
        rows = list(UsageEvent.objects.filter(api_key=key).values_list("request_id", flat=True))
        assert len(rows) == len(set(rows))
        assert ids <= set(rows)
        assert len(rows) == len(ids) + len(gateways)  # + the warm-up call on each process

        RESULTS.mkdir(parents=True, exist_ok=True)
        summary = {
            "requests_answered": len(answered),
            "answered_during_outage": by_phase.get("outage", 0),
            "spooled": int(after["spooled_total"]),
            "replayed": int(after["replayed_total"]),
            "spooled_when_restored": int(during["spooled_total"]),
            "drain_seconds_after_restore": round(drain_seconds, 1),
            "outage_seconds": timing["outage_seconds"],
            "gateway_processes": len(gateways),
            "events": len(rows),
        }
        (RESULTS / "outage.json").write_text(json.dumps(summary, indent=2))
        print(summary)
    finally:
        for gateway in gateways:
            gateway.stop()


def test_events_spooled_by_a_killed_gateway_land_when_a_gateway_starts_again(world, demo, proxy, tmp_path):
    from lib.redis import redis_client

    deployment, key, plaintext = setup_key(world, demo)
    _, unseen = make_key(world.org, all_models=True)
    reseeded, reseeded_plaintext = make_key(world.org, all_models=True, yearly_token_limit=10**6)
    spool_dir = tmp_path / "spool"
    first = gateway_behind(proxy, "outage-killed", spool_dir)
    ids: list[str] = []
    try:

        async def traffic() -> None:
            async with httpx.AsyncClient(timeout=60) as client:
                for secret in (plaintext, reseeded_plaintext):
                    assert (await call(client, first.url, secret, deployment.model_id, stream=False))[0] == 200
                proxy.cut()
                # A key this process never loaded cannot be checked: 503, said plainly.
                response = await client.post(
                    first.url + "/v1/chat/completions", json=chat_body(deployment.model_id), headers={"authorization": f"Bearer {unseen}"}
                )
                assert (response.status_code, response.json()["error"]["code"]) == (503, "auth_unavailable")
                # A cached key whose yearly counter Redis lost cannot be re-seeded: refused, not guessed.
                redis_client().delete(f"gatehouse:yearly:{reseeded.public_id}:{time.gmtime().tm_year}")
                response = await client.post(
                    first.url + "/v1/chat/completions",
                    json=chat_body(deployment.model_id),
                    headers={"authorization": f"Bearer {reseeded_plaintext}"},
                )
                assert (response.status_code, response.json()["error"]["code"]) == (503, "limiter_unavailable")
                results = await asyncio.gather(
                    *(call(client, first.url, plaintext, deployment.model_id, stream=i % 2 == 1) for i in range(20))
                )
                assert [status for status, _ in results] == [200] * 20
                ids.extend(request_id for _, request_id in results)

        gateway_support.run_async(traffic())
        # The 20 answers and the limiter_unavailable refusal (a known key's refusal is on record too).
        assert metric(first, "gatehouse_gateway_usage_spooled_total") == 21
        assert metric(first, "gatehouse_gateway_usage_spool_depth") == 21
        assert wait_for(lambda: metric(first, "gatehouse_gateway_usage_spool_oldest_seconds") > 0)
        # What the admins' banner reads: this process's spool, published to Redis.
        assert wait_for(lambda: [a.depth for a in spool_alerts(now=time.time() + 3600)] == [21])
    finally:
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)

    # The events are on disk, not in the database; the dead process's lock is gone with it.
    assert spool_rows(spool_dir) == 21
    assert UsageEvent.objects.filter(request_id__in=ids).count() == 0
    proxy.restore()

    # Two processes start at once: exactly one adopts the file (its flock), so the file is
    # replayed once in all (the replayed counters add up to 21, not 42).
    restarted = [gateway_behind(proxy, f"outage-restart-{i}", spool_dir) for i in range(2)]
    try:
        assert wait_for(lambda: UsageEvent.objects.filter(request_id__in=ids).count() == 20, timeout=60)
        assert wait_for(lambda: spool_rows(spool_dir) == 0 and not list(spool_dir.glob("usage-*")), timeout=30)
        assert sum(metric(s, "gatehouse_gateway_usage_replayed_total") for s in restarted) == 21
        assert UsageEvent.objects.filter(api_key=key).count() == 21
        assert wait_for(lambda: spool_alerts(now=time.time() + 3600) == [])  # the adopter cleared the entry
        refusal = UsageEvent.objects.get(api_key=reseeded, status_code=503)
        assert (refusal.error_code, refusal.total_tokens) == ("limiter_unavailable", 0)
    finally:
        for server in restarted:
            server.stop()
