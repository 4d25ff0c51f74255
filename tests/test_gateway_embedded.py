"""The embedded default: SQLite, no Redis, one process; the gateway still admits, limits and meters."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests import gateway_support
from tests.gateway_support import ROOT, UPSTREAM_KEY, Server, chat_body, free_port

demo = gateway_support.demo  # live-process fixture

SETUP = """
from console.audit import Actor
from console.services import workspace_create
from tests.factories import make_deployment, make_key
ws = workspace_create(name="Solo", slug="solo", actor=Actor.system("test"))
d = make_deployment(ws, base_url="{base}", upstream_api_key="{upstream}", upstream_model="gatehouse-demo")
_, plaintext = make_key(ws, all_models=True, tpm_limit=250)
print(d.model_id, plaintext)
"""


def test_embedded_default_serves_limits_and_meters_without_postgres_or_redis(tmp_path, demo):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update(DJANGO_SETTINGS_MODULE="console.settings", GATEHOUSE_VAR_DIR=str(tmp_path), DEBUG="0", LOG_LEVEL="WARNING")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
    created = subprocess.run([*manage, "shell", "-c", SETUP.format(base=demo.url + "/v1", upstream=UPSTREAM_KEY)], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True)
    model, key = created.stdout.split()[-2:]
    port = free_port()
    server = Server("gateway-embedded", [sys.executable, "-m", "uvicorn", "console.asgi:application", "--port", str(port),
                                         "--no-proxy-headers", "--no-access-log"], env, port, "/v1/models")
    try:
        auth = {"authorization": f"Bearer {key}"}

        def call(body):
            return httpx.post(server.url + "/v1/chat/completions", json=body, headers=auth, timeout=10).status_code

        # Each answer settles to 14 tokens (1 prompt + 13 completion), so sequential calls fit.
        assert [call(chat_body(model, "hi", max_tokens=95)) for _ in range(3)] == [200, 200, 200]
        # Two concurrent requests reserving 200 each (the upstream answers after 1 s): only one fits the 250.
        slow = chat_body(model, "hi", max_tokens=195, metadata={"demo_latency_ms": "1000"})
        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(call, [slow, slow])) == [200, 429]
    finally:
        server.stop()
    with sqlite3.connect(tmp_path / "gatehouse.sqlite3") as db:
        rows = db.execute("select status_code, total_tokens, estimated from usage_usageevent").fetchall()
    assert rows == [(200, 14, 0)] * 4
