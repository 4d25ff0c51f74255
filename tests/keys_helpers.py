"""Objects the keys tests share: deployments, a router provider and a BYOK credential in the fixture world."""

from __future__ import annotations

from dataclasses import dataclass

from console.audit import Actor
from deployments.models import Deployment, ModelGrant
from keys.models import ByokCredential, RouterProvider, RouterProviderGrant
from keys.services import api_key_create, byok_credential_create

ACTOR = Actor.system("tests")


@dataclass
class Scope:
    qwen: Deployment  # in acme
    llama: Deployment  # in acme, granted to acme-research
    research_own: Deployment  # in acme-research
    globex: Deployment  # in the outsider's organisation
    router: RouterProvider
    byok: ByokCredential  # acme's


def make_scope(world) -> Scope:
    dep = lambda ws, name, model_id: Deployment.objects.create(  # noqa: E731
        workspace=ws, name=name, model_id=model_id, upstream_base_url="http://127.0.0.1:9/v1"
    )
    scope = Scope(
        qwen=dep(world.org, "Qwen3 0.6B", "@acme/Qwen/Qwen3-0.6B"),
        llama=dep(world.org, "Llama 3.1 8B", "@acme/meta/Llama-3.1-8B"),
        research_own=dep(world.sub, "Research model", "@acme-research/model"),
        globex=dep(world.other_org, "Globex secret model", "@globex/model"),
        router=RouterProvider.objects.create(
            slug="openrouter", name="OpenRouter", base_url="https://openrouter.ai/api/v1", model_names=["openai/gpt-4o-mini"]
        ),
        byok=byok_credential_create(
            workspace=world.org,
            actor=ACTOR,
            name="team-openai",
            provider="OpenAI",
            base_url="https://api.openai.com/v1",
            api_key="sk-proj-TESTKEY-abcdef123456",
            model_names="gpt-4o-mini, gpt-4o",
        ),
    )
    ModelGrant.objects.create(deployment=scope.llama, workspace=world.sub)
    RouterProviderGrant.objects.create(provider=scope.router, workspace=world.org)  # an installation admin granted it
    return scope


def make_key(workspace, name="app", **kwargs):
    kwargs.setdefault("all_models", True)
    return api_key_create(workspace=workspace, actor=ACTOR, name=name, **kwargs)
