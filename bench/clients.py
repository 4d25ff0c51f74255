"""The gateway's hand-written clients against the well-kept alternatives, in one run, same conditions.

    python bench/clients.py                       # REDIS_URL (default redis://localhost:6379/0)
    python bench/clients.py --requests 3000 --rounds 3

HTTP: `gateway/upstream.py`'s NativeClient, aiohttp's ClientSession and httpx's AsyncClient each
POST the benchmark's chat body to the demo model server (a separate process on 127.0.0.1,
keep-alive) and read the JSON answer, as the gateway does for a non-streamed call; 1 caller in
sequence and 32 concurrent callers. Redis: `gateway/resp.py`'s PipelinedRedis and redis-py's
asyncio client (with the hiredis parser when installed) each run the gateway's admission script
(EVALSHA of gateway/limits.ADMIT_LUA, the one Redis call on a request's path) the same way.

Per request it prints wall µs (median over rounds of the mean) and this process's CPU µs
(process_time: what the client costs the gateway's worker, less sensitive to other load on the
machine than wall time), and requests per second. Clients run interleaved per round, so a noisy
neighbour hits all of them alike. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
UPSTREAM_KEY = "bench-upstream-key"
BODY = b'{"model": "gatehouse-demo", "messages": [{"role": "user", "content": "Say hello to the benchmark."}], "max_tokens": 32}'
HEADERS = [(b"content-type", b"application/json"), (b"accept", b"application/json"), (b"authorization", b"Bearer " + UPSTREAM_KEY.encode())]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- HTTP clients: each a (setup, one call, close) over the same interface ---------------------
class Native:
    name = "native (gateway/upstream.py)"

    async def setup(self):
        from gateway.upstream import NativeClient

        self.client = NativeClient(max_idle_per_origin=64)

    async def call(self, url: str) -> bytes:
        response = await self.client.open(url, HEADERS, BODY, timeout=10, connect_timeout=5)
        body = await response.read()
        await response.aclose()
        assert response.status == 200, response.status
        return body

    async def close(self):
        await self.client.aclose()


class Aiohttp:
    name = "aiohttp ClientSession"

    async def setup(self):
        import aiohttp

        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=4), skip_auto_headers=("User-Agent", "Accept-Encoding")
        )
        self.headers = {k.decode(): v.decode() for k, v in HEADERS}

    async def call(self, url: str) -> bytes:
        async with self.session.post(url, data=BODY, headers=self.headers) as response:
            body = await response.read()
            assert response.status == 200, response.status
            return body

    async def close(self):
        await self.session.close()


class Httpx:
    name = "httpx AsyncClient (GATEWAY_UPSTREAM_CLIENT=httpx)"

    async def setup(self):
        import httpx

        self.client = httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=64), trust_env=False)

    async def call(self, url: str) -> bytes:
        response = await self.client.post(url, content=BODY, headers=HEADERS)
        assert response.status_code == 200, response.status_code
        return response.content

    async def close(self):
        await self.client.aclose()


# ---- Redis clients ---------------------------------------------------------------------------
def admit_args() -> tuple[list, list]:
    # The admission of a key with a TPM and a yearly limit (gateway/limits.py's argument order).
    keys = ["gatehouse:keygen", "gatehouse:tpm:bench-clients", "gatehouse:yearly:bench-clients:2026", "gatehouse:deploymentgen"]
    return keys, ["bench-clients", int(time.time()), 20, 2_000_000_000, 10**15, 0, 86400, "1", 32, 1, 16]


class Pipelined:
    name = "PipelinedRedis (gateway/resp.py)"

    async def setup(self, url: str):
        from gateway.resp import PipelinedRedis

        self.redis = PipelinedRedis(url)

    async def admit(self, script: str, keys: list, args: list):
        return await self.redis.evalsha(script, keys, args)

    async def close(self):
        await self.redis.aclose()


class RedisPy:
    def __init__(self):
        try:
            import hiredis  # noqa: F401

            self.name = "redis-py asyncio + hiredis"
        except ImportError:
            self.name = "redis-py asyncio (pure-Python parser: hiredis not installed)"

    async def setup(self, url: str):
        import redis.asyncio as aioredis

        self.redis = aioredis.Redis.from_url(url, max_connections=64)
        self.sha = None

    async def admit(self, script: str, keys: list, args: list):
        if self.sha is None:
            self.sha = await self.redis.script_load(script)
        return await self.redis.evalsha(self.sha, len(keys), *keys, *args)

    async def close(self):
        await self.redis.aclose()


async def measure(call, requests: int, concurrency: int) -> tuple[float, float, float]:
    """(wall µs per request, CPU µs per request, requests/s) for `requests` calls by `concurrency` callers."""
    per_caller = requests // concurrency

    async def caller():
        for _ in range(per_caller):
            await call()

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    done = per_caller * concurrency
    return wall / done * 1e6, cpu / done * 1e6, done / wall


async def run(args) -> list[tuple]:
    from gateway.limits import ADMIT_LUA

    url = f"{args.upstream}/v1/chat/completions"
    http = [Native(), Aiohttp(), Httpx()]
    redis = [Pipelined(), RedisPy()]
    for client in http:
        await client.setup()
    for client in redis:
        await client.setup(args.redis_url)
    keys, script_args = admit_args()
    results: dict[tuple, list] = {}
    for _ in range(args.rounds):
        for concurrency in (1, 32):
            for client in http:
                await measure(lambda c=client: c.call(url), 200, concurrency)  # warm the pool
                results.setdefault(("HTTP", client.name, concurrency), []).append(
                    await measure(lambda c=client: c.call(url), args.requests, concurrency)
                )
            for client in redis:
                await measure(lambda c=client: c.admit(ADMIT_LUA, keys, script_args), 200, concurrency)
                results.setdefault(("Redis", client.name, concurrency), []).append(
                    await measure(lambda c=client: c.admit(ADMIT_LUA, keys, script_args), args.requests, concurrency)
                )
    for client in (*http, *redis):
        await client.close()
    rows = []
    for (kind, name, concurrency), runs in results.items():
        rows.append(
            (
                kind,
                name,
                concurrency,
                statistics.median(r[0] for r in runs),
                statistics.median(r[1] for r in runs),
                statistics.median(r[2] for r in runs),
            )
        )
    return sorted(rows, key=lambda r: (r[0], r[2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="calls per client, per concurrency, per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows each figure's median")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://localhost:6379/0"))
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    os.environ.setdefault("SECRET_KEY", "bench-secret-key-" + "x" * 50)
    os.environ.setdefault("API_KEY_PEPPER", "bench-pepper-" + "y" * 32)
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1")
    os.environ.setdefault("UPSTREAM_ALLOWED_NETWORKS", "public,private,127.0.0.1/32")
    import django

    django.setup()
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "deployments.demo_model", "--port", str(port), "--api-key", UPSTREAM_KEY],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        args.upstream = f"http://127.0.0.1:{port}"
        import httpx

        for _ in range(100):
            try:
                httpx.get(args.upstream + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        load_before = os.getloadavg()[0]
        import uvloop

        rows = uvloop.run(run(args))
        load_after = os.getloadavg()[0]
    finally:
        demo.terminate()
        demo.wait(10)
    print(
        f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}; {os.cpu_count()} CPUs; "
        f"{args.requests} calls x {args.rounds} interleaved rounds per cell; uvloop"
    )
    print("| kind | client | callers | wall µs / call | CPU µs / call | calls/s |")
    print("|---|---|---|---|---|---|")
    for kind, name, concurrency, wall, cpu, rate in rows:
        print(f"| {kind} | {name} | {concurrency} | {wall:.0f} | {cpu:.0f} | {rate:.0f} |")


if __name__ == "__main__":
    main()
