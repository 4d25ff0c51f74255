"""Deployment health checks against a real local upstream process and a port nobody listens on."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.urls import reverse

from console.models import AuditEvent
from deployments import health
from deployments.models import Deployment, DeploymentStatus, UpstreamKind
from deployments.tasks import deployments_probe_all
from lib.crypto import encrypt

from .worker_processes import free_port, start_upstream, stop

UPSTREAM_KEY = "sk-upstream-" + "k" * 24
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def upstream():
    port = free_port()
    proc = start_upstream(port, UPSTREAM_KEY)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


@pytest.fixture
def dead_port():
    return free_port()  # nothing listens there


def hits(upstream: str) -> int:
    with urllib.request.urlopen(f"{upstream}/_hits", timeout=5) as response:
        return json.load(response)["count"]


def deployment(world, base_url: str, *, name: str = "chat", key: str = UPSTREAM_KEY, status=DeploymentStatus.RUNNING, **fields):
    return Deployment.objects.create(
        workspace=world.org,
        name=name,
        model_id=f"@acme/{name}",
        upstream_base_url=base_url,
        upstream_api_key_encrypted=encrypt(key) if key else "",
        status=status,
        **fields,
    )


def test_reachable_upstream_stays_running_with_the_check_time(world, upstream):
    d = deployment(world, f"{upstream}/v1")
    assert d.last_checked_at is None

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert (checked.status, checked.last_error, checked.last_checked_at) == (DeploymentStatus.RUNNING, "", NOW)
    assert not AuditEvent.objects.filter(action__startswith="deployment.").exists()  # no transition, no audit noise


def test_unreachable_port_marks_the_deployment_unreachable_and_audits_it(world, dead_port):
    d = deployment(world, f"http://127.0.0.1:{dead_port}/v1")

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert checked.status == DeploymentStatus.UNREACHABLE
    assert checked.last_error.startswith("Cannot connect")
    assert checked.last_checked_at == NOW
    audit = AuditEvent.objects.get(action="deployment.unreachable")
    assert (audit.actor_label, audit.details["from"], audit.details["to"]) == ("health check", "running", "unreachable")


def test_unreachable_deployment_recovers_when_the_upstream_answers(world, upstream):
    d = deployment(world, f"{upstream}/v1", status=DeploymentStatus.UNREACHABLE, last_error="Cannot connect: refused")

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert (checked.status, checked.last_error) == (DeploymentStatus.RUNNING, "")
    assert AuditEvent.objects.filter(action="deployment.reachable").count() == 1


def test_the_upstream_key_is_sent_and_a_refused_key_is_reported_without_leaking(world, upstream):
    wrong = "sk-wrong-" + "w" * 30
    d = deployment(world, f"{upstream}/v1", key=wrong)

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert checked.status == DeploymentStatus.UNREACHABLE
    assert checked.last_error == "The upstream refused the API key (HTTP 401): Incorrect API key provided."
    assert wrong not in checked.last_error and UPSTREAM_KEY not in checked.last_error


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/broken/v1", DeploymentStatus.UNREACHABLE, "HTTP 503 from the upstream: model is still loading"),
        ("/nolist/v1", DeploymentStatus.RUNNING, ""),  # answers, just does not list models
    ],
)
def test_upstream_answers_map_to_status(world, upstream, path, status, error):
    d = deployment(world, upstream + path)
    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)
    assert (checked.status, checked.last_error) == (status, error)


def test_a_slow_upstream_times_out(world, upstream, monkeypatch):
    monkeypatch.setattr(health, "PROBE_TIMEOUT_SECONDS", 0.5)
    d = deployment(world, f"{upstream}/slow/v1")
    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)
    assert (checked.status, checked.last_error) == (DeploymentStatus.UNREACHABLE, "No answer within 0.5 s.")


def test_stopped_deployments_are_not_probed(world, upstream):
    d = deployment(world, f"{upstream}/v1", status=DeploymentStatus.STOPPED)
    before = hits(upstream)

    assert health.deployment_health_check(deployment_id=d.id, now=NOW) is None

    d.refresh_from_db()
    assert (d.status, d.last_checked_at) == (DeploymentStatus.STOPPED, None)
    assert hits(upstream) == before


def test_a_deployment_stopped_during_the_probe_stays_stopped(world, upstream, monkeypatch):
    d = deployment(world, f"{upstream}/v1")
    real_probe = health.probe_upstream

    def probe_then_stop(**kwargs):
        result = real_probe(**kwargs)
        Deployment.objects.filter(id=d.id).update(status=DeploymentStatus.STOPPED)  # an admin pressed Stop meanwhile
        return result

    monkeypatch.setattr(health, "probe_upstream", probe_then_stop)
    health.deployment_health_check(deployment_id=d.id, now=NOW)

    d.refresh_from_db()
    assert (d.status, d.last_checked_at) == (DeploymentStatus.STOPPED, None)


def test_probe_all_enqueues_running_and_unreachable_endpoint_deployments_only(world, upstream, monkeypatch):
    running = deployment(world, f"{upstream}/v1", name="a")
    unreachable = deployment(world, f"{upstream}/v1", name="b", status=DeploymentStatus.UNREACHABLE)
    deployment(world, f"{upstream}/v1", name="c", status=DeploymentStatus.STOPPED)
    deployment(world, f"{upstream}/v1", name="d", status=DeploymentStatus.FAILED)
    deployment(world, "", name="e", key="", upstream_kind=UpstreamKind.ROUTER)
    sent = []
    monkeypatch.setattr("deployments.tasks.deployment_probe.apply_async", lambda args, **kw: sent.append((args, kw)))

    assert deployments_probe_all() == 2

    assert sent == [((running.id,), {"expires": 120}), ((unreachable.id,), {"expires": 120})]


def test_probe_after_a_change_is_enqueued_on_commit(world, upstream, django_capture_on_commit_callbacks, monkeypatch):
    d = deployment(world, f"{upstream}/v1")
    sent = []
    monkeypatch.setattr("deployments.tasks.deployment_probe.apply_async", lambda args, **kw: sent.append((args, kw)))

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        health.deployment_probe_on_commit(deployment_id=d.id)
        assert sent == []

    assert len(callbacks) == 1 and sent == [((d.id,), {"expires": 120})]


def test_an_upstream_echoing_credentials_is_reported_without_them_on_the_pages(world, upstream, client_for):
    d = deployment(world, f"{upstream}/leaky/v1")

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert checked.status == DeploymentStatus.UNREACHABLE
    assert checked.last_error.startswith("The upstream refused the API key (HTTP 401): Key Bearer [redacted] rejected")
    for secret in (UPSTREAM_KEY, "x" * 24, "hunter2", "tok_abcdef123456"):
        assert secret not in checked.last_error
    assert "https://[redacted]@keys.internal/rotate?[redacted]" in checked.last_error

    client = client_for(world.viewer)
    with time_machine.travel(NOW + timedelta(minutes=2, seconds=10), tick=False):
        pages = [
            client.get(reverse(name, kwargs={"ws": "acme", **extra})).content.decode()
            for name, extra in (("deployments_page", {}), ("deployment_detail", {"deployment": d.public_id}))
        ]
    for page in pages:
        assert "checked <time" in page and ">2 min ago</time>" in page
        assert "Key Bearer [redacted] rejected" in page
        for secret in (UPSTREAM_KEY, "hunter2", "tok_abcdef123456", "/leaky/"):
            assert secret not in page


def test_a_forbidden_upstream_address_is_not_contacted(world):
    d = deployment(world, "http://169.254.169.254/v1")

    checked = health.deployment_health_check(deployment_id=d.id, now=NOW)

    assert checked.status == DeploymentStatus.UNREACHABLE
    assert checked.last_error == "Refused: 169.254.169.254 is a cloud metadata service."
