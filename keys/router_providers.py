"""Router providers: installation-wide upstreams that installation admins (staff) manage, grant
to workspaces and price. Writes and the reads the console needs.

A provider spends the operator's upstream key, so:
- only a workspace holding a grant sees it: its keys may scope it and its deployments may route
  through it (keys.services._check_scope, deployments.services._clean_upstream, gateway.keyload);
- its calls are priced with effective-dated versions (per model, or the provider's default for
  models without their own), so usage events carry a cost and budgets count them.

Grants and revocations are audited in the workspace they concern; changes to the provider itself
go to Django admin's change log (LogEntry), the installation-level record admins already read.
Every change announces the keys and deployments that use the provider, so gateways reload them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from console.audit import Actor, audit_record
from console.models import Workspace
from deployments.changes import deployment_changed
from deployments.models import Deployment, UpstreamKind
from deployments.prices import clean_currency, clean_effective_from, clean_price, price_version_add
from keys.changes import keys_changed
from keys.models import ApiKey, RouterProvider, RouterProviderGrant, RouterProviderPrice
from keys.provider_fields import check_base_url, check_provider_key, parse_model_names
from lib.crypto import encrypt

RESERVED_SLUGS = frozenset({"byok"})


def is_installation_admin(user) -> bool:
    """Who manages router providers: the installation's staff and superusers (not workspace roles)."""
    return bool(getattr(user, "is_active", False) and (user.is_staff or user.is_superuser))


# ---- reads ------------------------------------------------------------------------------------


def router_providers_granted_to(workspace: Workspace) -> QuerySet[RouterProvider]:
    """Active providers this workspace's keys and deployments may use."""
    return RouterProvider.objects.filter(is_active=True, grants__workspace=workspace).order_by("name")


def router_provider_list() -> QuerySet[RouterProvider]:
    return RouterProvider.objects.annotate(grant_count=Count("grants", distinct=True)).order_by("name", "pk")


@dataclass(frozen=True)
class PriceRow:
    model_name: str  # "" for the provider's default
    current: RouterProviderPrice | None
    upcoming: list[RouterProviderPrice]
    history: list[RouterProviderPrice]


def router_provider_price_rows(provider: RouterProvider, now: datetime | None = None) -> list[PriceRow]:
    """Per model name (default first): the version in force, scheduled ones and past ones."""
    now = now or timezone.now()
    by_model: dict[str, list[RouterProviderPrice]] = {}
    for price in provider.prices.order_by("model_name", "-effective_from"):
        by_model.setdefault(price.model_name, []).append(price)
    rows = []
    for model_name in sorted(by_model, key=lambda name: (name != "", name.lower())):
        versions = by_model[model_name]
        upcoming = [p for p in versions if p.effective_from > now][::-1]
        past = [p for p in versions if p.effective_from <= now]
        rows.append(PriceRow(model_name, past[0] if past else None, upcoming, past[1:]))
    return rows


def router_provider_price_in_force(provider: RouterProvider, model_name: str, at: datetime) -> RouterProviderPrice | None:
    """The version a call to `model_name` at `at` is costed with: the model's own, else the default."""
    versions = RouterProviderPrice.objects.filter(provider=provider, effective_from__lte=at).order_by("-effective_from")
    if model_name and RouterProviderPrice.objects.filter(provider=provider, model_name=model_name).exists():
        return versions.filter(model_name=model_name).first()
    return versions.filter(model_name="").first()


# ---- writes -----------------------------------------------------------------------------------


def _users(provider: RouterProvider) -> tuple[list[int], list[int]]:
    """Keys and deployments that reach this provider (to be reloaded by gateways)."""
    key_ids = list(ApiKey.objects.filter(router_providers=provider).values_list("id", flat=True))
    deployment_ids = list(
        Deployment.objects.filter(upstream_kind=UpstreamKind.ROUTER, router_provider=provider).values_list("id", flat=True)
    )
    return key_ids, deployment_ids


def _announce(provider: RouterProvider) -> None:
    key_ids, deployment_ids = _users(provider)
    keys_changed(key_ids)
    for deployment_id in deployment_ids:
        deployment_changed(deployment_id)


