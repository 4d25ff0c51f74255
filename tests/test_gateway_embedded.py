"""The embedded default: SQLite, no Redis, one process. What `make run` sets up — seed_demo's demo
deployment behind the demo model server, a key from `create_api_key` — admits, limits and meters."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.gateway_support import ROOT, Server, chat_body, free_port, start_demo


def test_embedded_default_serves_the_seeded_demo_deployment_with_limits_and_metering(tmp_path):
    demo = start_demo(api_key=None)  # as the Procfile starts it: no upstream key
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        GATEHOUSE_VAR_DIR=str(tmp_path),
        DEBUG="0",
        LOG_LEVEL="WARNING",
        DEMO_MODEL_PORT=str(demo.port),
    )
    manage = [sys.executable, "manage.py"]
    server = None
    try:
        subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], cwd=ROOT, env=env, check=True)
        seeded = subprocess.run([*manage, "seed_demo"], cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout
        assert f"'@acme/gatehouse-demo' -> http://127.0.0.1:{demo.port}/v1" in seeded
        assert f"'@acme/gatehouse-demo-embed' -> http://127.0.0.1:{demo.port}/v1" in seeded
        created = subprocess.run(
            [*manage, "create_api_key", "--workspace", "acme", "--name", "embedded", "--all-models", "--tpm", "250"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        server = Server(
            "gateway-embedded",
            [sys.executable, "-m", "uvicorn", "console.asgi:application", "--port", str(port), "--no-proxy-headers", "--no-access-log"],
            env,
            port,
            "/v1/models",
        )
        auth = {"authorization": f"Bearer {key}"}

        def call(body):
            return httpx.post(server.url + "/v1/chat/completions", json=body, headers=auth, timeout=10).status_code

        models = httpx.get(server.url + "/v1/models", headers=auth, timeout=10).json()
        assert [(m["id"], m["kind"]) for m in models["data"]] == [
            ("@acme/gatehouse-demo", "chat"),
            ("@acme/gatehouse-demo-embed", "embedding"),
        ]
        # Each answer settles to 14 tokens (1 prompt + 13 completion), so sequential calls fit.
        model = "@acme/gatehouse-demo"
        assert [call(chat_body(model, "hi", max_tokens=95)) for _ in range(3)] == [200, 200, 200]
        # Two concurrent requests reserving 200 each (the upstream answers after 1 s): only one fits the 250.
        slow = chat_body(model, "hi", max_tokens=195, metadata={"demo_latency_ms": "1000"})
        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(call, [slow, slow])) == [200, 429]
    finally:
        if server is not None:
            server.stop()
        demo.stop()
    with sqlite3.connect(tmp_path / "gatehouse.sqlite3") as db:
        rows = db.execute("select status_code, total_tokens, estimated, cost > 0 from usage_usageevent order by status_code").fetchall()
    assert rows == [(200, 14, 0, 1)] * 4 + [(429, 0, 0, 0)]  # priced from the seeded price version; the refusal costs nothing


def test_seed_demo_keeps_one_demo_deployment_pointing_at_the_demo_port(db, settings):
    import io

    from django.core.management import call_command

    from deployments.models import Deployment

    settings.DEMO_MODEL_PORT = 8111
    call_command("seed_demo", stdout=io.StringIO())
    settings.DEMO_MODEL_PORT = 8222
    call_command("seed_demo", stdout=io.StringIO())

    demo = Deployment.objects.get(model_id="@acme/gatehouse-demo")
    assert demo.upstream_base_url == "http://127.0.0.1:8222/v1"
    assert (demo.upstream_model, demo.workspace.slug, demo.prices.count()) == ("gatehouse-demo", "acme", 1)
