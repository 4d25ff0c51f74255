"""Writes for keys. Every rule about keys lives here, not in forms or views; every change writes
an audit event and calls keys.changes.key_changed so gateways drop their cached copy.

Plaintext secrets exist only as return values of api_key_create / api_key_rotate. They are never
stored, logged, audited or put in an exception.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, models, transaction
from django.db.models import Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from console.audit import Actor, audit_record
from console.models import Workspace
from deployments.models import Deployment
from deployments.selectors import callable_deployments
from keys import tokens
from keys.changes import key_changed
from keys.models import ApiKey, ApiKeyKind, ApiKeySecret, ByokCredential, RouterProvider
from keys.names import validate_key_name
from keys.provider_fields import check_base_url, check_provider_key, parse_model_names
from keys.router_providers import router_providers_granted_to
from keys.selectors import key_unusable_reason
from lib.crypto import encrypt
from lib.net import parse_allowlist

MAX_TPM = 2_147_483_647  # PositiveIntegerField
MAX_YEARLY_TOKENS = 9_223_372_036_854_775_807  # PositiveBigIntegerField
MAX_GRACE = dt.timedelta(days=7)
GRACE_CHOICES: dict[str, dt.timedelta] = {
    "none": dt.timedelta(0),
    "1h": dt.timedelta(hours=1),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
}


class _Errors:
    """Collects ValidationErrors per field so a form can show every problem at once."""

    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, field: str, messages: str | list[str]) -> None:
        self.by_field.setdefault(field, []).extend([messages] if isinstance(messages, str) else messages)

    def check(self, field: str, fn, *args):
        try:
            return fn(*args)
        except ValidationError as exc:
            self.add(field, exc.messages)
            return None

    def raise_if_any(self) -> None:
        if self.by_field:
            raise ValidationError(self.by_field)


# ---- application access keys ------------------------------------------------------------------


def _check_name_free(workspace: Workspace, name: str, errors: _Errors) -> None:
    if ApiKey.objects.filter(workspace=workspace, kind=ApiKeyKind.USER, name__iexact=name).exists():
        errors.add("name", f"A key named “{name}” already exists in this workspace.")


def _check_limit(value: int | None, maximum: int, label: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValidationError(f"{label} must be a whole number from 1 to {maximum:,}.")
    return value


def _check_scope(
    workspace: Workspace,
    errors: _Errors,
    *,
    all_models: bool,
    deployments: Iterable[Deployment],
    router_providers: Iterable[RouterProvider],
    all_byok: bool,
    byok_credentials: Iterable[ByokCredential],
) -> tuple[list[Deployment], list[RouterProvider], list[ByokCredential]]:
    # "All" wins over a list, so a key never carries a stale pick that would confuse a reader.
    deployments = [] if all_models else list(dict.fromkeys(deployments))
    byok_credentials = [] if all_byok else list(dict.fromkeys(byok_credentials))
    router_providers = list(dict.fromkeys(router_providers))
    if deployments:
        allowed = set(callable_deployments(workspace).filter(id__in=[d.id for d in deployments]).values_list("id", flat=True))
        for deployment in deployments:
            if deployment.id not in allowed:
                errors.add("deployments", f"“{deployment.model_id}” is not a deployment this workspace may call.")
    if router_providers:
        # The operator's upstream key: a key may scope only providers granted to its workspace.
        granted = set(router_providers_granted_to(workspace).filter(id__in=[p.id for p in router_providers]).values_list("id", flat=True))
        for provider in router_providers:
            if provider.id not in granted:
                errors.add("router_providers", f"The router provider “{provider.name}” is not available to this workspace.")
    for credential in byok_credentials:
        if credential.workspace_id != workspace.id:
            errors.add("byok_credentials", f"The BYOK credential “{credential.name}” belongs to another workspace.")
    if not (all_models or deployments or router_providers or all_byok or byok_credentials):
        errors.add(NON_FIELD_ERRORS, "Choose what this key may call: deployments (or All models), a router provider, or BYOK credentials.")
    return deployments, router_providers, byok_credentials


def check_expiry(expires_at: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    if expires_at is None:
        return None
    if timezone.is_naive(expires_at):
        raise ValidationError("Give the expiry with a time zone.")
    if expires_at <= now:
        raise ValidationError("The expiry must be in the future.")
    return expires_at


def _check_description(description: str) -> str:
    description = (description or "").strip()
    if len(description) > 500:
        raise ValidationError("Use at most 500 characters.")
    return description


def _describe(
    *,
    description,
    all_models,
    deployments,
    router_providers,
    all_byok,
    byok_credentials,
    tpm_limit,
    yearly_token_limit,
    ip_allowlist,
    expires_at,
) -> dict:
    """A key's settings as an audit event records them (never a secret)."""
    return {
        "description": description,
        "all_models": all_models,
        "deployments": sorted(d.model_id for d in deployments),
        "router_providers": sorted(p.slug for p in router_providers),
        "all_byok": all_byok,
        "byok_credentials": sorted(c.name for c in byok_credentials),
        "tpm_limit": tpm_limit,
        "yearly_token_limit": yearly_token_limit,
        "ip_allowlist": list(ip_allowlist),
        "expires_at": expires_at.isoformat() if expires_at else None,
    }