def _log(actor: Actor, provider: RouterProvider, flag: int, message: dict) -> None:
    if getattr(actor.user, "pk", None) is None:
        return  # LogEntry needs a user; system changes (migrations, commands) print what they did
    LogEntry.objects.create(
        user_id=actor.user.pk,
        content_type=ContentType.objects.get_for_model(RouterProvider),
        object_id=str(provider.pk),
        object_repr=str(provider)[:200],
        action_flag=flag,
        change_message=json.dumps([message]),
    )


def _clean_slug(slug: str, *, exclude_pk: int | None) -> str:
    slug = (slug or "").strip().lower()
    if not 1 <= len(slug) <= 40:
        raise ValidationError({"slug": "Use 1–40 characters: clients call its models as <slug>/<model>."})
    try:
        validate_slug(slug)
    except ValidationError:
        raise ValidationError({"slug": "Use lowercase letters, digits, hyphens and underscores only."}) from None
    if slug in RESERVED_SLUGS:
        raise ValidationError({"slug": f"“{slug}” is reserved for BYOK credentials."})
    clash = RouterProvider.objects.filter(slug=slug)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"slug": f"A router provider with the slug “{slug}” already exists."})
    return slug


def _clean_fields(*, name: str, base_url: str, model_names) -> dict:
    errors: dict[str, list[str]] = {}
    name = (name or "").strip()
    if not 1 <= len(name) <= 80:
        errors["name"] = ["Name the provider (at most 80 characters), e.g. OpenRouter."]
    try:
        base_url = check_base_url(base_url)
    except ValidationError as exc:
        errors["base_url"] = exc.messages
    try:
        model_names = parse_model_names(model_names, required=False)
    except ValidationError as exc:
        errors["model_names"] = exc.messages
    if errors:
        raise ValidationError(errors)
    return {"name": name, "base_url": base_url, "model_names": model_names}


@sensitive_variables("api_key")
def _clean_api_key(api_key: str) -> str:
    try:
        return check_provider_key(api_key)
    except ValidationError as exc:
        raise ValidationError({"api_key": exc.messages}) from None


@sensitive_variables("api_key")
def router_provider_create(
    *,
    actor: Actor,
    name: str,
    slug: str,
    base_url: str,
    api_key: str,
    model_names="",
    is_active: bool = True,
    input_per_million: Decimal | str = Decimal("0"),
    output_per_million: Decimal | str = Decimal("0"),
    currency: str = "USD",
) -> RouterProvider:
    """A new provider with its default price (which may be 0, said explicitly). Granted to nobody yet."""
    fields = _clean_fields(name=name, base_url=base_url, model_names=model_names)
    slug = _clean_slug(slug, exclude_pk=None)
    api_key = _clean_api_key(api_key)
    with transaction.atomic():
        try:
            with transaction.atomic():
                provider = RouterProvider.objects.create(slug=slug, api_key_encrypted=encrypt(api_key), is_active=is_active, **fields)
        except IntegrityError:
            raise ValidationError({"slug": f"A router provider with the slug “{slug}” already exists."}) from None
        router_provider_price_set(
            provider=provider, actor=actor, input_per_million=input_per_million, output_per_million=output_per_million, currency=currency
        )
        _log(actor, provider, 1, {"added": {"base_url": fields["base_url"], "models": fields["model_names"]}})
    return provider


@sensitive_variables("api_key")
def router_provider_update(
    *, provider: RouterProvider, actor: Actor, name: str, base_url: str, model_names, is_active: bool, api_key: str = ""
) -> RouterProvider:
    """Change a provider; an empty api_key keeps the stored one (it is never shown back). The slug
    is fixed: clients' code names it."""
    fields = _clean_fields(name=name, base_url=base_url, model_names=model_names)
    if api_key:
        api_key = _clean_api_key(api_key)
    with transaction.atomic():
        locked = RouterProvider.objects.select_for_update().get(pk=provider.pk)
        changed = [field for field, value in (*fields.items(), ("is_active", is_active)) if getattr(locked, field) != value]
        for field in changed:
            setattr(locked, field, fields.get(field, is_active))
        if api_key:
            locked.api_key_encrypted = encrypt(api_key)
            changed.append("api_key_encrypted")
        if not changed:
            return locked
        locked.save(update_fields=changed)
        _log(actor, locked, 2, {"changed": {"fields": ["api key" if f == "api_key_encrypted" else f for f in changed]}})
        _announce(locked)
    return locked


