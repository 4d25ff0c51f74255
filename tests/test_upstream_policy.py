"""UPSTREAM_ALLOWED_NETWORKS: where upstream calls may connect (issue 13, "Upstream targets").

Reproduced on the old main: a workspace admin saved a deployment at http://127.0.0.1:6379/v1 and
the gateway POSTed the chat request into Redis. Now the policy (default outside DEBUG: public and
private networks, no loopback) refuses it when saved, and every client re-checks the address it
actually connects to.

These tests never send traffic anywhere but loopback: the decision function is tested on
addresses alone, fake resolvers stand in for DNS, and the end-to-end checks use a listener on
127.0.0.1 that counts the connections it accepts (none, when the policy refuses loopback).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx
import pytest
from django.core.exceptions import ValidationError

from console.audit import Actor
from deployments import health
from deployments.models import Deployment
from deployments.services import deployment_create, deployment_update
from gateway.upstream import HttpxClient, NativeClient, UpstreamForbidden
from keys.services import byok_credential_create
from lib.upstream import (
    UpstreamRefused,
    default_allowed_networks,
    forbidden_address_reason,
    parse_network_policy,
    resolve_checked,
    validate_upstream_url,
)
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import chat_body, run_async

PRODUCTION = parse_network_policy(default_allowed_networks(debug=False))
DEVELOPMENT = parse_network_policy(default_allowed_networks(debug=True))
PRODUCTION_SETTING = ("public", "private")


class Listener:
    """A TCP server on 127.0.0.1 that counts connections and answers every request with `{}`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.host_headers: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                    for line in head.split("\r\n")[1:]:
                        name, _, value = line.partition(":")
                        if name.lower() == "host":
                            self.host_headers.append(value.strip())
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


# ---- the decision, on addresses alone ---------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "refused_because"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping of 127.0.0.1
        ("64:ff9b::7f00:1", "loopback"),  # NAT64 wrapping of 127.0.0.1
        ("169.254.169.254", "metadata"),
        ("169.254.7.7", "link-local"),
        ("fe80::1", "link-local"),
        ("100.100.100.200", "metadata"),
        ("100.64.0.1", "shared"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
def test_production_policy_refuses_loopback_link_local_and_metadata(address, refused_because):
    reason = forbidden_address_reason(address, PRODUCTION)
    assert reason is not None and refused_because in reason


@pytest.mark.parametrize("address", ["10.0.0.5", "172.16.3.4", "192.168.1.10", "fd12:3456::40", "8.8.8.8", "2606:4700::1111"])
def test_production_policy_allows_private_and_public_addresses(address):
    assert forbidden_address_reason(address, PRODUCTION) is None


def test_development_policy_also_allows_loopback_but_never_metadata():
    assert forbidden_address_reason("127.0.0.1", DEVELOPMENT) is None
    assert forbidden_address_reason("::1", DEVELOPMENT) is None
    assert "metadata" in forbidden_address_reason("169.254.169.254", DEVELOPMENT)


def test_operator_can_narrow_or_widen_the_policy():
    internal_only = parse_network_policy(["10.1.0.0/16"])
    assert forbidden_address_reason("10.1.2.3", internal_only) is None
    assert forbidden_address_reason("10.2.0.1", internal_only) is not None
    assert forbidden_address_reason("8.8.8.8", internal_only) is not None  # no "public"
    with_tailnet = parse_network_policy(["private", "100.64.0.0/10", "127.0.0.1"])
    assert forbidden_address_reason("100.101.1.1", with_tailnet) is None
    assert forbidden_address_reason("127.0.0.1", with_tailnet) is None
    assert forbidden_address_reason("127.0.0.2", with_tailnet) is not None
    # Listing a network never opens the metadata service inside it.
    assert forbidden_address_reason("169.254.169.254", parse_network_policy(["169.254.0.0/16"])) is not None


@pytest.mark.parametrize("value", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "everything"])
def test_a_bad_policy_entry_is_named(value):
    with pytest.raises(ValueError, match="CIDR"):
        parse_network_policy(["private", value])


def test_a_bad_setting_stops_start_up(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "1", "GATEHOUSE_VAR_DIR": str(tmp_path), "UPSTREAM_ALLOWED_NETWORKS": "private,10.0.0.1/8"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=gateway_support.ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "UPSTREAM_ALLOWED_NETWORKS" in result.stderr and "10.0.0.1/8" in result.stderr


def test_every_resolved_address_is_checked():
    resolver = lambda host, port: {"gpu.internal": ["10.0.0.7"], "redis.internal": ["10.0.0.8", "127.0.0.1"]}[host]  # noqa: E731
    assert resolve_checked("gpu.internal", 80, resolve=resolver, policy=PRODUCTION) == ["10.0.0.7"]
    with pytest.raises(UpstreamRefused, match="127.0.0.1 is a loopback address"):
        resolve_checked("redis.internal", 80, resolve=resolver, policy=PRODUCTION)
    with pytest.raises(ValidationError, match="redis.internal resolves to 127.0.0.1"):
        validate_upstream_url("http://redis.internal:6379/v1", resolve=resolver, policy=PRODUCTION)


# ---- saving an upstream -----------------------------------------------------------------------


@pytest.fixture
def production_policy(settings):
    settings.UPSTREAM_ALLOWED_NETWORKS = PRODUCTION_SETTING


@pytest.fixture
def probes(monkeypatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr("deployments.tasks.deployment_probe.apply_async", lambda args, **kw: sent.append(args[0]))
    return sent


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379/v1", "http://[::1]:5432/v1", "http://localhost:6379/v1", "http://2130706433:6379/v1"]
)
def test_workspace_admin_cannot_point_a_deployment_at_the_hosts_own_services(
    world, production_policy, probes, django_capture_on_commit_callbacks, url
):
    actor = Actor(user=world.admin, label="adam")
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError) as caught:
        deployment_create(workspace=world.org, actor=actor, name="Redis", model_id="@acme/redis", upstream_base_url=url)
    assert "loopback" in str(caught.value.message_dict["upstream_base_url"])
    assert not Deployment.objects.filter(model_id="@acme/redis").exists()
    assert probes == []  # saving never probes a refused address


