"""Key services: what they store, what they refuse, what they audit and announce."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from console.audit import Actor
from console.models import AuditEvent
from keys import changes, tokens
from keys.models import ApiKey, ApiKeySecret
from keys.selectors import KeyStatus, api_key_secret_for_presented, api_key_status, secret_is_valid
from keys.services import api_key_revoke, api_key_rotate, api_key_update
from lib.redis import redis_client
from tests.keys_helpers import make_key, make_scope

T0 = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)


def settings_of(api_key: ApiKey, **overrides) -> dict:
    values = {
        "description": api_key.description,
        "all_models": api_key.all_models,
        "deployments": list(api_key.deployments.all()),
        "router_providers": list(api_key.router_providers.all()),
        "all_byok": api_key.all_byok,
        "byok_credentials": list(api_key.byok_credentials.all()),
        "tpm_limit": api_key.tpm_limit,
        "yearly_token_limit": api_key.yearly_token_limit,
        "ip_allowlist": api_key.ip_allowlist,
        "expires_at": api_key.expires_at,
    }
    return {**values, **overrides}


def test_create_stores_scope_limits_and_only_a_digest(world):
    scope = make_scope(world)
    expires = timezone.now() + dt.timedelta(days=30)
    api_key, key = make_key(
        world.org,
        name="billing",
        description="Billing service",
        all_models=False,
        deployments=[scope.qwen, scope.llama],
        router_providers=[scope.router],
        byok_credentials=[scope.byok],
        tpm_limit=60000,
        yearly_token_limit=10_000_000,
        ip_allowlist="192.168.1.1, 10.0.0.0/8",
        expires_at=expires,
    )
    assert tokens.is_well_formed(key)
    api_key.refresh_from_db()
    assert api_key.hint == tokens.display_hint(key) == f"gh_live_…{key[-4:]}"
    assert {d.model_id for d in api_key.deployments.all()} == {"@acme/Qwen/Qwen3-0.6B", "@acme/meta/Llama-3.1-8B"}
    assert list(api_key.router_providers.all()) == [scope.router]
    assert list(api_key.byok_credentials.all()) == [scope.byok]
    assert (api_key.tpm_limit, api_key.yearly_token_limit) == (60000, 10_000_000)
    assert api_key.ip_allowlist == ["192.168.1.1/32", "10.0.0.0/8"]
    assert api_key.expires_at == expires
    secret = ApiKeySecret.objects.get(api_key=api_key)
    assert secret.digest == tokens.digest(key, settings.API_KEY_PEPPER) and key not in secret.digest
    assert secret.valid_until is None
    event = AuditEvent.objects.get(action="api_key.created")
    assert event.target_id == str(api_key.public_id)
    assert event.details["deployments"] == ["@acme/Qwen/Qwen3-0.6B", "@acme/meta/Llama-3.1-8B"]
    assert event.details["hint"] == api_key.hint and key not in str(event.details)


def test_all_models_and_all_byok_win_over_specific_picks(world):
    scope = make_scope(world)
    api_key, _ = make_key(world.org, all_models=True, deployments=[scope.qwen], all_byok=True, byok_credentials=[scope.byok])
    assert not api_key.deployments.exists() and not api_key.byok_credentials.exists()


@pytest.mark.parametrize(
    ("kwargs", "field", "message"),
    [
        ({"all_models": False}, "__all__", "Choose what this key may call"),
        ({"tpm_limit": 0}, "tpm_limit", "TPM must be a whole number from 1 to 2,147,483,647."),
        ({"tpm_limit": -5}, "tpm_limit", "TPM must be a whole number"),
        ({"tpm_limit": 2**31}, "tpm_limit", "TPM must be a whole number"),
        ({"tpm_limit": True}, "tpm_limit", "TPM must be a whole number"),
        ({"yearly_token_limit": 0}, "yearly_token_limit", "The yearly token limit must be a whole number"),
        ({"ip_allowlist": "10.0.0.1/8"}, "ip_allowlist", "“10.0.0.1/8” has host bits set"),
        ({"expires_at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)}, "expires_at", "The expiry must be in the future."),
        ({"expires_at": dt.datetime(2099, 1, 1)}, "expires_at", "Give the expiry with a time zone."),
        ({"description": "x" * 501}, "description", "Use at most 500 characters."),
    ],
)
def test_create_refuses_bad_settings_and_stores_nothing(world, kwargs, field, message):
    with pytest.raises(ValidationError) as exc:
        make_key(world.org, **kwargs)
    assert exc.value.message_dict[field][0].startswith(message)
    assert (
        not ApiKey.objects.exists()
        and not ApiKeySecret.objects.exists()
        and not AuditEvent.objects.filter(action__startswith="api_key").exists()
    )


def test_scope_must_belong_to_the_workspace(world):
    scope = make_scope(world)
    with pytest.raises(ValidationError) as exc:
        make_key(world.org, all_models=False, deployments=[scope.globex])
    assert exc.value.message_dict["deployments"] == ["“@globex/model” is not a deployment this workspace may call."]
    with pytest.raises(ValidationError) as exc:
        make_key(world.other_org, all_models=False, byok_credentials=[scope.byok])
    assert "belongs to another workspace" in exc.value.message_dict["byok_credentials"][0]
    scope.router.is_active = False
    scope.router.save(update_fields=["is_active"])
    with pytest.raises(ValidationError, match="not available"):
        make_key(world.org, all_models=False, router_providers=[scope.router])
    assert not ApiKey.objects.exists()


def test_sub_workspace_may_pick_granted_and_own_deployments_only(world):
    scope = make_scope(world)
    api_key, _ = make_key(world.sub, all_models=False, deployments=[scope.llama, scope.research_own])
    assert api_key.deployments.count() == 2
    with pytest.raises(ValidationError, match="@acme/Qwen/Qwen3-0.6B"):
        make_key(world.sub, name="other", all_models=False, deployments=[scope.qwen])  # not granted


def test_update_changes_settings_audits_the_diff_and_keeps_the_name(world):
    scope = make_scope(world)
    api_key, key = make_key(world.org, all_models=False, deployments=[scope.qwen], tpm_limit=1000)
    api_key_update(
        api_key=api_key,
        actor=Actor.system("t"),
        **settings_of(api_key, tpm_limit=2000, deployments=[scope.llama], ip_allowlist="2001:DB8::/32"),
    )
    api_key.refresh_from_db()
    assert api_key.name == "app" and api_key.tpm_limit == 2000 and api_key.ip_allowlist == ["2001:db8::/32"]
    assert list(api_key.deployments.all()) == [scope.llama]
    event = AuditEvent.objects.get(action="api_key.updated")
    assert event.details == {
        "deployments": [["@acme/Qwen/Qwen3-0.6B"], ["@acme/meta/Llama-3.1-8B"]],
        "tpm_limit": [1000, 2000],
        "ip_allowlist": [[], ["2001:db8::/32"]],
    }
    # Saving the same settings again is not a change: no second event.
    api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key))
    assert AuditEvent.objects.filter(action="api_key.updated").count() == 1


def test_update_refuses_bad_input_and_changes_nothing(world):
    api_key, _ = make_key(world.org, tpm_limit=1000)
    with pytest.raises(ValidationError):
        api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, tpm_limit=0, description="new"))
    api_key.refresh_from_db()
    assert api_key.tpm_limit == 1000 and api_key.description == ""


def test_update_keeps_an_unchanged_past_expiry_but_refuses_a_new_past_one(world):
    with time_machine.travel(T0, tick=False):
        api_key, _ = make_key(world.org, expires_at=T0 + dt.timedelta(days=1))
    with time_machine.travel(T0 + dt.timedelta(days=2), tick=False):
        api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, description="still expired"))
        with pytest.raises(ValidationError, match="in the future"):
            api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, expires_at=T0 + dt.timedelta(hours=36)))
        api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, expires_at=T0 + dt.timedelta(days=9)))
        api_key.refresh_from_db()
        assert api_key_status(api_key, timezone.now()) == KeyStatus.EXPIRING


def test_rotation_grace_old_secret_valid_inside_the_window_refused_after(world):
    with time_machine.travel(T0, tick=False):
        api_key, old = make_key(world.org)
        new = api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(hours=1))
    assert new != old and api_key.hint == tokens.display_hint(new)
    assert ApiKey.objects.get(pk=api_key.pk).hint == tokens.display_hint(new)

    def valid(key: str) -> bool:
        secret = api_key_secret_for_presented(key)
        return secret is not None and secret_is_valid(secret, timezone.now())

    with time_machine.travel(T0 + dt.timedelta(minutes=59, seconds=59), tick=False):
        assert valid(old) and valid(new)
    with time_machine.travel(T0 + dt.timedelta(hours=1), tick=False):
        assert not valid(old) and valid(new)
    with time_machine.travel(T0 + dt.timedelta(days=400), tick=False):
        assert valid(new)  # no expiry: the current secret stays valid
    event = AuditEvent.objects.get(action="api_key.rotated")
    assert event.details["grace_seconds"] == 3600 and old not in str(event.details) and new not in str(event.details)


def test_rotation_without_grace_stops_the_old_secret_at_once(world):
    with time_machine.travel(T0, tick=False):
        api_key, old = make_key(world.org)
        new = api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0))
        assert not secret_is_valid(api_key_secret_for_presented(old), timezone.now())
        assert secret_is_valid(api_key_secret_for_presented(new), timezone.now())


def test_a_later_rotation_never_extends_an_earlier_grace(world):
    with time_machine.travel(T0, tick=False):
        api_key, first = make_key(world.org)
        second = api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(days=7))
        third = api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0))  # e.g. the key leaked
        now = timezone.now()
        assert [secret_is_valid(api_key_secret_for_presented(k), now) for k in (first, second, third)] == [False, False, True]
    with time_machine.travel(T0 - dt.timedelta(days=1), tick=False):
        api_key2, a = make_key(world.org, name="two")
        b = api_key_rotate(api_key=api_key2, actor=Actor.system("t"), grace=dt.timedelta(hours=1))
        api_key_rotate(api_key=api_key2, actor=Actor.system("t"), grace=dt.timedelta(days=7))
        # The first secret keeps its 1-hour deadline; the second gets 7 days.
        assert api_key_secret_for_presented(a).valid_until == T0 - dt.timedelta(days=1) + dt.timedelta(hours=1)
        assert api_key_secret_for_presented(b).valid_until == T0 + dt.timedelta(days=6)


def test_rotation_keeps_identity_limits_and_usage(world):
    api_key, _ = make_key(world.org, tpm_limit=500)
    public_id, pk = api_key.public_id, api_key.pk
    api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(hours=24))
    api_key.refresh_from_db()
    assert (api_key.pk, api_key.public_id, api_key.tpm_limit) == (pk, public_id, 500)
    assert api_key.secrets.count() == 2


@pytest.mark.parametrize("grace", [dt.timedelta(days=8), dt.timedelta(seconds=-1)])
def test_rotation_grace_is_bounded(world, grace):
    api_key, _ = make_key(world.org)
    with pytest.raises(ValidationError, match="between none and 7 days"):
        api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=grace)
    assert api_key.secrets.count() == 1


def test_a_stale_rotation_request_changes_nothing(world):
    api_key, _ = make_key(world.org)
    hint = api_key.hint
    api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0), expected_hint=hint)
    with pytest.raises(ValidationError, match="rotated since this page was loaded"):
        api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0), expected_hint=hint)
    assert api_key.secrets.count() == 2


def test_revoke_is_immediate_and_final(world):
    with time_machine.travel(T0, tick=False):
        api_key, key = make_key(world.org)
        api_key_revoke(api_key=api_key, actor=Actor.system("t"))
        assert not secret_is_valid(api_key_secret_for_presented(key), timezone.now())
        assert api_key_status(ApiKey.objects.get(pk=api_key.pk), timezone.now()) == KeyStatus.REVOKED
        api_key_revoke(api_key=api_key, actor=Actor.system("t"))  # twice: no second event
        assert AuditEvent.objects.filter(action="api_key.revoked").count() == 1
        with pytest.raises(ValidationError, match="revoked"):
            api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0))
        with pytest.raises(ValidationError, match="revoked"):
            api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, tpm_limit=5))


def test_expired_key_secrets_are_invalid_and_status_follows_the_clock(world):
    with time_machine.travel(T0, tick=False):
        api_key, key = make_key(world.org, expires_at=T0 + dt.timedelta(days=10))
    secret = api_key_secret_for_presented(key)
    expectations = [
        (dt.timedelta(days=2), KeyStatus.ACTIVE, True),
        (dt.timedelta(days=3), KeyStatus.EXPIRING, True),
        (dt.timedelta(days=10), KeyStatus.EXPIRED, False),
    ]
    for offset, status, valid in expectations:
        assert api_key_status(api_key, T0 + offset) == status
        assert secret_is_valid(secret, T0 + offset) is valid


def test_every_change_is_announced_to_gateways(world, django_capture_on_commit_callbacks):
    client = redis_client()
    generation = lambda key_id: int(client.hget(changes.GENERATION_KEY, str(key_id)) or 0)  # noqa: E731
    with django_capture_on_commit_callbacks(execute=True):
        api_key, _ = make_key(world.org)
    before = generation(api_key.id)
    assert before >= 1
    for change in (
        lambda: api_key_update(api_key=api_key, actor=Actor.system("t"), **settings_of(api_key, tpm_limit=7)),
        lambda: api_key_rotate(api_key=api_key, actor=Actor.system("t"), grace=dt.timedelta(0)),
        lambda: api_key_revoke(api_key=api_key, actor=Actor.system("t")),
    ):
        with django_capture_on_commit_callbacks(execute=True) as callbacks:
            change()
        assert len(callbacks) == 1
    assert generation(api_key.id) == before + 3


def test_touch_records_last_use_at_most_once_a_minute(world, django_assert_num_queries):
    from keys.services import api_key_touch

    api_key, _ = make_key(world.org)
    with time_machine.travel(T0, tick=False):
        with django_assert_num_queries(1):
            api_key_touch(api_key_id=api_key.id, ip="203.0.113.7")
    with time_machine.travel(T0 + dt.timedelta(seconds=30), tick=False):
        api_key_touch(api_key_id=api_key.id, ip="198.51.100.1")
    api_key.refresh_from_db()
    assert (api_key.last_used_at, api_key.last_used_ip) == (T0, "203.0.113.7")
    with time_machine.travel(T0 + dt.timedelta(minutes=2), tick=False):
        api_key_touch(api_key_id=api_key.id, ip="198.51.100.1")
    api_key.refresh_from_db()
    assert (api_key.last_used_at, api_key.last_used_ip) == (T0 + dt.timedelta(minutes=2), "198.51.100.1")
    assert not AuditEvent.objects.filter(action__contains="touch").exists()
