"""`make run`'s script brings up the embedded default (SQLite, filesystem broker, no servers) and signs in."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_script_starts_web_worker_and_beat_on_embedded_default(tmp_path):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "DATABASE_URL",
            "REDIS_URL",
            "CELERY_BROKER_URL",
            "SECRET_KEY",
            "API_KEY_PEPPER",
            "ALLOWED_HOSTS",
            "GATEHOUSE_HTTPS",
            "DJANGO_SETTINGS_MODULE",
        }
    }
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # as `make run` puts .venv/bin first
    env.update({"PORT": str(port), "GATEHOUSE_VAR_DIR": str(tmp_path), "DEBUG": "1", "PYTHONUNBUFFERED": "1"})
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["bash", "scripts/run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        password = None
        while time.monotonic() < deadline:
            text = log.read_text()
            match = re.search(r"Sign in as admin with password: (\S+)", text)
            password = match.group(1) if match else None
            if password and "Uvicorn running" in text and "celery@" in text and "beat: Starting" in text:
                break
            assert proc.poll() is None, text
            time.sleep(0.5)
        else:
            raise AssertionError("make run did not come up:\n" + log.read_text())
        assert (tmp_path / "gatehouse.sqlite3").exists()

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True, timeout=10) as client:
            assert client.get("/healthz").text == "ok"
            login = client.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
            page = client.post("/accounts/login/", data={"login": "admin", "password": password, "csrfmiddlewaretoken": token})
            assert page.status_code == 200
            assert "<h1>Acme</h1>" in page.text and "Research" in page.text
            # The seeded month of demo traffic is on the dashboard.
            assert "web-app.demo" in client.get("/w/acme/usage/").text

            # A test call from the console: web → filesystem broker → worker → gateway → demo model.
            listing = client.get("/w/acme/deployments/").text
            detail = re.search(r'href="(/w/acme/deployments/[0-9a-f-]{36}/)"', listing).group(1)
            tab = client.get(detail + "?tab=test").text
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', tab).group(1)
            started = client.post(detail + "test-calls/", data={"csrfmiddlewaretoken": token, "prompt": "Hello?", "stream": "on"})
            poll = re.search(r'hx-get="([^"]+)"', started.text).group(1)
            result = started.text
            for _ in range(120):
                if 'data-status="done"' in result or 'data-status="failed"' in result:
                    break
                time.sleep(0.5)
                result = client.get(poll).text
            assert 'data-status="done"' in result, result
            assert "Gatehouse demo model" in result
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C stops everything
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert "Unrecoverable error" not in text
    # Every process stopped on its own after SIGTERM: honcho never had to SIGKILL one (the worker
    # used to hang after honcho's SIGTERM to its process group killed its pool processes).
    assert "sending SIGKILL" not in text, text[-3000:]
    assert re.search(r"worker\.1 stopped", text), text[-3000:]
