"""Import from server, against real local servers: the project's demo model server (two of them,
so the second becomes a replica) and the worker tests' model-list upstream; loopback only."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.urls import reverse

from console.audit import Actor
from console.models import AuditEvent
from deployments.imports import deployments_import, server_models
from deployments.models import Deployment, DeploymentReplica
from lib.crypto import decrypt
from tests.gateway_support import UPSTREAM_KEY, start_demo

from .worker_processes import free_port, start_upstream, stop

STUB_KEY = "sk-upstream-" + "i" * 24


@pytest.fixture(scope="module")
def demos():
    servers = [start_demo(), start_demo()]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def stub():
    port = free_port()
    proc = start_upstream(port, STUB_KEY)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_the_model_list_is_read_with_or_without_v1_in_the_url(db, demos):
    assert server_models(base_url=demos[0].url, api_key=UPSTREAM_KEY) == (demos[0].url + "/v1", ["gatehouse-demo"])
    assert server_models(base_url=demos[0].url + "/v1/", api_key=UPSTREAM_KEY) == (demos[0].url + "/v1", ["gatehouse-demo"])


@pytest.mark.parametrize(
    ("url", "key", "field", "message"),
    [
        ("demo", "wrong-key", "api_key", "refused the API key (HTTP 401)"),
        ("dead", UPSTREAM_KEY, "base_url", "Cannot connect"),
        ("http://169.254.169.254/v1", "", "base_url", "metadata"),
        ("demo-healthz", UPSTREAM_KEY, "base_url", "No OpenAI-compatible model list"),
    ],
)
def test_a_server_that_cannot_be_read_says_why(db, demos, url, key, field, message):
    url = {"demo": demos[0].url, "dead": f"http://127.0.0.1:{free_port()}", "demo-healthz": demos[0].url + "/healthz"}.get(url, url)
    with pytest.raises(ValidationError) as exc:
        server_models(base_url=url, api_key=key)
    assert message in " ".join(exc.value.message_dict[field])


def test_importing_creates_a_deployment_then_a_second_server_becomes_its_replica(world, demos):
    actor = Actor.system("tests")
    first_url, models = server_models(base_url=demos[0].url, api_key=UPSTREAM_KEY)
    (done,) = deployments_import(workspace=world.org, actor=actor, base_url=first_url, api_key=UPSTREAM_KEY, models=models)
    model, deployment, what = done
    assert (model, what, deployment.model_id, deployment.upstream_model) == (
        "gatehouse-demo",
        "created",
        "@acme/gatehouse-demo",
        "gatehouse-demo",
    )
    assert decrypt(deployment.replicas.get().api_key_encrypted) == UPSTREAM_KEY

    second_url, models = server_models(base_url=demos[1].url, api_key=UPSTREAM_KEY)
    (done,) = deployments_import(workspace=world.org, actor=actor, base_url=second_url, api_key=UPSTREAM_KEY, models=models)
    assert done[1] == deployment and done[2] == "replica added"
    assert sorted(deployment.replicas.values_list("base_url", flat=True)) == sorted([first_url, second_url])
    assert Deployment.objects.count() == 1
    assert AuditEvent.objects.filter(action="deployment.replica_added").count() == 1

    (again,) = deployments_import(workspace=world.org, actor=actor, base_url=second_url, api_key=UPSTREAM_KEY, models=models)
    assert again[2] == "already a replica" and deployment.replicas.count() == 2


def test_create_deployment_from_server_imports_every_listed_model(world, stub, monkeypatch):
    monkeypatch.setenv("STUB_KEY_FOR_IMPORT", STUB_KEY)
    out = StringIO()
    call_command("create_deployment", "--workspace", "acme", "--from-server", stub, "--upstream-key-env", "STUB_KEY_FOR_IMPORT", stdout=out)
    deployment = Deployment.objects.get(model_id="@acme/demo")
    assert deployment.upstream_model == "demo" and deployment.replicas.get().base_url == stub + "/v1"
    assert out.getvalue().strip().splitlines()[-1] == str(deployment.public_id)
    assert "demo: created" in out.getvalue() and STUB_KEY not in out.getvalue()

    with pytest.raises(CommandError, match="does not list nope"):
        call_command(
            "create_deployment",
            "--workspace",
            "acme",
            "--from-server",
            stub,
            "--upstream-key-env",
            "STUB_KEY_FOR_IMPORT",
            "--only",
            "nope",
            stdout=StringIO(),
        )
    with pytest.raises(CommandError, match="refused the API key"):
        call_command("create_deployment", "--workspace", "acme", "--from-server", stub, stdout=StringIO())
    assert Deployment.objects.count() == 1


def test_create_deployment_from_server_adds_the_demo_server_as_a_replica_of_the_deployment_serving_its_model(world, demos, monkeypatch):
    monkeypatch.setenv("DEMO_KEY_FOR_IMPORT", UPSTREAM_KEY)
    args = ("create_deployment", "--workspace", "acme", "--upstream-key-env", "DEMO_KEY_FOR_IMPORT", "--from-server")
    first = StringIO()
    call_command(*args, demos[0].url, stdout=first)
    assert "gatehouse-demo: created" in first.getvalue()
    second = StringIO()
    call_command(*args, demos[1].url, stdout=second)
    deployment = Deployment.objects.get()
    assert "gatehouse-demo: replica added" in second.getvalue() and UPSTREAM_KEY not in second.getvalue()
    assert sorted(deployment.replicas.values_list("base_url", flat=True)) == sorted([demos[0].url + "/v1", demos[1].url + "/v1"])


def test_admin_imports_from_the_console_in_two_steps(world, demos, client_for):
    client = client_for(world.admin)
    url = reverse("deployments_import", kwargs={"ws": "acme"})
    assert client.get(url).status_code == 200

    offered = client.post(url, {"base_url": demos[0].url, "api_key": UPSTREAM_KEY})
    assert offered.status_code == 200 and b"gatehouse-demo" in offered.content and b"New deployment" in offered.content
    assert UPSTREAM_KEY.encode() not in offered.content  # the key goes on encrypted
    sealed = offered.context["sealed_key"]
    assert not Deployment.objects.exists()

    imported = client.post(url, {"base_url": demos[0].url, "sealed_key": sealed, "models": ["gatehouse-demo"]})
    assert imported.status_code == 302
    replica = DeploymentReplica.objects.get()
    assert replica.deployment.model_id == "@acme/gatehouse-demo" and decrypt(replica.api_key_encrypted) == UPSTREAM_KEY

    # The second server serves the same upstream model: offered as a replica of that deployment.
    offered = client.post(url, {"base_url": demos[1].url, "api_key": UPSTREAM_KEY})
    assert offered.status_code == 200 and b"Add as a replica of" in offered.content and b"New deployment" not in offered.content
    imported = client.post(url, {"base_url": demos[1].url, "sealed_key": offered.context["sealed_key"], "models": ["gatehouse-demo"]})
    assert imported.status_code == 302
    deployment = Deployment.objects.get()
    assert sorted(deployment.replicas.values_list("base_url", flat=True)) == sorted([demos[0].url + "/v1", demos[1].url + "/v1"])
    assert AuditEvent.objects.filter(action="deployment.replica_added", target_id=str(deployment.public_id)).count() == 1


@pytest.mark.parametrize(("role", "status"), [("outsider", 404), ("developer", 403)])
def test_only_admins_import(world, demos, client_for, role, status):
    response = client_for(world.user(role)).post(reverse("deployments_import", kwargs={"ws": "acme"}), {"base_url": demos[0].url})
    assert response.status_code == status
