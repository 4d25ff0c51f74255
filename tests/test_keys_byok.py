"""BYOK credentials (workspace admins) and router providers (site admins, Django admin)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse

from console.models import AuditEvent
from deployments.models import Deployment, UpstreamKind
from keys.models import ByokCredential, RouterProvider
from keys.services import byok_credential_create
from lib.crypto import decrypt, encrypt
from tests.keys_helpers import ACTOR, make_key, make_scope

PROVIDER_KEY = "sk-proj-SECRETSECRET-9876wxyz"


def url(name: str, **kwargs) -> str:
    return reverse(name, kwargs={"ws": "acme", **kwargs})


def form(**overrides) -> dict:
    return {
        "name": "openai-main",
        "provider": "OpenAI",
        "base_url": "https://api.openai.com/v1/",
        "api_key": PROVIDER_KEY,
        "model_names": "gpt-4o-mini\ngpt-4o, gpt-4o-mini",
        **overrides,
    }


def test_admin_adds_a_byok_credential_encrypted_and_never_shown_again(world, client_for):
    client = client_for(world.admin)
    response = client.post(url("byok_create"), form())
    assert response.status_code == 302
    credential = ByokCredential.objects.get(name="openai-main")
    assert credential.base_url == "https://api.openai.com/v1" and credential.model_names == ["gpt-4o-mini", "gpt-4o"]
    assert credential.api_key_last4 == "wxyz" and PROVIDER_KEY not in credential.api_key_encrypted
    assert decrypt(credential.api_key_encrypted) == PROVIDER_KEY
    for page in (client.get(url("byok_page")), client.get(url("byok_edit", credential=credential.public_id))):
        html = page.content.decode()
        assert "…wxyz" in html and PROVIDER_KEY not in html and PROVIDER_KEY[:-4] not in html
    event = AuditEvent.objects.get(action="byok_credential.created")
    assert PROVIDER_KEY not in str(event.details) and event.actor == world.admin


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "Open AI"}, "Enter a valid “slug”"),
        ({"base_url": "ftp://files.example.com"}, "Only http:// and https:// upstream URLs are allowed."),
        ({"base_url": "https://user:pw@api.example.com/v1"}, "Do not put credentials in the URL"),
        ({"base_url": "https://api.example.com/v1?key=abc"}, "cannot have a query string"),
        ({"api_key": "short"}, "8–500 characters, no spaces"),
        ({"model_names": "gpt 4o"}, "“gpt 4o” is not a model name"),
        ({"model_names": " , "}, "List at least one model"),
        ({"workspace": "globex"}, "This form does not accept “workspace”"),
    ],
)
def test_byok_form_refuses_bad_input_and_stores_nothing(world, client_for, overrides, message):
    response = client_for(world.admin).post(url("byok_create"), form(**overrides))
    assert response.status_code == 400 and message in response.content.decode()
    assert not ByokCredential.objects.exists()


def test_byok_names_are_unique_per_workspace(world):
    byok_credential_create(workspace=world.org, actor=ACTOR, **form())
    with pytest.raises(ValidationError, match="already exists"):
        byok_credential_create(workspace=world.org, actor=ACTOR, **form())
    byok_credential_create(workspace=world.sub, actor=ACTOR, **form())


def test_edit_keeps_the_stored_key_unless_a_new_one_is_given(world, client_for):
    credential = byok_credential_create(workspace=world.org, actor=ACTOR, **form())
    client = client_for(world.owner)
    response = client.post(
        url("byok_edit", credential=credential.public_id),
        {"provider": "OpenAI EU", "base_url": "https://eu.api.openai.com/v1", "model_names": "gpt-4o", "api_key": ""},
    )
    assert response.status_code == 302
    credential.refresh_from_db()
    assert (credential.provider, credential.model_names, decrypt(credential.api_key_encrypted)) == ("OpenAI EU", ["gpt-4o"], PROVIDER_KEY)
    client.post(
        url("byok_edit", credential=credential.public_id),
        {"provider": "OpenAI EU", "base_url": "https://eu.api.openai.com/v1", "model_names": "gpt-4o", "api_key": "sk-new-key-0000"},
    )
    credential.refresh_from_db()
    assert decrypt(credential.api_key_encrypted) == "sk-new-key-0000" and credential.api_key_last4 == "0000"
    changes = AuditEvent.objects.filter(action="byok_credential.updated").order_by("id")
    assert [sorted(e.details) for e in changes] == [["base_url", "model_names", "provider"], ["last4"]]


def test_delete_refuses_while_a_deployment_uses_it_and_removes_it_from_keys(world, client_for):
    credential = byok_credential_create(workspace=world.org, actor=ACTOR, **form())
    api_key, _ = make_key(world.org, all_models=False, byok_credentials=[credential], router_providers=[])
    deployment = Deployment.objects.create(
        workspace=world.org, name="Via BYOK", model_id="@acme/byok", upstream_kind=UpstreamKind.BYOK, byok_credential=credential
    )
    client = client_for(world.admin)
    response = client.post(url("byok_delete", credential=credential.public_id), follow=True)
    assert "The deployment “Via BYOK” uses this credential" in response.content.decode()
    assert ByokCredential.objects.filter(pk=credential.pk).exists()
    deployment.delete()
    client.post(url("byok_delete", credential=credential.public_id))
    assert not ByokCredential.objects.filter(pk=credential.pk).exists()
    assert not api_key.byok_credentials.exists()
    assert AuditEvent.objects.filter(action="byok_credential.deleted").count() == 1


def test_developer_sees_byok_credentials_but_cannot_manage_them(world, client_for):
    credential = byok_credential_create(workspace=world.org, actor=ACTOR, **form())
    client = client_for(world.developer)
    html = client.get(url("byok_page")).content.decode()
    assert "openai-main" in html and "Add BYOK credential" not in html and "Delete" not in html
    assert client.post(url("byok_delete", credential=credential.public_id)).status_code == 403
    assert client_for(world.outsider).get(url("byok_edit", credential=credential.public_id)).status_code == 404


def test_router_providers_are_read_only_in_django_admin(world, client):
    # They are managed in the console (tests/test_router_providers.py), where they get prices and
    # grants and gateways hear of changes; a second, unpriced write path would bypass all that.
    from console.models import User

    superuser = User.objects.create_superuser("root", "root@example.com", "x" * 12)
    client.force_login(superuser)
    assert client.get(reverse("admin:keys_routerprovider_add")).status_code == 403
    provider = RouterProvider.objects.create(
        slug="openrouter", name="OpenRouter", base_url="https://openrouter.ai/api/v1", api_key_encrypted=encrypt("sk-or-v1-abcdef0123")
    )
    change = client.get(reverse("admin:keys_routerprovider_change", args=[provider.pk]))
    assert change.status_code == 200 and "sk-or-v1-abcdef0123" not in change.content.decode()
    assert provider.api_key_encrypted not in change.content.decode()
    assert client.post(reverse("admin:keys_routerprovider_change", args=[provider.pk]), {"name": "x"}).status_code == 403


def test_keys_are_read_only_in_django_admin(world, client):
    from console.models import User

    api_key, _ = make_key(world.org)
    client.force_login(User.objects.create_superuser("root", "root@example.com", "x" * 12))
    assert client.get(reverse("admin:keys_apikey_changelist")).status_code == 200
    assert client.get(reverse("admin:keys_apikey_add")).status_code == 403
    make_scope(world)
    page = client.get(reverse("admin:keys_byokcredential_changelist")).content.decode()
    assert "team-openai" in page and "sk-proj-TESTKEY" not in page


def test_provider_key_is_hidden_from_error_reports(world, client_for):
    from django.views.debug import SafeExceptionReporterFilter

    response = client_for(world.admin).post(url("byok_create"), form(name="Bad Name"))
    filtered = SafeExceptionReporterFilter().get_post_parameters(response.wsgi_request)
    assert filtered["api_key"] != PROVIDER_KEY and filtered["provider"] == "OpenAI"


@pytest.mark.parametrize("base_url", ["http://169.254.169.254/v1", "http://metadata.google.internal/v1", "http://[fe80::1]/v1"])
def test_byok_base_url_cannot_point_at_link_local_or_metadata(world, client_for, base_url):
    from keys.models import ByokCredential

    before = ByokCredential.objects.count()
    response = client_for(world.admin).post(url("byok_create"), form(base_url=base_url))
    assert response.status_code == 400
    assert ByokCredential.objects.count() == before