def _snapshot(api_key: ApiKey) -> dict:
    return _describe(
        description=api_key.description,
        all_models=api_key.all_models,
        deployments=api_key.deployments.all(),
        router_providers=api_key.router_providers.all(),
        all_byok=api_key.all_byok,
        byok_credentials=api_key.byok_credentials.all(),
        tpm_limit=api_key.tpm_limit,
        yearly_token_limit=api_key.yearly_token_limit,
        ip_allowlist=api_key.ip_allowlist,
        expires_at=api_key.expires_at,
    )


TEST_CALL_KEY_NAME = "console-test-call"


# ---- secrets of any key (application keys here, admin keys in adminapi.services) -------------


@sensitive_variables("key")
def secret_mint(secrets, *, prefix: str = tokens.PREFIX, valid_until: dt.datetime | None = None) -> tuple[models.Model, str]:
    """A new secret row on `secrets`, a key's related manager (ApiKey.secrets, AdminKey.secrets):
    only its HMAC digest and display hint are stored. Returns the row and the plaintext, which
    exists only in this return value."""
    key = tokens.generate(prefix)
    secret = secrets.create(
        digest=tokens.digest(key, settings.API_KEY_PEPPER), hint=tokens.display_hint(key, prefix), valid_until=valid_until
    )
    return secret, key


@sensitive_variables("key")
def secret_rotate(
    locked: models.Model,
    *,
    grace: dt.timedelta,
    now: dt.datetime,
    refusals: Mapping[str, str],
    prefix: str = tokens.PREFIX,
    expected_hint: str | None = None,
    update_fields: Sequence[str] = ("hint",),
) -> tuple[str, dt.datetime, str]:
    """The rotation rule for any key with `revoked_at`, `expires_at`, `hint` and `secrets`, called
    inside the caller's transaction with the key row locked (select_for_update).

    A key that key_unusable_reason says may not be used is refused with refusals[reason]; a stale
    expected_hint (the key was rotated since the form was drawn) changes nothing. Every older
    secret stays valid until now + grace at the latest (a rotation never extends an earlier grace),
    and a new secret becomes the key's hint. Returns (old hint, that deadline, the new plaintext).
    """
    if not dt.timedelta(0) <= grace <= MAX_GRACE:
        raise ValidationError("The grace period must be between none and 7 days.")
    unusable = key_unusable_reason(revoked=locked.revoked_at is not None, expires_at=locked.expires_at, secret_valid_until=None, now=now)
    if unusable is not None:
        raise ValidationError(refusals[unusable])
    if expected_hint is not None and expected_hint != locked.hint:
        raise ValidationError("This key was rotated since this page was loaded; nothing was changed.", code="stale")
    deadline = now + grace
    locked.secrets.filter(Q(valid_until__isnull=True) | Q(valid_until__gt=deadline)).update(valid_until=deadline)
    old_hint = locked.hint
    secret, key = secret_mint(locked.secrets, prefix=prefix)
    locked.hint = secret.hint
    locked.save(update_fields=list(update_fields))
    return old_hint, deadline, key