def test_an_existing_deployment_cannot_be_moved_to_loopback(world, production_policy, probes, django_capture_on_commit_callbacks):
    actor = Actor(user=world.admin, label="adam")
    with django_capture_on_commit_callbacks(execute=True):
        deployment = deployment_create(
            workspace=world.org, actor=actor, name="GPU", model_id="@acme/gpu", upstream_base_url="http://10.0.0.5:8000/v1"
        )
    probes.clear()
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError):
        deployment_update(
            deployment=deployment, actor=actor, name="GPU", model_id="@acme/gpu", upstream_base_url="http://127.0.0.1:6379/v1"
        )
    deployment.refresh_from_db()
    assert deployment.upstream_base_url == "http://10.0.0.5:8000/v1"
    assert probes == []


def test_byok_credential_cannot_point_at_loopback(world, production_policy):
    with pytest.raises(ValidationError) as caught:
        byok_credential_create(
            workspace=world.org,
            actor=Actor.system("tests"),
            name="local",
            provider="Local",
            base_url="http://127.0.0.1:6379/v1",
            api_key="sk-local-0123456789",
            model_names="m",
        )
    assert "loopback" in str(caught.value.message_dict["base_url"])


# ---- the clients check the address they connect to ---------------------------------------------


def test_health_probe_never_connects_to_a_refused_address(world, settings, listener):
    base_url = f"http://127.0.0.1:{listener.port}/v1"
    settings.UPSTREAM_ALLOWED_NETWORKS = ("public", "private", "127.0.0.1/32")
    assert health.probe_upstream(base_url=base_url, api_key="", timeout=5).reachable  # control: the listener answers
    assert listener.accepted == 1

    settings.UPSTREAM_ALLOWED_NETWORKS = PRODUCTION_SETTING  # e.g. tightened after the deployment was saved
    result = health.probe_upstream(base_url=base_url, api_key="", timeout=5)
    assert not result.reachable and "loopback" in result.error
    # A name that resolves to loopback now (DNS rebinding) is refused the same way.
    rebound = health.probe_upstream(
        base_url=f"http://models.example:{listener.port}/v1", api_key="", timeout=5, resolve=lambda h, p: ["127.0.0.1"]
    )
    assert not rebound.reachable and "loopback" in rebound.error
    assert listener.accepted == 1


@pytest.mark.parametrize("client_class", [NativeClient, HttpxClient])
def test_gateway_clients_refuse_before_connecting(settings, listener, client_class):
    url = f"http://localhost:{listener.port}/v1/chat/completions"

    async def call():
        client = client_class(max_connections=4) if client_class is HttpxClient else client_class()
        try:
            response = await client.open(url, [(b"content-type", b"application/json")], b"{}", timeout=5, connect_timeout=5)
            body = await response.read()
            await response.aclose()
            return response.status, body
        finally:
            await client.aclose()

    settings.UPSTREAM_ALLOWED_NETWORKS = ("public", "private", "127.0.0.1/32", "::1/128")
    assert run_async(call()) == (200, b"{}")
    assert listener.accepted == 1
    assert listener.host_headers == [f"localhost:{listener.port}"]  # the name, though the checked IP was dialled

    settings.UPSTREAM_ALLOWED_NETWORKS = PRODUCTION_SETTING
    with pytest.raises(UpstreamForbidden, match="loopback"):
        run_async(call())
    assert listener.accepted == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("client", ["native", "httpx"])
def test_gateway_does_not_post_to_a_loopback_service_outside_the_policy(world, listener, client):
    # Saved before the policy was tightened (or written past the console): the gateway still refuses.
    deployment = make_deployment(world.org, base_url=f"http://127.0.0.1:{listener.port}/v1", model_id="@acme/redis")
    _, key = make_key(world.org, deployments=[deployment])
    gateway = gateway_support.start_gateway(
        f"gateway-policy-{client}", UPSTREAM_ALLOWED_NETWORKS="public,private", GATEWAY_UPSTREAM_CLIENT=client
    )
    try:
        response = httpx.post(
            gateway.url + "/v1/chat/completions", json=chat_body("@acme/redis"), headers={"authorization": f"Bearer {key}"}, timeout=20
        )
    finally:
        gateway.stop()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_forbidden"
    assert listener.accepted == 0
