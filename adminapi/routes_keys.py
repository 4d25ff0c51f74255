"""Application API keys ("Secrets") and budgets."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.core.exceptions import ValidationError
from django.http import Http404
from django.utils import timezone
from ninja import Router, Schema
from ninja.responses import Status, codes_4xx

from adminapi.core import DEFAULT_LIMIT, ErrorOut, IdempotencyKey, idempotent, page_by_id, principal
from console.access import access_workspace
from console.models import Role
from deployments.selectors import callable_deployments
from keys import services as key_services
from keys.access import access_api_key
from keys.models import ApiKey
from keys.selectors import api_key_status, visible_api_keys
from usage.budgets import budget_currencies
from usage.forms import BudgetForm
from usage.models import Budget
from usage.services import budget_remove, budget_set

router = Router(tags=["api keys"])


class ApiKeyOut(Schema):
    id: UUID
    workspace: str
    name: str
    description: str
    hint: str
    status: str
    all_models: bool
    deployments: list[UUID]
    tpm_limit: int | None
    yearly_token_limit: int | None
    ip_allowlist: list[str]
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def api_key_out(k: ApiKey) -> dict:
    return ApiKeyOut(
        id=k.public_id,
        workspace=k.workspace.slug,
        name=k.name,
        description=k.description,
        hint=k.hint,
        status=api_key_status(k, timezone.now()),
        all_models=k.all_models,
        deployments=[d.public_id for d in k.deployments.all()],
        tpm_limit=k.tpm_limit,
        yearly_token_limit=k.yearly_token_limit,
        ip_allowlist=list(k.ip_allowlist),
        expires_at=k.expires_at,
        created_at=k.created_at,
        revoked_at=k.revoked_at,
        last_used_at=k.last_used_at,
    ).model_dump(mode="json")


class ApiKeyList(Schema):
    data: list[ApiKeyOut]
    next_cursor: str | None


class ApiKeyIn(Schema):
    name: str
    description: str = ""
    all_models: bool = False
    deployments: list[UUID] = []
    tpm_limit: int | None = None
    yearly_token_limit: int | None = None
    ip_allowlist: list[str] = []
    expires_at: datetime | None = None


class ApiKeyPatch(Schema):
    """Fields left out keep their value; the name cannot change."""

    description: str | None = None
    all_models: bool | None = None
    deployments: list[UUID] | None = None
    tpm_limit: int | None = None
    yearly_token_limit: int | None = None
    ip_allowlist: list[str] | None = None
    expires_at: datetime | None = None


class ApiKeySecretOut(Schema):
    """The key and, only in this response, its secret (a replayed create carries null)."""

    api_key: ApiKeyOut
    secret: str | None


class RotateIn(Schema):
    grace_seconds: int = 3600


class RotateOut(Schema):
    api_key: ApiKeyOut
    secret: str
    previous_valid_until: datetime


def _deployments(workspace, ids: list[UUID]) -> list:
    found = {d.public_id: d for d in callable_deployments(workspace).filter(public_id__in=ids)}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise ValidationError({"deployments": [f"{m} is not a deployment this workspace may call." for m in missing]})
    return list(found.values())


@router.get("/workspaces/{ws}/api-keys", response={200: ApiKeyList, codes_4xx: ErrorOut}, summary="List API keys")
def list_api_keys(request, ws: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    keys = visible_api_keys(access.workspace).select_related("workspace").prefetch_related("deployments")
    rows, next_cursor = page_by_id(keys, cursor=cursor, limit=limit)
    return {"data": [api_key_out(k) for k in rows], "next_cursor": next_cursor}


@router.post(
    "/workspaces/{ws}/api-keys",
    response={201: ApiKeySecretOut, codes_4xx: ErrorOut},
    summary="Create an API key; the secret is in this response only",
)
def create_api_key(request, ws: str, payload: ApiKeyIn, idempotency_key: IdempotencyKey = None):
    access = access_workspace(principal(request), ws, min_role=Role.DEVELOPER)

    def create():
        data = payload.model_dump()
        data["deployments"] = _deployments(access.workspace, payload.deployments)
        api_key, secret = key_services.api_key_create(workspace=access.workspace, actor=principal(request).actor, **data)
        return 201, {"api_key": api_key_out(api_key), "secret": secret}

    return idempotent(request, create, secret_fields=("secret",))


@router.get("/workspaces/{ws}/api-keys/{key_id}", response={200: ApiKeyOut, codes_4xx: ErrorOut}, summary="Get an API key")
def get_api_key(request, ws: str, key_id: UUID):
    return api_key_out(access_api_key(principal(request), ws, key_id)[1])


@router.patch(
    "/workspaces/{ws}/api-keys/{key_id}", response={200: ApiKeyOut, codes_4xx: ErrorOut}, summary="Change an API key's scope and limits"
)
def patch_api_key(request, ws: str, key_id: UUID, payload: ApiKeyPatch):
    access, api_key = access_api_key(principal(request), ws, key_id, min_role=Role.DEVELOPER)
    given = payload.model_fields_set

    def pick(name, current):
        return getattr(payload, name) if name in given else current

    deployments = _deployments(access.workspace, payload.deployments) if "deployments" in given else list(api_key.deployments.all())
    updated = key_services.api_key_update(
        api_key=api_key,
        actor=principal(request).actor,
        description=pick("description", api_key.description) or "",
        all_models=bool(pick("all_models", api_key.all_models)),
        deployments=deployments,
        router_providers=list(api_key.router_providers.all()),
        all_byok=api_key.all_byok,
        byok_credentials=list(api_key.byok_credentials.all()),
        tpm_limit=pick("tpm_limit", api_key.tpm_limit),
        yearly_token_limit=pick("yearly_token_limit", api_key.yearly_token_limit),
        ip_allowlist=pick("ip_allowlist", api_key.ip_allowlist) or [],
        expires_at=pick("expires_at", api_key.expires_at),
    )
    return api_key_out(updated)


@router.post(
    "/workspaces/{ws}/api-keys/{key_id}/rotate",
    response={200: RotateOut, codes_4xx: ErrorOut},
    summary="Give the key a new secret; the old one works for grace_seconds more",
)
def rotate_api_key(request, ws: str, key_id: UUID, payload: RotateIn):
    _, api_key = access_api_key(principal(request), ws, key_id, min_role=Role.DEVELOPER)
    now = timezone.now()
    grace = dt.timedelta(seconds=payload.grace_seconds) if payload.grace_seconds >= 0 else dt.timedelta(-1)
    secret = key_services.api_key_rotate(api_key=api_key, actor=principal(request).actor, grace=grace, now=now)
    api_key.refresh_from_db()
    return {"api_key": api_key_out(api_key), "secret": secret, "previous_valid_until": now + grace}


@router.post("/workspaces/{ws}/api-keys/{key_id}/revoke", response={200: ApiKeyOut, codes_4xx: ErrorOut}, summary="Revoke an API key now")
def revoke_api_key(request, ws: str, key_id: UUID):
    _, api_key = access_api_key(principal(request), ws, key_id, min_role=Role.DEVELOPER)
    key_services.api_key_revoke(api_key=api_key, actor=principal(request).actor)
    api_key.refresh_from_db()
    return api_key_out(api_key)


# ---- budgets -----------------------------------------------------------------------------------

budgets = Router(tags=["budgets"])


class BudgetOut(Schema):
    amount: Decimal
    currency: str
    block_requests: bool
    spent: Decimal
    spent_month: dt.date | None
    checked_at: datetime | None


class BudgetIn(Schema):
    amount: Decimal
    currency: str = "USD"
    block_requests: bool = False


def budget_out(b: Budget) -> dict:
    return BudgetOut(
        amount=b.amount,
        currency=b.currency,
        block_requests=b.block_requests,
        spent=b.spent,
        spent_month=b.spent_month,
        checked_at=b.checked_at,
    ).model_dump(mode="json")


@budgets.get("/workspaces/{ws}/budget", response={200: BudgetOut, codes_4xx: ErrorOut}, summary="The monthly budget (404 when none is set)")
def get_budget(request, ws: str):
    access = access_workspace(principal(request), ws)
    budget = Budget.objects.filter(workspace=access.workspace).first()
    if budget is None:
        raise Http404("No budget.")
    return budget_out(budget)


@budgets.put("/workspaces/{ws}/budget", response={200: BudgetOut, codes_4xx: ErrorOut}, summary="Set the monthly budget")
def put_budget(request, ws: str, payload: BudgetIn):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    # The console's form decides what a valid budget is (amount range, cents, the currencies in use).
    current = Budget.objects.filter(workspace=access.workspace).first()
    form = BudgetForm(
        data={"amount": str(payload.amount), "currency": payload.currency, "block_requests": "on" if payload.block_requests else ""},
        currencies=budget_currencies(access.workspace, current),
    )
    if not form.is_valid():
        raise ValidationError({name: list(errors) for name, errors in form.errors.items()})
    budget = budget_set(workspace=access.workspace, actor=principal(request).actor, **form.cleaned_data)
    return budget_out(budget)


@budgets.delete("/workspaces/{ws}/budget", response={204: None, codes_4xx: ErrorOut}, summary="Remove the monthly budget")
def delete_budget(request, ws: str):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)
    if not budget_remove(workspace=access.workspace, actor=principal(request).actor):
        raise Http404("No budget.")
    return Status(204, None)
