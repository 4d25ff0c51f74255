"""URL parameter values for the URLconf walk in test_urls.py, one entry per parameter name."""

from __future__ import annotations


def extra_values(world) -> dict:
    from console.audit import Actor
    from deployments.models import Deployment, DeploymentReplica, TestCall
    from keys.services import api_key_create, byok_credential_create

    deployment = Deployment.objects.create(
        workspace=world.org, name="URL walk", model_id="url-walk-model", upstream_base_url="http://127.0.0.1:9/v1"
    )
    replica = DeploymentReplica.objects.create(deployment=deployment, base_url=deployment.upstream_base_url)
    actor = Actor.system("tests")
    api_key, _ = api_key_create(workspace=world.org, actor=actor, name="url-walk", all_models=True)
    credential = byok_credential_create(
        workspace=world.org,
        actor=actor,
        name="url-walk",
        provider="OpenAI",
        base_url="https://api.openai.com/v1",
        api_key="sk-test-0123456789",
        model_names="gpt-4o-mini",
    )
    test_call = TestCall.objects.create(deployment=deployment, workspace=world.org, prompt="url walk")
    from keys.models import RouterProvider

    provider = RouterProvider.objects.create(slug="url-walk", name="URL walk", base_url="https://router.example/v1")
    from console.invitations import invitation_create
    from console.models import Role
    from console.sso import sso_mapping_create

    invitation, _ = invitation_create(workspace=world.org, email="walk@example.com", role=Role.VIEWER, actor=actor, actor_role=Role.OWNER)
    mapping = sso_mapping_create(workspace=world.org, group="url-walk", role=Role.VIEWER, actor=actor, actor_role=Role.OWNER)
    return {
        "deployment": deployment.public_id,
        "key": api_key.public_id,
        "credential": credential.public_id,
        "call": test_call.public_id,
        "replica": replica.public_id,
        "provider": provider.slug,
        "workspace": world.org.public_id,
        "invitation": invitation.public_id,
        "mapping": mapping.public_id,
        "token": "not-a-real-invitation-token",
        "sub": world.sub.slug,
    }
