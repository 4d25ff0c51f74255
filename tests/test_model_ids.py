"""Deployment model ids are unique per organisation, not installation-wide (issue 13, "Global
model ids"): on the old main, Acme could learn that Globex serves `qwen-plus` ("already used"),
and squat `@globex/…` ids before Globex created them. The gateway's 404 for another tenant's model
is byte-identical to the one for a model that does not exist."""

from __future__ import annotations

import httpx
import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from console.audit import Actor
from deployments.models import Deployment
from deployments.services import deployment_create, deployment_update
from gateway.keyload import load_key
from keys import tokens
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import chat_body

UPSTREAM = "http://10.0.0.5:8000/v1"


def create(world, workspace, model_id: str) -> Deployment:
    return deployment_create(
        workspace=workspace, actor=Actor(user=world.admin, label="adam"), name=model_id[:80], model_id=model_id, upstream_base_url=UPSTREAM
    )


def test_the_same_plain_model_id_lives_in_two_organisations(world):
    globex = create(world, world.other_org, "qwen-plus")
    acme = create(world, world.org, "qwen-plus")  # the old main said "already used": Globex's id leaked
    assert acme.model_id == globex.model_id and acme.pk != globex.pk


def test_another_organisations_prefix_cannot_be_squatted_or_probed(world):
    create(world, world.other_org, "@globex/secret-model")
    answers = []
    for model_id in ("@globex/secret-model", "@globex/no-such-model"):
        with pytest.raises(ValidationError) as caught:
            create(world, world.org, model_id)
        answers.append(caught.value.message_dict["model_id"])
    # Existing or not, the answer is the same: the prefix is not Acme's.
    assert answers[0] == answers[1] == ["Model ids starting with @ name their organisation: use @acme/…, or leave the @ prefix out."]
    assert not Deployment.objects.filter(workspace=world.org).exists()


def test_an_organisation_and_its_sub_workspaces_share_one_namespace(world):
    create(world, world.sub, "@acme/shared")
    with pytest.raises(ValidationError, match="already used by another deployment of Acme"):
        create(world, world.org, "@acme/SHARED")
    own = create(world, world.org, "@acme/other")
    with pytest.raises(ValidationError, match="already used"):
        deployment_update(deployment=own, actor=Actor.system("tests"), name="x", model_id="@acme/shared", upstream_base_url=UPSTREAM)
    # A sub-workspace's ids carry the organisation's prefix, not the sub-workspace's slug.
    with pytest.raises(ValidationError, match="use @acme/"):
        create(world, world.sub, "@acme-research/model")


def test_each_key_reaches_its_own_organisations_deployment(world):
    acme = create(world, world.org, "qwen-plus")
    globex = create(world, world.other_org, "qwen-plus")
    for workspace, expected in ((world.org, acme), (world.other_org, globex)):
        _, plaintext = make_key(workspace, all_models=True)
        entry = load_key(tokens.digest(plaintext, settings.API_KEY_PEPPER))
        assert entry.routes["qwen-plus"].deployment_id == expected.id


demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway


@pytest.mark.django_db(transaction=True)
def test_gateway_404_for_another_tenants_model_is_byte_identical_to_a_missing_one(world, gateway, demo):
    def ask(model: str) -> tuple[int, bytes]:
        _, plaintext = make_key(world.org, all_models=True)  # a fresh key: nothing cached
        response = httpx.post(
            gateway.url + "/v1/chat/completions", json=chat_body(model), headers={"authorization": f"Bearer {plaintext}"}, timeout=20
        )
        return response.status_code, response.content

    foreign = make_deployment(world.other_org, base_url=demo.url + "/v1", model_id="@globex/secret-model")
    exists_elsewhere = ask("@globex/secret-model")
    project_path = f"/v1/{world.org.public_id}/deployments/{foreign.public_id}/chat/completions"
    _, plaintext = make_key(world.org, all_models=True)
    by_path = httpx.post(gateway.url + project_path, json=chat_body(None), headers={"x-apig-appcode": plaintext}, timeout=20)
    foreign.delete()
    missing = ask("@globex/secret-model")
    by_path_missing = httpx.post(gateway.url + project_path, json=chat_body(None), headers={"x-apig-appcode": plaintext}, timeout=20)

    assert exists_elsewhere[0] == missing[0] == 404
    assert exists_elsewhere[1] == missing[1]
    assert by_path.status_code == by_path_missing.status_code == 404
    assert by_path.content == by_path_missing.content
