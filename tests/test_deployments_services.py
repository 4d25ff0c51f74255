"""Deployment services: creation, updates, status, effective-dated prices, grants; each change audited."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from deployments import changes
from deployments.models import Deployment, DeploymentPrice, DeploymentStatus, ModelGrant
from deployments.selectors import callable_deployments, price_in_force
from deployments.services import (
    deployment_create,
    deployment_price_set,
    deployment_start,
    deployment_stop,
    deployment_update,
    model_grant_add,
    model_grant_remove,
)
from keys.models import RouterProvider, RouterProviderGrant
from lib.crypto import decrypt


@pytest.fixture
def actor(world):
    return Actor(user=world.admin, ip="203.0.113.9", label="adam")


def make(world, actor, **kwargs) -> Deployment:
    values = {
        "workspace": world.org,
        "actor": actor,
        "name": "Qwen",
        "model_id": "@acme/Qwen/Qwen3-0.6B",
        "upstream_base_url": "http://10.0.0.5:8000/v1",
        "input_per_million": "0.50",
        "output_per_million": "1.50",
    }
    values.update(kwargs)
    return deployment_create(**values)


def events(action: str):
    return list(AuditEvent.objects.filter(action=action).order_by("id"))


def test_create_stores_deployment_first_price_and_audits(world, actor):
    deployment = make(world, actor, upstream_api_key="sk-upstream-secret-9876")
    assert deployment.status == DeploymentStatus.RUNNING
    assert deployment.created_by == world.admin
    price = price_in_force(deployment, timezone.now())
    assert (price.input_per_million, price.output_per_million, price.currency) == (Decimal("0.5"), Decimal("1.5"), "USD")
    (created,) = events("deployment.created")
    assert created.workspace == world.org and created.actor == world.admin and created.client_ip == "203.0.113.9"
    assert created.details["upstream"] == "10.0.0.5:8000"
    assert len(events("deployment.price_set")) == 1


def test_upstream_key_is_encrypted_at_rest_and_only_last4_kept(world, actor):
    deployment = make(world, actor, upstream_api_key="sk-upstream-secret-9876")
    deployment.refresh_from_db()
    assert "sk-upstream-secret" not in deployment.upstream_api_key_encrypted
    assert decrypt(deployment.upstream_api_key_encrypted) == "sk-upstream-secret-9876"
    assert deployment.upstream_api_key_last4 == "9876"
    assert "sk-upstream-secret" not in str(list(AuditEvent.objects.values_list("details", flat=True)))


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("", "Enter the model id"),
        (" padded", "cannot start or end with spaces"),
        ("tab\there", "control or invisible"),
        ("x" * 201, "At most 200"),
        ("byok/mine/gpt-4o", "reserved"),
    ],
)
def test_bad_model_ids_are_refused_and_nothing_is_created(world, actor, model_id, message):
    with pytest.raises(ValidationError) as info:
        make(world, actor, model_id=model_id)
    assert message in str(info.value)
    assert not Deployment.objects.exists() and not AuditEvent.objects.filter(action__startswith="deployment.").exists()


def test_model_id_must_be_unique_ignoring_case_and_not_shadow_a_router(world, actor):
    make(world, actor, model_id="qwen-plus")
    with pytest.raises(ValidationError, match="already used"):
        make(world, actor, model_id="Qwen-Plus")
    RouterProvider.objects.create(slug="openrouter", name="OpenRouter", base_url="https://openrouter.example/api/v1")
    with pytest.raises(ValidationError, match="reserved"):
        make(world, actor, model_id="openrouter/gpt-4o")
    assert Deployment.objects.count() == 1


def test_metadata_upstream_is_refused_by_the_service_not_just_the_form(world, actor):
    with pytest.raises(ValidationError) as info:
        make(world, actor, upstream_base_url="http://169.254.169.254/latest")
    assert "upstream_base_url" in info.value.message_dict
    assert not Deployment.objects.exists()


def test_update_records_changes_keeps_or_replaces_or_clears_the_key(world, actor):
    deployment = make(world, actor, upstream_api_key="sk-first-1111")
    common = {
        "deployment": deployment,
        "actor": actor,
        "name": "Qwen renamed",
        "model_id": deployment.model_id,
        "upstream_base_url": "http://10.0.0.6:8000/v1",
    }
    deployment_update(**common)
    deployment.refresh_from_db()
    assert deployment.name == "Qwen renamed" and deployment.upstream_api_key_last4 == "1111"  # empty key field keeps it
    (updated,) = events("deployment.updated")
    assert updated.details["name"] == ["Qwen", "Qwen renamed"]
    assert updated.details["upstream_base_url"] == ["10.0.0.5:8000", "10.0.0.6:8000"]

    deployment_update(**common, upstream_api_key="sk-second-2222")
    deployment.refresh_from_db()
    assert decrypt(deployment.upstream_api_key_encrypted) == "sk-second-2222"
    assert events("deployment.updated")[-1].details == {"upstream_api_key": "replaced"}

    deployment_update(**common, clear_upstream_api_key=True)
    deployment.refresh_from_db()
    assert deployment.upstream_api_key_encrypted == "" and deployment.upstream_api_key_last4 == ""
    assert events("deployment.updated")[-1].details == {"upstream_api_key": "removed"}

    deployment_update(**common)  # nothing changed: no audit event
    assert len(events("deployment.updated")) == 3


def test_update_refuses_link_local_upstream_and_changes_nothing(world, actor):
    deployment = make(world, actor)
    with pytest.raises(ValidationError):
        deployment_update(
            deployment=deployment, actor=actor, name="x", model_id=deployment.model_id, upstream_base_url="http://[fe80::1]/v1"
        )
    deployment.refresh_from_db()
    assert deployment.name == "Qwen" and deployment.upstream_base_url == "http://10.0.0.5:8000/v1"


def test_stop_and_start_are_audited_once_per_change(world, actor):
    deployment = make(world, actor)
    deployment_stop(deployment=deployment, actor=actor)
    deployment_stop(deployment=deployment, actor=actor)  # already stopped: no second event
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.STOPPED
    deployment_start(deployment=deployment, actor=actor)
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.RUNNING
    assert [e.details for e in events("deployment.stopped")] == [{"from": "running", "to": "stopped"}]
    assert [e.details for e in events("deployment.started")] == [{"from": "stopped", "to": "running"}]


def test_a_price_change_leaves_past_versions_intact_and_price_in_force_picks_by_time(world, actor):
    t0 = timezone.now().replace(microsecond=0)
    with time_machine.travel(t0, tick=False):
        deployment = make(world, actor)
    first = DeploymentPrice.objects.get(deployment=deployment)
    first_row = DeploymentPrice.objects.filter(pk=first.pk).values().get()

    with time_machine.travel(t0 + timedelta(days=10), tick=False):
        second = deployment_price_set(deployment=deployment, actor=actor, input_per_million="0.80", output_per_million="2.40")
        scheduled = deployment_price_set(
            deployment=deployment, actor=actor, input_per_million="1", output_per_million="3", effective_from=t0 + timedelta(days=20)
        )

    assert DeploymentPrice.objects.filter(pk=first.pk).values().get() == first_row  # the old version is untouched
    assert price_in_force(deployment, t0 - timedelta(seconds=1)) is None
    assert price_in_force(deployment, t0) == first
    assert price_in_force(deployment, t0 + timedelta(days=9, hours=23)) == first
    assert price_in_force(deployment, t0 + timedelta(days=10)) == second
    assert price_in_force(deployment, t0 + timedelta(days=19)) == second
    assert price_in_force(deployment, t0 + timedelta(days=30)) == scheduled
    assert [e.details["input_per_million"] for e in events("deployment.price_set")] == ["0.50", "0.80", "1"]


def test_a_price_cannot_be_backdated_or_change_currency_or_be_negative(world, actor):
    deployment = make(world, actor)
    with pytest.raises(ValidationError, match="cannot start in the past"):
        deployment_price_set(
            deployment=deployment,
            actor=actor,
            input_per_million="9",
            output_per_million="9",
            effective_from=timezone.now() - timedelta(hours=1),
        )
    with pytest.raises(ValidationError, match="priced in USD"):
        deployment_price_set(deployment=deployment, actor=actor, input_per_million="9", output_per_million="9", currency="EUR")
    with pytest.raises(ValidationError, match="between 0"):
        deployment_price_set(deployment=deployment, actor=actor, input_per_million="-1", output_per_million="9")
    with pytest.raises(ValidationError, match="6 decimal places"):
        deployment_price_set(deployment=deployment, actor=actor, input_per_million="0.0000001", output_per_million="9")
    assert DeploymentPrice.objects.filter(deployment=deployment).count() == 1


def test_setting_the_price_already_in_force_adds_no_version(world, actor):
    deployment = make(world, actor)
    deployment_price_set(deployment=deployment, actor=actor, input_per_million="0.5", output_per_million="1.500")
    assert DeploymentPrice.objects.filter(deployment=deployment).count() == 1
    assert len(events("deployment.price_set")) == 1


def test_grants_let_a_sub_workspace_call_a_deployment_and_are_audited_in_both(world, actor):
    deployment = make(world, actor)
    assert deployment in callable_deployments(world.org)
    assert deployment not in callable_deployments(world.sub)

    model_grant_add(deployment=deployment, workspace=world.sub, actor=actor)
    model_grant_add(deployment=deployment, workspace=world.sub, actor=actor)  # idempotent
    assert list(callable_deployments(world.sub)) == [deployment]
    assert {e.workspace for e in events("model_grant.added")} == {world.org, world.sub}
    assert len(events("model_grant.added")) == 2

    assert model_grant_remove(deployment=deployment, workspace=world.sub, actor=actor) is True
    assert model_grant_remove(deployment=deployment, workspace=world.sub, actor=actor) is False
    assert deployment not in callable_deployments(world.sub)
    assert len(events("model_grant.removed")) == 2
    assert events("model_grant.removed")[0].details["workspace"] == "acme-research"


def test_grants_stay_inside_the_organisation(world, actor):
    deployment = make(world, actor)
    for workspace in (world.other_org, world.org):
        with pytest.raises(ValidationError):
            model_grant_add(deployment=deployment, workspace=workspace, actor=actor)
    assert not ModelGrant.objects.exists()


@pytest.fixture
def probes(monkeypatch) -> list[int]:
    """Deployment ids a health probe was enqueued for (the broker is the process boundary)."""
    sent: list[int] = []
    monkeypatch.setattr("deployments.tasks.deployment_probe.apply_async", lambda args, **kw: sent.append(args[0]))
    return sent


def test_create_and_start_probe_the_upstream_once_committed(world, actor, probes, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        deployment = make(world, actor)
        assert probes == []  # never before the row is committed: the worker would not find it
    assert probes == [deployment.id]

    with django_capture_on_commit_callbacks(execute=True):
        deployment_stop(deployment=deployment, actor=actor)
    assert probes == [deployment.id]  # a stopped deployment is not probed

    with django_capture_on_commit_callbacks(execute=True):
        deployment_start(deployment=deployment, actor=actor)
    assert probes == [deployment.id] * 2


def test_an_upstream_change_is_probed_but_a_rename_is_not(world, actor, probes, django_capture_on_commit_callbacks):
    deployment = make(world, actor)
    same = {"model_id": deployment.model_id, "upstream_base_url": deployment.upstream_base_url}

    with django_capture_on_commit_callbacks(execute=True):
        deployment_update(deployment=deployment, actor=actor, name="Renamed", **same)
    assert probes == []

    with django_capture_on_commit_callbacks(execute=True):
        deployment_update(
            deployment=deployment, actor=actor, name="Renamed", model_id=deployment.model_id, upstream_base_url="http://10.0.0.6:8000/v1"
        )
    assert probes == [deployment.id]

    with django_capture_on_commit_callbacks(execute=True):
        deployment_update(
            deployment=deployment,
            actor=actor,
            name="Renamed",
            model_id=deployment.model_id,
            upstream_base_url="http://10.0.0.6:8000/v1",
            upstream_api_key="sk-new-key-1234",
        )
    assert probes == [deployment.id] * 2


def test_router_deployments_are_not_probed(world, actor, probes, django_capture_on_commit_callbacks):
    provider = RouterProvider.objects.create(slug="openrouter", name="OpenRouter", base_url="https://openrouter.example/api/v1")
    RouterProviderGrant.objects.create(provider=provider, workspace=world.org)
    with django_capture_on_commit_callbacks(execute=True):
        routed = make(world, actor, model_id="routed", upstream_kind="router", upstream_base_url="", router_provider=provider)
        deployment_stop(deployment=routed, actor=actor)
        deployment_start(deployment=routed, actor=actor)
    assert probes == []


def test_changes_are_published_to_gateways_after_commit(world, actor, probes, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        deployment = make(world, actor)
    before = changes.local_generations[deployment.id]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        deployment_stop(deployment=deployment, actor=actor)
    assert len(callbacks) == 1
    assert changes.local_generations[deployment.id] == before + 1
    from lib.redis import redis_client

    assert int(redis_client().hget(changes.GENERATION_KEY, str(deployment.id))) >= 1


def test_create_deployment_command_prints_what_it_made(world, monkeypatch):
    monkeypatch.setenv("UPSTREAM_KEY_FOR_TEST", "sk-from-env-4242")
    out = StringIO()
    call_command(
        "create_deployment",
        "--workspace",
        "acme",
        "--name",
        "Demo",
        "--model",
        "demo-model",
        "--upstream-url",
        "http://127.0.0.1:9000/v1",
        "--upstream-key-env",
        "UPSTREAM_KEY_FOR_TEST",
        "--input-price",
        "0.1",
        "--output-price",
        "0.2",
        stdout=out,
    )
    deployment = Deployment.objects.get(model_id="demo-model")
    lines = out.getvalue().strip().splitlines()
    assert lines[-1] == str(deployment.public_id)
    assert "demo-model" in out.getvalue() and "sk-from-env" not in out.getvalue() and "…4242" in out.getvalue()
    assert decrypt(deployment.upstream_api_key_encrypted) == "sk-from-env-4242"
    assert price_in_force(deployment, timezone.now()).output_per_million == Decimal("0.2")
    assert AuditEvent.objects.get(action="deployment.created").actor_label == "manage.py create_deployment"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workspace", "nope"], "No workspace"),
        (["--upstream-url", "http://169.254.169.254/"], "cloud metadata"),
        (["--upstream-key-env", "SURELY_NOT_SET_ANYWHERE"], "not set"),
    ],
)
def test_create_deployment_command_fails_clearly(world, args, message):
    base = {"--workspace": "acme", "--name": "Demo", "--model": "demo-model", "--upstream-url": "http://127.0.0.1:9000/v1"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(CommandError, match=message):
        call_command("create_deployment", *[x for pair in base.items() for x in pair], stdout=StringIO())
    assert not Deployment.objects.exists()


def test_router_and_byok_upstreams_need_their_own_target(world, actor):
    from keys.models import ByokCredential
    from lib.crypto import encrypt

    provider = RouterProvider.objects.create(slug="openrouter", name="OpenRouter", base_url="https://openrouter.example/api/v1")
    RouterProviderGrant.objects.create(provider=provider, workspace=world.org)
    routed = make(world, actor, model_id="routed", upstream_kind="router", upstream_base_url="", router_provider=provider)
    assert routed.router_provider == provider and routed.upstream_base_url == ""
    with pytest.raises(ValidationError, match="router provider"):
        make(world, actor, model_id="routed-2", upstream_kind="router", upstream_base_url="")

    foreign = ByokCredential.objects.create(
        workspace=world.other_org,
        name="theirs",
        provider="openai",
        base_url="https://api.openai.example/v1",
        api_key_encrypted=encrypt("x"),
        api_key_last4="xxxx",
    )
    with pytest.raises(ValidationError, match="BYOK credential of this workspace"):
        make(world, actor, model_id="byok-model", upstream_kind="byok", upstream_base_url="", byok_credential=foreign)
    ours = ByokCredential.objects.create(
        workspace=world.org,
        name="ours",
        provider="openai",
        base_url="https://api.openai.example/v1",
        api_key_encrypted=encrypt("x"),
        api_key_last4="xxxx",
    )
    assert (
        make(world, actor, model_id="byok-model", upstream_kind="byok", upstream_base_url="", byok_credential=ours).byok_credential == ours
    )
