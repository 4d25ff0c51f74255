"""Real processes for worker tests: a local upstream, a Celery worker; ports from 8400-8499."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
PORTS = range(8400, 8500)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 8400-8499")


def wait_for(condition: Callable[[], object], *, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_upstream(port: int, api_key: str) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "worker_models_upstream.py"), str(port)],
        env={**os.environ, "STUB_API_KEY": api_key},
        start_new_session=True,
    )
    wait_for(lambda: port_open(port), timeout=15, what=f"upstream on port {port}")
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)


class Worker:
    """`celery -A console worker` on the Redis broker and the pytest database, on its own queue."""

    def __init__(self, tmp_path: Path, extra_env: dict[str, str] | None = None, *, default_queue: bool = False):
        """default_queue: also consume Celery's default queue, where tasks enqueue their follow-ups
        (deployments_probe_all → one replica_probe per replica). It is emptied first: what earlier
        tests enqueued there on commit (probes of rows long gone) is not this worker's business."""
        from console.celery import app

        self.queue = f"test-{uuid.uuid4().hex[:8]}"
        default = app.conf.task_default_queue
        if default_queue:
            with app.connection_for_write() as connection:
                connection.default_channel.queue_purge(default)
        self.log_path = tmp_path / f"worker-{self.queue}.log"
        db = settings.DATABASES["default"]
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
            "DB_CONN_MAX_AGE": "0",
            **(extra_env or {}),
        }
        self.log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "console",
                "worker",
                "--pool",
                "solo",
                "--without-heartbeat",
                "--without-gossip",
                "--without-mingle",
                "-Q",
                f"{self.queue},{default}" if default_queue else self.queue,
                "--loglevel",
                "INFO",
                "-n",
                f"{self.queue}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: "ready." in self.output() or self.proc.poll() is not None, timeout=60, what="celery worker ready")
        assert self.proc.poll() is None, self.output()

    def output(self) -> str:
        return self.log_path.read_text()

    def send(self, task, *args, task_id: str | None = None) -> str:
        task_id = task_id or uuid.uuid4().hex
        task.apply_async(args=args, queue=self.queue, task_id=task_id)
        return task_id

    def succeeded(self, task, task_id: str) -> int:
        return self.output().count(f"Task {task.name}[{task_id}] succeeded")

    def succeeded_count(self, task) -> int:
        """How many runs of `task` (any id) the worker has logged as succeeded."""
        return len(re.findall(rf"Task {re.escape(task.name)}\[[^\]]+\] succeeded", self.output()))

    def run(self, task, *args, task_id: str | None = None, timeout: float = 120) -> str:
        """Send a task and wait until the worker logs its success (results are not stored)."""
        before = self.succeeded(task, task_id) if task_id else 0
        task_id = self.send(task, *args, task_id=task_id)
        wait_for(
            lambda: self.succeeded(task, task_id) > before or "Traceback" in self.output(), timeout=timeout, what=f"{task.name} to succeed"
        )
        assert self.succeeded(task, task_id) > before, self.output()
        return task_id

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)
        self.log.close()

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM)
        self.log.close()
