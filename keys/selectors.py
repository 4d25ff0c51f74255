"""Reads of keys: the gateway's lookup path and the console's lists. No writes here.

Contracts the gateway relies on:
- `api_key_secret_for_presented(key)`: format + checksum first (zero queries for a malformed key),
  then one query by digest; returns the ApiKeySecret with api_key and api_key.workspace loaded.
- `api_key_secret_lookup(digest)`: the same lookup by a digest the caller computed (for caches).
- `secret_is_valid(secret, now)`: not revoked, not expired, and the secret not rotated away.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db import models
from django.db.models import Count, Q, QuerySet, Sum

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
    if api_key.revoked_at is not None:
        return KeyStatus.REVOKED
    if api_key.expires_at is not None:
        if api_key.expires_at <= now:
            return KeyStatus.EXPIRED
        if api_key.expires_at <= now + EXPIRY_WARNING:
            return KeyStatus.EXPIRING
    return KeyStatus.ACTIVE


def secret_is_valid(secret: ApiKeySecret, now: dt.datetime) -> bool:
    """Whether a presented secret may be used at `now`: the key is neither revoked nor expired,
    and the secret is current or still inside its rotation grace period."""
    if secret.valid_until is not None and secret.valid_until <= now:
        return False
    return api_key_status(secret.api_key, now) in (KeyStatus.ACTIVE, KeyStatus.EXPIRING)


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


def year_bounds(workspace: Workspace, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The current calendar year in the workspace's time zone, as aware datetimes [start, end)."""
    year = now.astimezone(workspace.tz).year
    return dt.datetime(year, 1, 1, tzinfo=workspace.tz), dt.datetime(year + 1, 1, 1, tzinfo=workspace.tz)


def tokens_used_this_year(workspace: Workspace, api_key_ids: list[int], now: dt.datetime) -> dict[int, int]:
    """Total tokens per key in the workspace's current calendar year (one query; rollups replace this later)."""
    if not api_key_ids:
        return {}
    from usage.models import UsageEvent

    start, end = year_bounds(workspace, now)
    rows = (
        UsageEvent.objects.filter(workspace=workspace, api_key_id__in=api_key_ids, created_at__gte=start, created_at__lt=end)
        .values("api_key_id")
        .annotate(total=Sum("total_tokens"))
    )
    return {row["api_key_id"]: row["total"] or 0 for row in rows}


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


def key_rows(workspace: Workspace, api_keys: list[ApiKey], now: dt.datetime) -> list[KeyRow]:
    used = tokens_used_this_year(workspace, [k.id for k in api_keys], now)
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


@dataclass
class Refusals:
    """A key's latest refused (or failed) request and its errors of the last day, by reason."""

    last: object | None  # usage.models.UsageEvent
    recent: list[dict]  # {"status_code", "error_code", "text", "n"}, most first
    since: dt.datetime

    @property
    def last_text(self) -> str:
        from usage.error_reasons import error_reason_text

        return error_reason_text(self.last.error_code, self.last.status_code) if self.last else ""


def api_key_refusals(api_key: ApiKey, now: dt.datetime, *, window: dt.timedelta = dt.timedelta(hours=24)) -> Refusals:
    """Two index probes on the key's error events (a partial index holds only them)."""
    from usage.error_reasons import error_reason_text
    from usage.models import UsageEvent

    errors = UsageEvent.objects.filter(api_key=api_key, status_code__gte=400)
    last = errors.order_by("-created_at").only("created_at", "status_code", "error_code", "client_ip", "model").first()
    since = now - window
    recent = [
        {**r, "text": error_reason_text(r["error_code"], r["status_code"])}
        for r in errors.filter(created_at__gte=since)
        .values("status_code", "error_code")
        .annotate(n=Count("id"))
        .order_by("-n", "status_code")
    ]
    return Refusals(last=last, recent=recent, since=since)
