"""Shared pieces of the Redis-outage tests (tests/test_keys_fanout.py, tests/test_deployments_fanout.py):
the console's Redis pointed at a closed port, and the worker hand-offs captured instead of sent to a
broker that is as unreachable as Redis."""

from __future__ import annotations

import pytest

from lib.redis import redis_client
from tests.gateway_support import free_port


@pytest.fixture
def redis_down(settings):
    """The console's Redis (fan-out and broker) points at a closed port; live gateways keep theirs.
    Yields the real URL."""
    real = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_client.cache_clear()
    yield real
    settings.REDIS_URL = real
    redis_client.cache_clear()


def capture_enqueued(monkeypatch, task) -> list:
    """The argument lists the console hands to `task` on the worker, in order."""
    sent: list = []
    monkeypatch.setattr(task, "apply_async", lambda args, **options: sent.append(args))
    return sent