def router_provider_grant(*, provider: RouterProvider, workspace: Workspace, actor: Actor) -> RouterProviderGrant:
    """Let a workspace use the provider. Granting twice changes nothing."""
    with transaction.atomic():
        grant, created = RouterProviderGrant.objects.get_or_create(
            provider=provider, workspace=workspace, defaults={"granted_by": actor.user if getattr(actor.user, "pk", None) else None}
        )
        if created:
            audit_record(
                workspace=workspace, actor=actor, action="router_provider.granted", target=provider, details={"slug": provider.slug}
            )
            _announce(provider)
    return grant


def router_provider_revoke(*, provider: RouterProvider, workspace: Workspace, actor: Actor) -> None:
    """Take the provider away from a workspace: its keys lose it from their scopes at once, and its
    deployments that route through it stop answering (404) until it is granted again."""
    with transaction.atomic():
        deleted, _ = RouterProviderGrant.objects.filter(provider=provider, workspace=workspace).delete()
        if not deleted:
            return
        keys = list(ApiKey.objects.filter(workspace=workspace, router_providers=provider))
        ApiKey.router_providers.through.objects.filter(apikey__in=keys, routerprovider=provider).delete()
        audit_record(
            workspace=workspace,
            actor=actor,
            action="router_provider.revoked",
            target=provider,
            details={"slug": provider.slug, "keys_unscoped": sorted(k.name for k in keys)},
        )
        keys_changed([k.id for k in keys])
        for deployment_id in Deployment.objects.filter(
            workspace=workspace, upstream_kind=UpstreamKind.ROUTER, router_provider=provider
        ).values_list("id", flat=True):
            deployment_changed(deployment_id)


def router_provider_price_set(
    *,
    provider: RouterProvider,
    actor: Actor,
    input_per_million: Decimal | str,
    output_per_million: Decimal | str,
    currency: str = "USD",
    model_name: str = "",
    effective_from: datetime | None = None,
) -> RouterProviderPrice:
    """Add a price version for one model ("" = the provider's default), by the rules of
    deployments.prices; one currency per provider."""
    effective_from = clean_effective_from(effective_from, timezone.now())
    model_name = (model_name or "").strip()
    if len(model_name) > 200 or any(ch.isspace() or not ch.isprintable() for ch in model_name):
        raise ValidationError({"model_name": "Enter one model name without spaces (at most 200 characters), or leave it empty."})
    input_price = clean_price(input_per_million, "input_per_million")
    output_price = clean_price(output_per_million, "output_per_million")
    currency = clean_currency(currency)
    with transaction.atomic():
        RouterProvider.objects.select_for_update().filter(pk=provider.pk).first()  # orders concurrent price changes
        change = price_version_add(
            RouterProviderPrice.objects.filter(provider=provider, model_name=model_name),
            priced_as=RouterProviderPrice.objects.filter(provider=provider),
            what="provider",
            actor=actor,
            effective_from=effective_from,
            input_price=input_price,
            output_price=output_price,
            currency=currency,
            provider=provider,
            model_name=model_name,
        )
        if not change.added:
            return change.price
        _log(
            actor,
            provider,
            2,
            {
                "changed": {
                    "fields": [
                        f"price {model_name or 'default'}: {input_price}/{output_price} {currency} from {effective_from:%Y-%m-%d %H:%M}"
                    ]
                }
            },
        )
        _announce(provider)
    return change.price


def grants_by_provider(provider: RouterProvider) -> QuerySet[RouterProviderGrant]:
    return provider.grants.select_related("workspace", "workspace__parent", "granted_by").order_by("workspace__name", "pk")


def workspaces_for_grant(provider: RouterProvider, search: str = "") -> QuerySet[Workspace]:
    """Workspaces not yet granted the provider (default ones and sub-workspaces), for the grant form."""
    found = Workspace.objects.exclude(router_provider_grants__provider=provider).select_related("parent")
    if search:
        found = found.filter(Q(name__icontains=search) | Q(slug__icontains=search) | Q(parent__name__icontains=search))
    return found.order_by("parent__name", "name")
