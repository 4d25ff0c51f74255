"""Replicas of a deployment: services (each change audited), the first replica mirrored on the
deployment, create_deployment with several URLs, the data migration, per-replica probes against a
real local upstream and a dead port, and the console pages."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from console.audit import Actor
from console.models import AuditEvent
from deployments import changes, health
from deployments.models import Deployment, DeploymentReplica, DeploymentStatus, ReplicaStatus
from deployments.services import deployment_create, deployment_update, replica_add, replica_remove, replica_update
from lib.crypto import decrypt, encrypt

from .worker_processes import free_port, start_upstream, stop

UPSTREAM_KEY = "sk-upstream-" + "r" * 24


@pytest.fixture
def actor(world):
    return Actor(user=world.admin, ip="203.0.113.9", label="adam")


@pytest.fixture
def dep(world, actor) -> Deployment:
    return deployment_create(
        workspace=world.org, actor=actor, name="Qwen", model_id="@acme/qwen", upstream_base_url="http://127.0.0.1:9001/v1"
    )


@pytest.fixture(scope="module")
def upstream():
    port = free_port()
    proc = start_upstream(port, UPSTREAM_KEY)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_a_new_endpoint_deployment_has_its_upstream_as_first_replica(dep):
    (replica,) = dep.replicas.all()
    assert (replica.base_url, replica.weight, replica.enabled, replica.max_concurrent) == ("http://127.0.0.1:9001/v1", 1, True, None)
    assert replica.status == ReplicaStatus.UNKNOWN


def test_adding_updating_and_removing_replicas_is_audited_and_announced(dep, actor, django_capture_on_commit_callbacks):
    before = changes.local_generations[dep.id]
    with django_capture_on_commit_callbacks(execute=True):
        second = replica_add(deployment=dep, actor=actor, base_url="http://127.0.0.1:9002/v1/", weight=3, api_key=" sk-second-4321 ")
    assert changes.local_generations[dep.id] == before + 1
    assert (second.base_url, second.weight, second.api_key_last4) == ("http://127.0.0.1:9002/v1", 3, "4321")
    assert decrypt(second.api_key_encrypted) == "sk-second-4321"
    added = AuditEvent.objects.get(action="deployment.replica_added")
    assert added.details["host"] == "127.0.0.1:9002" and added.details["weight"] == 3 and added.details["upstream_api_key"] == "set"
    assert "sk-second" not in str(added.details)

    replica_update(replica=second, actor=actor, base_url=second.base_url, weight=5, max_concurrent=4, enabled=True)
    updated = AuditEvent.objects.get(action="deployment.replica_updated")
    assert updated.details["weight"] == [3, 5] and updated.details["max_concurrent"] == [None, 4]

    replica_remove(replica=second, actor=actor)
    assert list(dep.replicas.values_list("base_url", flat=True)) == ["http://127.0.0.1:9001/v1"]
    assert AuditEvent.objects.get(action="deployment.replica_removed").details["host"] == "127.0.0.1:9002"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"base_url": "http://169.254.169.254/v1"}, "base_url", "metadata"),
        ({"base_url": "http://127.0.0.1:9001/v1"}, "base_url", "already has a replica"),
        ({"weight": 0}, "weight", "1 to 100"),
        ({"weight": 101}, "weight", "1 to 100"),
        ({"max_concurrent": 0}, "max_concurrent", "from 1"),
    ],
)
def test_bad_replicas_are_refused_and_change_nothing(dep, actor, fields, field, message):
    values = {"base_url": "http://127.0.0.1:9002/v1", "weight": 1, **fields}
    with pytest.raises(ValidationError) as exc:
        replica_add(deployment=dep, actor=actor, **values)
    assert message in " ".join(exc.value.message_dict[field])
    assert dep.replicas.count() == 1 and not AuditEvent.objects.filter(action__startswith="deployment.replica").exists()


def test_the_last_replica_cannot_be_removed_or_disabled(dep, actor):
    (only,) = dep.replicas.all()
    with pytest.raises(ValidationError, match="at least one replica"):
        replica_remove(replica=only, actor=actor)
    with pytest.raises(ValidationError, match="only enabled replica"):
        replica_update(replica=only, actor=actor, base_url=only.base_url, enabled=False)
    only.refresh_from_db()
    assert only.enabled


def test_the_deployment_shows_its_first_replica_and_an_edit_of_its_upstream_edits_that_replica(dep, actor):
    second = replica_add(deployment=dep, actor=actor, base_url="http://127.0.0.1:9002/v1")
    first = dep.replicas.order_by("id").first()
    deployment_update(
        deployment=dep,
        actor=actor,
        name=dep.name,
        model_id=dep.model_id,
        upstream_base_url="http://127.0.0.1:9003/v1",
        upstream_api_key="sk-new-9999",
    )
    first.refresh_from_db()
    assert first.base_url == "http://127.0.0.1:9003/v1" and decrypt(first.api_key_encrypted) == "sk-new-9999"

    replica_remove(replica=first, actor=actor)
    dep.refresh_from_db()
    assert dep.upstream_base_url == second.base_url and dep.upstream_api_key_encrypted == ""


def test_create_deployment_command_takes_several_urls_with_weights(world):
    out = StringIO()
    call_command(
        "create_deployment",
        *("--workspace", "acme", "--name", "Pool", "--model", "@acme/pool"),
        *("--upstream-url", "http://127.0.0.1:9001/v1", "--upstream-url", "http://127.0.0.1:9002/v1#weight=3"),
        stdout=out,
    )
    deployment = Deployment.objects.get(model_id="@acme/pool")
    assert list(deployment.replicas.values_list("base_url", "weight")) == [("http://127.0.0.1:9001/v1", 1), ("http://127.0.0.1:9002/v1", 3)]
    assert out.getvalue().strip().splitlines()[-1] == str(deployment.public_id)
    assert "http://127.0.0.1:9002/v1 (weight 3)" in out.getvalue()


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        (["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1#w=3"], "only option after # is weight=N"),
        (["http://127.0.0.1:9001/v1", "http://127.0.0.1:9002/v1#weight=0"], "1 to 100"),
        (["http://127.0.0.1:9001/v1", "http://127.0.0.1:9001/v1"], "already has a replica"),
    ],
)
def test_create_deployment_command_refuses_bad_replicas_and_creates_nothing(world, urls, message):
    args = ["--workspace", "acme", "--name", "Pool", "--model", "@acme/pool"]
    for url in urls:
        args += ["--upstream-url", url]
    with pytest.raises(CommandError, match=message):
        call_command("create_deployment", *args, stdout=StringIO())
    assert not Deployment.objects.exists() and not DeploymentReplica.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_migration_turns_each_existing_upstream_into_one_replica(world):
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    executor.migrate([("deployments", "0004_test_call")])
    old = executor.loader.project_state([("deployments", "0004_test_call")]).apps
    OldDeployment = old.get_model("deployments", "Deployment")
    down = OldDeployment.objects.create(
        workspace_id=world.org.id,
        name="a",
        model_id="@acme/a",
        upstream_base_url="http://127.0.0.1:9001/v1",
        upstream_api_key_encrypted=encrypt("sk-old-key-1234"),
        upstream_api_key_last4="1234",
        status="unreachable",
        last_error="Cannot connect",
    )
    OldDeployment.objects.create(workspace_id=world.org.id, name="r", model_id="router/x", upstream_kind="router")

    after = MigrationExecutor(connection)
    after.migrate(after.loader.graph.leaf_nodes())

    (replica,) = DeploymentReplica.objects.all()
    assert replica.deployment_id == down.id and replica.base_url == "http://127.0.0.1:9001/v1"
    assert decrypt(replica.api_key_encrypted) == "sk-old-key-1234" and replica.api_key_last4 == "1234"
    assert (replica.status, replica.last_error, replica.weight, replica.enabled) == (ReplicaStatus.DOWN, "Cannot connect", 1, True)


def test_each_replica_is_probed_and_the_deployment_stays_running_while_one_answers(
    world, actor, upstream, django_capture_on_commit_callbacks
):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    d = deployment_create(
        workspace=world.org,
        actor=actor,
        name="Pool",
        model_id="@acme/pool",
        upstream_base_url=f"{upstream}/v1",
        upstream_api_key=UPSTREAM_KEY,
    )
    second = replica_add(deployment=d, actor=actor, base_url=dead)
    heard = []
    changes.local_health_listeners.append(lambda replica_id, uid, up: heard.append((replica_id, up)))
    try:
        assert set(health.replicas_due_for_probe()) == set(d.replicas.values_list("id", flat=True))
        with django_capture_on_commit_callbacks(execute=True):
            checked = health.deployment_health_check(deployment_id=d.id)
    finally:
        changes.local_health_listeners.clear()

    first = d.replicas.order_by("id").first()
    second.refresh_from_db()
    assert (first.status, second.status) == (ReplicaStatus.UP, ReplicaStatus.DOWN)
    assert second.last_error.startswith("Cannot connect") and first.last_probe_ms is not None
    assert checked.status == DeploymentStatus.RUNNING
    assert checked.last_error.startswith("1 of 2 replicas down: 127.0.0.1:")
    assert sorted(heard) == sorted([(first.id, True), (second.id, False)])

    # Both down: the deployment is unreachable; the replica that went from up to down is audited.
    replica_update(replica=first, actor=actor, base_url=first.base_url, api_key="sk-wrong-" + "w" * 20)
    health.deployment_health_check(deployment_id=d.id)
    d.refresh_from_db()
    assert d.status == DeploymentStatus.UNREACHABLE
    assert AuditEvent.objects.filter(action="deployment.replica_down").count() == 1
    assert AuditEvent.objects.filter(action="deployment.unreachable").count() == 1


def test_disabled_replicas_are_not_probed(dep, actor):
    second = replica_add(deployment=dep, actor=actor, base_url="http://127.0.0.1:9002/v1", enabled=False)
    assert second.id not in health.replicas_due_for_probe()
    assert health.replica_health_check(replica_id=second.id) is None


# ---- pages -----------------------------------------------------------------------------------
def test_admin_adds_edits_and_removes_a_replica_on_the_details_page(world, dep, client_for):
    client = client_for(world.admin)
    page = client.get(reverse("deployment_detail", kwargs={"ws": "acme", "deployment": dep.public_id}))
    assert page.status_code == 200 and b"127.0.0.1:9001" in page.content and b"Add a replica" in page.content

    url = reverse("replica_add", kwargs={"ws": "acme", "deployment": dep.public_id})
    response = client.post(url, {"base_url": "http://127.0.0.1:9002/v1", "weight": "2", "max_concurrent": "", "enabled": "on"})
    assert response.status_code == 302
    replica = dep.replicas.get(base_url="http://127.0.0.1:9002/v1")
    assert (replica.weight, replica.max_concurrent) == (2, None)

    edit = reverse("replica_edit", kwargs={"ws": "acme", "deployment": dep.public_id, "replica": replica.public_id})
    assert client.get(edit).status_code == 200
    response = client.post(edit, {"base_url": replica.base_url, "weight": "4", "max_concurrent": "8"})  # enabled unticked
    assert response.status_code == 302
    replica.refresh_from_db()
    assert (replica.weight, replica.max_concurrent, replica.enabled) == (4, 8, False)

    bad = client.post(url, {"base_url": "ftp://x", "weight": "1"})
    assert bad.status_code == 400 and b"http://" in bad.content and dep.replicas.count() == 2

    remove = reverse("replica_remove", kwargs={"ws": "acme", "deployment": dep.public_id, "replica": replica.public_id})
    assert client.post(remove).status_code == 302
    assert dep.replicas.count() == 1


@pytest.mark.parametrize(("role", "status"), [("outsider", 404), ("viewer", 403), ("developer", 403)])
def test_only_admins_manage_replicas(world, dep, client_for, role, status):
    client = client_for(world.user(role))
    url = reverse("replica_add", kwargs={"ws": "acme", "deployment": dep.public_id})
    assert client.post(url, {"base_url": "http://127.0.0.1:9002/v1", "weight": "1", "enabled": "on"}).status_code == status
    assert dep.replicas.count() == 1


def test_a_replica_of_another_deployment_is_a_404(world, dep, actor, client_for):
    other = deployment_create(
        workspace=world.org, actor=actor, name="Other", model_id="@acme/other", upstream_base_url="http://127.0.0.1:9005/v1"
    )
    foreign = other.replicas.get()
    url = reverse("replica_edit", kwargs={"ws": "acme", "deployment": dep.public_id, "replica": foreign.public_id})
    assert client_for(world.admin).get(url).status_code == 404


def test_the_organisation_sets_a_sub_workspaces_queue_priority(world, actor, client_for, django_capture_on_commit_callbacks):
    from deployments.services import workspace_queue_priority_set
    from keys import changes as key_changes
    from tests.factories import make_key

    key, _ = make_key(world.sub, all_models=True)
    before = key_changes.local_generations[key.id]
    with django_capture_on_commit_callbacks(execute=True):
        workspace_queue_priority_set(workspace=world.sub, actor=actor, priority="3")
    world.sub.refresh_from_db()
    assert world.sub.queue_priority == 3 and key_changes.local_generations[key.id] == before + 1  # gateways reload its keys
    event = AuditEvent.objects.get(action="workspace.queue_priority_set")
    assert event.workspace_id == world.org.id and event.details == {"workspace": "acme-research", "from": 1, "to": 3}

    for bad in ("0", "11", "x"):
        with pytest.raises(ValidationError):
            workspace_queue_priority_set(workspace=world.sub, actor=actor, priority=bad)
    with pytest.raises(ValidationError, match="sub-workspaces"):
        workspace_queue_priority_set(workspace=world.org, actor=actor, priority=2)

    url = reverse("queue_priority_save", kwargs={"ws": "acme"})
    page = client_for(world.admin).get(reverse("grants_page", kwargs={"ws": "acme"}))
    assert b'name="priority-acme-research"' in page.content
    assert client_for(world.admin).post(url, {"priority-acme-research": "5"}).status_code == 302
    world.sub.refresh_from_db()
    assert world.sub.queue_priority == 5
    # The sub-workspace cannot raise its own priority: it has no door to the organisation's page.
    assert client_for(world.sub_member).post(url, {"priority-acme-research": "10"}).status_code == 404
    assert client_for(world.developer).post(url, {"priority-acme-research": "10"}).status_code == 403
    world.sub.refresh_from_db()
    assert world.sub.queue_priority == 5
