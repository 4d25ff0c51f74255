"""Live processes for gateway tests: the demo model server and gateway processes under uvicorn.

Everything runs as real separate processes on loopback ports picked at run time. The gateways
use the pytest-django test database (test_<name>), so data a test creates must be committed:
gateway tests use `pytest.mark.django_db(transaction=True)`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_KEY = "demo-upstream-secret-key"
METRICS_TOKEN = "test-metrics-token-0123456789"
MAX_BODY = 65536


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, name: str, args: list[str], env: dict[str, str], port: int, health: str):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = ROOT / "var" / "test" / f"{name}-{port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + health, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


def start_demo(api_key: str | None = UPSTREAM_KEY, **flags) -> Server:
    port = free_port()
    args = [sys.executable, "-m", "deployments.demo_model", "--port", str(port)] + (["--api-key", api_key] if api_key else [])
    for name, value in flags.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return Server("demo", args, dict(os.environ), port, "/healthz")


def database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    auth = s["USER"] + (f":{s['PASSWORD']}" if s.get("PASSWORD") else "")
    return f"postgres://{auth}@{s['HOST'] or 'localhost'}:{s['PORT'] or 5432}/{s['NAME']}"


def start_gateway(name: str, *, workers: int = 1, **extra_env: str) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        DATABASE_URL=database_url(),
        METRICS_TOKEN=METRICS_TOKEN,
        GATEWAY_MAX_BODY_BYTES=str(MAX_BODY),
        GATEWAY_KEY_CACHE_TTL="600",
        # Every test client is 127.0.0.1: the failed-authentication limit gets its own test.
        GATEWAY_AUTH_FAILURES_PER_MINUTE="1000000",
        LOG_LEVEL="INFO",
        DEBUG="0",
    )
    env.update(extra_env)
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "console.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-proxy-headers",
        "--no-access-log",
    ]
    return Server(name, args, env, port, "/v1/models")


@pytest.fixture(scope="session")
def demo():
    server = start_demo()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateways(django_db_setup, django_db_blocker):
    """Two independent gateway processes on the test database: A believes no proxy, B trusts
    127.0.0.1 as a proxy (so it reads X-Forwarded-For right to left)."""
    a = start_gateway("gateway-a")
    try:
        b = start_gateway("gateway-b", TRUSTED_PROXIES="127.0.0.1/32")
    except Exception:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture
def gateway(gateways):
    return gateways[0]


def metric(server: Server, name: str, **labels: str) -> float:
    """Sum of a metric's samples on a gateway process (labels filter the samples)."""
    text = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def db_queries(server: Server) -> float:
    return metric(server, "gatehouse_gateway_db_queries_total")


def chat_body(model: str | None, content: str = "What is the capital of France?", **extra) -> dict:
    body = {"messages": [{"role": "user", "content": content}], **extra}
    if model is not None:
        body["model"] = model
    return body


def demo_stats(demo_server: Server) -> dict:
    return httpx.get(demo_server.url + "/_demo/stats", timeout=5).json()


class LoopbackServer:
    """An asyncio socket server on a loopback port for tests that write the wire bytes themselves:
    `async with` starts it (self.port), and leaving closes every connection and serving task.
    Subclasses implement `serve(reader, writer)`; the base records the connection first."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls=None):
        self.host, self.port, self.tls = host, port, tls
        self.tasks: list[asyncio.Task] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.append(asyncio.current_task())
        self.writers.append(writer)
        await self.serve(reader, writer)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


def run_async(coroutine):
    """asyncio.run on a fresh thread: Playwright's sync API may keep an event loop running in this one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Poll until predicate() is truthy (for work that finishes after a response, e.g. an aborted stream)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
