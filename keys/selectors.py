"""Reads of keys: the gateway's lookup path and the console's lists. No writes here.

The gateway relies on two of them: `api_key_secret_lookup(digest)` (one query, with api_key and
api_key.workspace loaded) to build its cached entry, and `key_unusable_reason`, the one rule for
whether a key may be used now, which it applies to that entry on every request.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Count, Q, QuerySet

from console.models import Workspace
from keys import tokens
from keys.models import ApiKey, ApiKeyKind, ApiKeySecret

EXPIRY_WARNING = dt.timedelta(days=7)


class KeyStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    EXPIRING = "expiring", "Expiring soon"
    EXPIRED = "expired", "Expired"
    REVOKED = "revoked", "Revoked"


def api_key_status(api_key: ApiKey, now: dt.datetime) -> KeyStatus:
    """What the console shows: whether the key is usable (key_unusable_reason), and if so whether it expires soon.
    (status_filter is the same rule as a query.)"""
    unusable = key_unusable_reason(revoked=api_key.revoked_at is not None, expires_at=api_key.expires_at, secret_valid_until=None, now=now)
    if unusable == "key_revoked":
        return KeyStatus.REVOKED
    if unusable == "key_expired":
        return KeyStatus.EXPIRED
    if api_key.expires_at is not None and api_key.expires_at <= now + EXPIRY_WARNING:
        return KeyStatus.EXPIRING
    return KeyStatus.ACTIVE


def key_unusable_reason(
    *, revoked: bool, expires_at: dt.datetime | float | None, secret_valid_until: dt.datetime | float | None, now: dt.datetime | float
) -> str | None:
    """Why a key's secret may not be used at `now` ("key_revoked", "key_expired" or
    "secret_rotated": past its rotation grace period), or None when it may. Datetimes in the
    console; epoch seconds in the gateway's cached entries, so its hot path builds no datetime."""
    if revoked:
        return "key_revoked"
    if expires_at is not None and expires_at <= now:
        return "key_expired"
    if secret_valid_until is not None and secret_valid_until <= now:
        return "secret_rotated"
    return None


def secret_is_valid(secret: ApiKeySecret, now: dt.datetime) -> bool:
    """Whether a presented secret may be used at `now`."""
    key = secret.api_key
    return (
        key_unusable_reason(revoked=key.revoked_at is not None, expires_at=key.expires_at, secret_valid_until=secret.valid_until, now=now)
        is None
    )


def api_key_secret_lookup(digest: str) -> ApiKeySecret | None:
    return ApiKeySecret.objects.select_related("api_key", "api_key__workspace").filter(digest=digest).first()


def api_key_secret_for_presented(key: str) -> ApiKeySecret | None:
    """The secret row for a key as a client presented it, or None. A malformed or mistyped key
    (wrong prefix, length or checksum) is rejected here without touching the database."""
    if not tokens.is_well_formed(key):
        return None
    return api_key_secret_lookup(tokens.digest(key, settings.API_KEY_PEPPER))


def status_filter(status: KeyStatus, now: dt.datetime) -> Q:
    live = Q(revoked_at__isnull=True)
    soon = now + EXPIRY_WARNING
    return {
        KeyStatus.REVOKED: Q(revoked_at__isnull=False),
        KeyStatus.EXPIRED: live & Q(expires_at__lte=now),
        KeyStatus.EXPIRING: live & Q(expires_at__gt=now, expires_at__lte=soon),
        KeyStatus.ACTIVE: live & (Q(expires_at__isnull=True) | Q(expires_at__gt=soon)),
    }[status]


def visible_api_keys(workspace: Workspace) -> QuerySet[ApiKey]:
    """The keys people see and manage: application keys only (test-call credentials are hidden)."""
    return ApiKey.objects.filter(workspace=workspace, kind=ApiKeyKind.USER)


def api_key_list(workspace: Workspace, *, now: dt.datetime, status: KeyStatus | None = None, search: str = "") -> QuerySet[ApiKey]:
    keys = visible_api_keys(workspace).select_related("created_by").prefetch_related("deployments", "router_providers", "byok_credentials")
    if status:
        keys = keys.filter(status_filter(KeyStatus(status), now))
    if search:
        # icontains escapes % and _ itself, so a search cannot become a wildcard pattern.
        keys = keys.filter(name__icontains=search)
    return keys.order_by("-created_at", "-id")


def status_counts(workspace: Workspace, now: dt.datetime) -> dict[str, int]:
    return visible_api_keys(workspace).aggregate(
        all=Count("id"), **{status.value: Count("id", filter=status_filter(status, now)) for status in KeyStatus}
    )


def expiring_api_keys(workspace: Workspace, now: dt.datetime, limit: int = 5) -> list[ApiKey]:
    """Live keys that expire within EXPIRY_WARNING, soonest first (for warnings on the overview)."""
    return list(visible_api_keys(workspace).filter(status_filter(KeyStatus.EXPIRING, now)).order_by("expires_at")[:limit])


def _names(items: list[str], shown: int = 2) -> str:
    return ", ".join(items[:shown]) + (f" +{len(items) - shown}" if len(items) > shown else "")


def scope_summary(api_key: ApiKey) -> list[str]:
    """Short phrases for what a key may call (uses prefetched relations)."""
    parts = []
    if api_key.all_models:
        parts.append("All models" if api_key.workspace.is_default else "All granted models")
    elif deployments := [d.name for d in api_key.deployments.all()]:
        parts.append(_names(deployments))
    if providers := [p.name for p in api_key.router_providers.all()]:
        parts.append("Router: " + _names(providers))
    if api_key.all_byok:
        parts.append("All BYOK")
    elif credentials := [c.name for c in api_key.byok_credentials.all()]:
        parts.append("BYOK: " + _names(credentials))
    return parts or ["Nothing (edit to choose)"]


@dataclass(frozen=True)
class KeyRow:
    api_key: ApiKey
    status: KeyStatus
    scope: list[str]
    used_this_year: int

    @property
    def meter_high(self) -> int | None:
        """Where the used-this-year meter turns amber: 80% of the yearly limit."""
        limit = self.api_key.yearly_token_limit
        return limit * 4 // 5 if limit else None


def key_rows(workspace: Workspace, api_keys: list[ApiKey], now: dt.datetime, *, used_this_year: dict[int, int]) -> list[KeyRow]:
    """The list's rows; `used_this_year` is usage.selectors.tokens_used_in_year of these keys."""
    used = used_this_year
    for api_key in api_keys:
        api_key.workspace = workspace  # saves a query per row in scope_summary
    return [KeyRow(api_key=k, status=api_key_status(k, now), scope=scope_summary(k), used_this_year=used.get(k.id, 0)) for k in api_keys]


OVERVIEW_EXPIRY_WINDOW = dt.timedelta(days=14)


def keys_expiring_within(
    workspace: Workspace, now: dt.datetime, window: dt.timedelta = OVERVIEW_EXPIRY_WINDOW, limit: int = 10
) -> list[ApiKey]:
    """Live application keys of this workspace that expire within `window`, soonest first."""
    return list(
        visible_api_keys(workspace)
        .filter(revoked_at__isnull=True, expires_at__gt=now, expires_at__lte=now + window)
        .order_by("expires_at", "pk")[:limit]
    )