def key_revoke(locked: models.Model, *, now: dt.datetime, update_fields: Sequence[str] = ("revoked_at",)) -> bool:
    """The revocation rule for any key (application or admin), inside the caller's transaction
    with the key row locked: every secret of the key stops working at `now` (key_unusable_reason
    says "key_revoked"); revoking twice changes nothing. Returns whether this call revoked it."""
    if locked.revoked_at is not None:
        return False
    locked.revoked_at = now
    locked.save(update_fields=list(update_fields))
    return True


@sensitive_variables("key")
def key_insert(row: models.Model, *, constraint: str, name_taken: str, prefix: str = tokens.PREFIX) -> tuple[models.Model, str]:
    """Save a new key row and give it its first secret (its hint), inside the caller's transaction.
    Two people creating the same name at the same moment: the unique `constraint` decides, and the
    loser gets `name_taken` as an error on the name. Returns the secret row and its plaintext."""
    try:
        with transaction.atomic():
            row.save()
    except IntegrityError as exc:
        if constraint not in str(exc):
            raise
        raise ValidationError({"name": name_taken}) from None
    secret, key = secret_mint(row.secrets, prefix=prefix)
    row.hint = secret.hint
    row.save(update_fields=["hint"])
    return secret, key


@sensitive_variables("key")
def api_key_create(
    *,
    workspace: Workspace,
    actor: Actor,
    name: str,
    description: str = "",
    all_models: bool = False,
    deployments: Sequence[Deployment] = (),
    router_providers: Sequence[RouterProvider] = (),
    all_byok: bool = False,
    byok_credentials: Sequence[ByokCredential] = (),
    tpm_limit: int | None = None,
    yearly_token_limit: int | None = None,
    ip_allowlist: str | Sequence[str] = (),
    expires_at: dt.datetime | None = None,
    kind: ApiKeyKind = ApiKeyKind.USER,
    now: dt.datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and its first secret. Returns the key and its plaintext, which exists only here."""
    if workspace.archived_at is not None:
        # The gateway would refuse it anyway (403 workspace_archived); say so before it exists.
        raise ValidationError(f"{workspace.name} is archived: unarchive it before creating keys in it.")
    now = now or timezone.now()
    errors = _Errors()
    errors.check("name", validate_key_name, name)
    if "name" not in errors.by_field and kind == ApiKeyKind.USER:
        _check_name_free(workspace, name, errors)
    description = errors.check("description", _check_description, description)
    deployments, router_providers, byok_credentials = _check_scope(
        workspace,
        errors,
        all_models=all_models,
        deployments=deployments,
        router_providers=router_providers,
        all_byok=all_byok,
        byok_credentials=byok_credentials,
    )
    tpm_limit = errors.check("tpm_limit", _check_limit, tpm_limit, MAX_TPM, "TPM")
    yearly_token_limit = errors.check("yearly_token_limit", _check_limit, yearly_token_limit, MAX_YEARLY_TOKENS, "The yearly token limit")
    ip_allowlist = errors.check("ip_allowlist", parse_allowlist, ip_allowlist)
    expires_at = errors.check("expires_at", check_expiry, expires_at, now)
    errors.raise_if_any()

    with transaction.atomic():
        api_key = ApiKey(
            workspace=workspace,
            kind=kind,
            name=name,
            description=description,
            all_models=all_models,
            all_byok=all_byok,
            tpm_limit=tpm_limit,
            yearly_token_limit=yearly_token_limit,
            ip_allowlist=ip_allowlist,
            expires_at=expires_at,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
            created_by_label=actor.label[:150],
        )
        secret, key = key_insert(
            api_key, constraint="api_key_unique_name", name_taken=f"A key named “{name}” already exists in this workspace."
        )
        api_key.deployments.set(deployments)
        api_key.router_providers.set(router_providers)
        api_key.byok_credentials.set(byok_credentials)
        audit_record(
            workspace=workspace,
            actor=actor,
            action="api_key.created",
            target=api_key,
            details={"name": name, "hint": secret.hint, **_snapshot(api_key)},
        )
        key_changed(api_key.id)
    return api_key, key


def _lock(api_key: ApiKey) -> ApiKey:
    return ApiKey.objects.select_for_update().select_related("workspace").get(pk=api_key.pk)


def api_key_update(
    *,
    api_key: ApiKey,
    actor: Actor,
    description: str,
    all_models: bool,
    deployments: Sequence[Deployment],
    router_providers: Sequence[RouterProvider],
    all_byok: bool,
    byok_credentials: Sequence[ByokCredential],
    tpm_limit: int | None,
    yearly_token_limit: int | None,
    ip_allowlist: str | Sequence[str],
    expires_at: dt.datetime | None,
    now: dt.datetime | None = None,
) -> ApiKey:
    """Replace a key's settings. The name is immutable; a revoked key cannot be changed."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(api_key)
        if locked.revoked_at is not None:
            raise ValidationError("This key is revoked and can no longer be changed.")
        workspace = locked.workspace
        errors = _Errors()
        description = errors.check("description", _check_description, description)
        deployments, router_providers, byok_credentials = _check_scope(
            workspace,
            errors,
            all_models=all_models,
            deployments=deployments,
            router_providers=router_providers,
            all_byok=all_byok,
            byok_credentials=byok_credentials,
        )
        tpm_limit = errors.check("tpm_limit", _check_limit, tpm_limit, MAX_TPM, "TPM")
        yearly_token_limit = errors.check(
            "yearly_token_limit", _check_limit, yearly_token_limit, MAX_YEARLY_TOKENS, "The yearly token limit"
        )
        ip_allowlist = errors.check("ip_allowlist", parse_allowlist, ip_allowlist)
        if expires_at != locked.expires_at:  # an unchanged past expiry may stay while other fields are edited
            expires_at = errors.check("expires_at", check_expiry, expires_at, now)
        errors.raise_if_any()

        before = _snapshot(locked)
        after = _describe(
            description=description,
            all_models=all_models,
            deployments=deployments,
            router_providers=router_providers,
            all_byok=all_byok,
            byok_credentials=byok_credentials,
            tpm_limit=tpm_limit,
            yearly_token_limit=yearly_token_limit,
            ip_allowlist=ip_allowlist,
            expires_at=expires_at,
        )
        changes = {field: [before[field], after[field]] for field in before if before[field] != after[field]}
        if not changes:
            return locked
        locked.description, locked.all_models, locked.all_byok = description, all_models, all_byok
        locked.tpm_limit, locked.yearly_token_limit = tpm_limit, yearly_token_limit
        locked.ip_allowlist, locked.expires_at = ip_allowlist, expires_at
        locked.save(
            update_fields=[
                "description",
                "all_models",
                "all_byok",
                "tpm_limit",
                "yearly_token_limit",
                "ip_allowlist",
                "expires_at",
                "updated_at",
            ]
        )
        locked.deployments.set(deployments)
        locked.router_providers.set(router_providers)
        locked.byok_credentials.set(byok_credentials)
        audit_record(workspace=workspace, actor=actor, action="api_key.updated", target=locked, details=changes)
        key_changed(locked.id)
    return locked


# Why key_unusable_reason refuses to rotate an application key, as the console and API say it.
_NOT_ROTATABLE = {
    "key_revoked": "This key is revoked; create a new key instead.",
    "key_expired": "This key has expired; set a later expiry first, then rotate it.",
}


@sensitive_variables("key")
def api_key_rotate(
    *, api_key: ApiKey, actor: Actor, grace: dt.timedelta, now: dt.datetime | None = None, expected_hint: str | None = None
) -> str:
    """Give the key a new secret; its identity, limits and usage history stay. Every older secret
    stays valid until now + grace at the latest (a rotation never extends an earlier grace).

    expected_hint makes a resubmitted form harmless: if the key was rotated since the form was
    drawn, nothing happens.
    """
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(api_key)
        old_hint, deadline, key = secret_rotate(
            locked, grace=grace, now=now, refusals=_NOT_ROTATABLE, expected_hint=expected_hint, update_fields=("hint", "updated_at")
        )
        audit_record(
            workspace=locked.workspace,
            actor=actor,
            action="api_key.rotated",
            target=locked,
            details={
                "old_hint": old_hint,
                "new_hint": locked.hint,
                "grace_seconds": int(grace.total_seconds()),
                "old_valid_until": deadline.isoformat(),
            },
        )
        key_changed(locked.id)
    api_key.hint = locked.hint
    return key


def api_key_revoke(*, api_key: ApiKey, actor: Actor, now: dt.datetime | None = None) -> ApiKey:
    """Revoke immediately (every secret of the key stops working). Revoking twice changes nothing."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(api_key)
        if not key_revoke(locked, now=now, update_fields=("revoked_at", "updated_at")):
            return locked
        audit_record(workspace=locked.workspace, actor=actor, action="api_key.revoked", target=locked, details={"hint": locked.hint})
        key_changed(locked.id)
    api_key.revoked_at = locked.revoked_at
    return locked


def api_key_touch(*, api_key_id: int, ip: str | None, now: dt.datetime | None = None) -> None:
    """Record last use for the Secrets list. At most one write per key per minute, so the gateway's
    hot path does not turn every request into an UPDATE; not audited (it is usage, not a change)."""
    now = now or timezone.now()
    ApiKey.objects.filter(id=api_key_id).filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - dt.timedelta(minutes=1))).update(
        last_used_at=now, last_used_ip=ip
    )


# ---- The hidden key of console test calls -------------------------------------------------------


def api_key_for_test_calls(*, workspace: Workspace) -> ApiKey:
    """The workspace's hidden key for console test calls (all models), created on first use. It
    holds no lasting secret: each call mints its own (api_key_secret_mint) and discards it."""
    api_key = ApiKey.objects.filter(workspace=workspace, kind=ApiKeyKind.TEST_CALL, revoked_at__isnull=True).first()
    if api_key is None:
        api_key = ApiKey.objects.create(
            workspace=workspace,
            kind=ApiKeyKind.TEST_CALL,
            name=TEST_CALL_KEY_NAME,
            all_models=True,
            hint="hidden",
            created_by_label="console test calls",
        )
    return api_key


@sensitive_variables("key")
def api_key_secret_mint(*, api_key: ApiKey, valid_for: dt.timedelta, now: dt.datetime | None = None) -> tuple[ApiKeySecret, str]:
    """A secret for one test call of the hidden key, valid for `valid_for` at most. Not audited:
    the test call itself is (deployment.test_call), and the secret is discarded after it."""
    if api_key.kind != ApiKeyKind.TEST_CALL:
        raise ValueError("only the hidden test-call key gets secrets minted this way")
    return secret_mint(api_key.secrets, valid_until=(now or timezone.now()) + valid_for)


def api_key_secret_discard(*, secret: ApiKeySecret) -> None:
    """Delete a minted secret now, and have gateways drop their cached copy rather than wait for it to expire."""
    ApiKeySecret.objects.filter(id=secret.id).delete()
    key_changed(secret.api_key_id)


# ---- BYOK credentials --------------------------------------------------------------------------


def _check_provider(value: str) -> str:
    value = (value or "").strip()
    if not 1 <= len(value) <= 80:
        raise ValidationError("Name the provider (at most 80 characters), e.g. OpenAI.")
    return value


def _check_byok_name(value: str) -> str:
    if not value or len(value) > 40:
        raise ValidationError("Use 1–40 characters.")
    validate_slug(value)
    return value


def _keys_using_byok(credential: ByokCredential) -> list[int]:
    return list(
        ApiKey.objects.filter(Q(byok_credentials=credential) | Q(workspace_id=credential.workspace_id, all_byok=True))
        .values_list("id", flat=True)
        .distinct()
    )


@sensitive_variables("api_key")
def byok_credential_create(
    *, workspace: Workspace, actor: Actor, name: str, provider: str, base_url: str, api_key: str, model_names: str | Iterable[str]
) -> ByokCredential:
    """Store a provider key encrypted at rest; only its last four characters are ever shown again."""
    errors = _Errors()
    if errors.check("name", _check_byok_name, name) is not None and workspace.byok_credentials.filter(name=name).exists():
        errors.add("name", f"A BYOK credential named “{name}” already exists in this workspace.")
    provider = errors.check("provider", _check_provider, provider)
    base_url = errors.check("base_url", check_base_url, base_url)
    api_key = errors.check("api_key", check_provider_key, api_key)
    model_names = errors.check("model_names", parse_model_names, model_names)
    errors.raise_if_any()
    with transaction.atomic():
        credential = ByokCredential.objects.create(
            workspace=workspace,
            name=name,
            provider=provider,
            base_url=base_url,
            api_key_encrypted=encrypt(api_key),
            api_key_last4=api_key[-4:],
            model_names=model_names,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
        )
        audit_record(
            workspace=workspace,
            actor=actor,
            action="byok_credential.created",
            target=credential,
            details={"provider": provider, "base_url": base_url, "models": model_names, "last4": credential.api_key_last4},
        )
        for api_key_id in _keys_using_byok(credential):  # keys with "All BYOK" now reach this credential too
            key_changed(api_key_id)
    return credential


@sensitive_variables("api_key")
def byok_credential_update(
    *, credential: ByokCredential, actor: Actor, provider: str, base_url: str, model_names: str | Iterable[str], api_key: str = ""
) -> ByokCredential:
    """Change a credential; an empty api_key keeps the stored one (it is never shown back)."""
    errors = _Errors()
    provider = errors.check("provider", _check_provider, provider)
    base_url = errors.check("base_url", check_base_url, base_url)
    model_names = errors.check("model_names", parse_model_names, model_names)
    if api_key:
        api_key = errors.check("api_key", check_provider_key, api_key)
    errors.raise_if_any()
    changes = {}
    for field, value in (("provider", provider), ("base_url", base_url), ("model_names", model_names)):
        if getattr(credential, field) != value:
            changes[field] = [getattr(credential, field), value]
            setattr(credential, field, value)
    if api_key:
        changes["last4"] = [credential.api_key_last4, api_key[-4:]]
        credential.api_key_encrypted, credential.api_key_last4 = encrypt(api_key), api_key[-4:]
    if not changes:
        return credential
    with transaction.atomic():
        credential.save(update_fields=["provider", "base_url", "model_names", "api_key_encrypted", "api_key_last4"])
        audit_record(workspace=credential.workspace, actor=actor, action="byok_credential.updated", target=credential, details=changes)
        for api_key_id in _keys_using_byok(credential):
            key_changed(api_key_id)
    return credential


def byok_credential_delete(*, credential: ByokCredential, actor: Actor) -> None:
    users = list(Deployment.objects.filter(byok_credential=credential).values_list("name", flat=True)[:3])
    if users:
        raise ValidationError(f"The deployment “{users[0]}” uses this credential; point it elsewhere first.")
    with transaction.atomic():
        affected = _keys_using_byok(credential)
        audit_record(
            workspace=credential.workspace,
            actor=actor,
            action="byok_credential.deleted",
            target=credential,
            details={"provider": credential.provider, "last4": credential.api_key_last4},
        )
        credential.delete()
        for api_key_id in affected:
            key_changed(api_key_id)
