"""Deployments: create, start/stop, effective-dated prices, replicas and sub-workspace grants."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.http import Http404
from django.utils import timezone
from ninja import Router, Schema
from ninja.responses import Status, codes_4xx

from adminapi.core import DEFAULT_LIMIT, ErrorOut, IdempotencyKey, idempotent, page_by_id, principal
from console.access import access_workspace
from console.models import Role
from deployments.access import access_deployment, access_deployment_grants, access_replica
from deployments.models import Deployment, DeploymentKind, DeploymentPrice, DeploymentReplica, ModelGrant
from deployments.selectors import callable_deployments, price_in_force, with_prices_in_force
from deployments.services import (
    deployment_change,
    deployment_create,
    deployment_price_set,
    deployment_start,
    deployment_stop,
    model_grant_add,
    model_grant_remove,
    replica_add,
    replica_change,
    replica_remove,
)

router = Router(tags=["deployments"])


class PriceOut(Schema):
    effective_from: datetime
    input_per_million: Decimal
    output_per_million: Decimal
    currency: str


def price_out(p: DeploymentPrice | None) -> dict | None:
    if p is None:
        return None
    return {
        "effective_from": p.effective_from,
        "input_per_million": p.input_per_million,
        "output_per_million": p.output_per_million,
        "currency": p.currency,
    }


class DeploymentOut(Schema):
    id: UUID
    workspace: str
    name: str
    model_id: str
    kind: str
    description: str
    upstream_kind: str
    status: str
    price: PriceOut | None
    created_at: datetime


def deployment_out(d: Deployment, at: datetime | None = None) -> dict:
    # A list prefetches the versions in force at its `at` (with_prices_in_force); a single one asks.
    in_force = price_in_force(d, at or timezone.now())
    return DeploymentOut(
        id=d.public_id,
        workspace=d.workspace.slug,
        name=d.name,
        model_id=d.model_id,
        kind=d.kind,
        description=d.description,
        upstream_kind=d.upstream_kind,
        status=d.status,
        price=price_out(in_force),
        created_at=d.created_at,
    ).model_dump(mode="json")


class DeploymentList(Schema):
    data: list[DeploymentOut]
    next_cursor: str | None


class DeploymentIn(Schema):
    """An OpenAI-compatible endpoint deployment (its first replica is upstream_base_url)."""

    name: str
    model_id: str
    upstream_base_url: str
    kind: DeploymentKind = DeploymentKind.CHAT
    upstream_model: str = ""
    upstream_api_key: str = ""
    description: str = ""
    timeout_seconds: int = 120
    input_per_million: Decimal = Decimal("0")
    output_per_million: Decimal = Decimal("0")
    currency: str = "USD"


@router.get(
    "/workspaces/{ws}/deployments", response={200: DeploymentList, codes_4xx: ErrorOut}, summary="List the deployments a workspace may call"
)
def list_deployments(request, ws: str, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    access = access_workspace(principal(request), ws)
    now = timezone.now()
    deployments = with_prices_in_force(callable_deployments(access.workspace).select_related("workspace"), now)
    rows, next_cursor = page_by_id(deployments, cursor=cursor, limit=limit)
    return {"data": [deployment_out(d, now) for d in rows], "next_cursor": next_cursor}


@router.post(
    "/workspaces/{ws}/deployments", response={201: DeploymentOut, codes_4xx: ErrorOut}, summary="Create a deployment with its first price"
)
def create_deployment(request, ws: str, payload: DeploymentIn, idempotency_key: IdempotencyKey = None):
    access = access_workspace(principal(request), ws, min_role=Role.ADMIN)

    def create():
        deployment = deployment_create(workspace=access.workspace, actor=principal(request).actor, **payload.model_dump())
        return 201, deployment_out(deployment)

    return idempotent(request, create)


@router.get("/workspaces/{ws}/deployments/{deployment_id}", response={200: DeploymentOut, codes_4xx: ErrorOut}, summary="Get a deployment")
def get_deployment(request, ws: str, deployment_id: UUID):
    return deployment_out(access_deployment(principal(request), ws, deployment_id)[1])


class DeploymentPatch(Schema):
    """Fields left out keep their value. Upstreams change through the replica endpoints."""

    name: str | None = None
    model_id: str | None = None
    description: str | None = None
    upstream_model: str | None = None
    timeout_seconds: int | None = None
    queue_timeout_seconds: int | None = None
    queue_max_waiting: int | None = None


@router.patch(
    "/workspaces/{ws}/deployments/{deployment_id}",
    response={200: DeploymentOut, codes_4xx: ErrorOut},
    summary="Rename a deployment or change its model id, description, timeouts and queue",
)
def patch_deployment(request, ws: str, deployment_id: UUID, payload: DeploymentPatch):
    _, d = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)
    given = {name: value for name, value in payload.model_dump().items() if name in payload.model_fields_set and value is not None}
    updated = deployment_change(deployment=d, actor=principal(request).actor, **given)
    return deployment_out(Deployment.objects.select_related("workspace").get(pk=updated.pk))


@router.post(
    "/workspaces/{ws}/deployments/{deployment_id}/stop", response={200: DeploymentOut, codes_4xx: ErrorOut}, summary="Stop a deployment"
)
def stop_deployment(request, ws: str, deployment_id: UUID):
    _, deployment = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)
    return deployment_out(deployment_stop(deployment=deployment, actor=principal(request).actor))


@router.post(
    "/workspaces/{ws}/deployments/{deployment_id}/start", response={200: DeploymentOut, codes_4xx: ErrorOut}, summary="Start a deployment"
)
def start_deployment(request, ws: str, deployment_id: UUID):
    _, deployment = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)
    return deployment_out(deployment_start(deployment=deployment, actor=principal(request).actor))


# ---- prices ------------------------------------------------------------------------------------


class PriceList(Schema):
    data: list[PriceOut]
    next_cursor: str | None


class PriceIn(Schema):
    input_per_million: Decimal
    output_per_million: Decimal = Decimal("0")
    currency: str = "USD"
    effective_from: datetime | None = None


@router.get(
    "/workspaces/{ws}/deployments/{deployment_id}/prices",
    response={200: PriceList, codes_4xx: ErrorOut},
    summary="List price versions, newest first",
)
def list_prices(request, ws: str, deployment_id: UUID, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    _, deployment = access_deployment(principal(request), ws, deployment_id)
    rows, next_cursor = page_by_id(deployment.prices.all(), cursor=cursor, limit=limit, descending=True)
    return {"data": [price_out(p) for p in rows], "next_cursor": next_cursor}


@router.post(
    "/workspaces/{ws}/deployments/{deployment_id}/prices",
    response={201: PriceOut, codes_4xx: ErrorOut},
    summary="Add a price version (from now, or from a future moment)",
)
def create_price(request, ws: str, deployment_id: UUID, payload: PriceIn, idempotency_key: IdempotencyKey = None):
    _, deployment = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)

    def create():
        price = deployment_price_set(deployment=deployment, actor=principal(request).actor, **payload.model_dump())
        return 201, PriceOut(**price_out(price)).model_dump(mode="json")

    return idempotent(request, create)


# ---- replicas ----------------------------------------------------------------------------------


class ReplicaOut(Schema):
    id: UUID
    base_url: str
    weight: int
    max_concurrent: int | None
    enabled: bool
    status: str
    api_key_last4: str


def replica_out(r: DeploymentReplica) -> dict:
    return ReplicaOut(
        id=r.public_id,
        base_url=r.base_url,
        weight=r.weight,
        max_concurrent=r.max_concurrent,
        enabled=r.enabled,
        status=r.status,
        api_key_last4=r.api_key_last4,
    ).model_dump(mode="json")


class ReplicaList(Schema):
    data: list[ReplicaOut]
    next_cursor: str | None


class ReplicaIn(Schema):
    base_url: str
    weight: int = 1
    max_concurrent: int | None = None
    enabled: bool = True
    api_key: str = ""


class ReplicaPatch(Schema):
    base_url: str | None = None
    weight: int | None = None
    max_concurrent: int | None = None
    enabled: bool | None = None
    api_key: str = ""
    clear_api_key: bool = False


@router.get(
    "/workspaces/{ws}/deployments/{deployment_id}/replicas", response={200: ReplicaList, codes_4xx: ErrorOut}, summary="List replicas"
)
def list_replicas(request, ws: str, deployment_id: UUID, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    _, deployment = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)
    rows, next_cursor = page_by_id(deployment.replicas.all(), cursor=cursor, limit=limit)
    return {"data": [replica_out(r) for r in rows], "next_cursor": next_cursor}


@router.post(
    "/workspaces/{ws}/deployments/{deployment_id}/replicas", response={201: ReplicaOut, codes_4xx: ErrorOut}, summary="Add a replica"
)
def create_replica(request, ws: str, deployment_id: UUID, payload: ReplicaIn, idempotency_key: IdempotencyKey = None):
    _, deployment = access_deployment(principal(request), ws, deployment_id, min_role=Role.ADMIN)

    def create():
        return 201, replica_out(replica_add(deployment=deployment, actor=principal(request).actor, **payload.model_dump()))

    return idempotent(request, create)


@router.patch(
    "/workspaces/{ws}/deployments/{deployment_id}/replicas/{replica_id}",
    response={200: ReplicaOut, codes_4xx: ErrorOut},
    summary="Change a replica (weight, cap, enabled, URL, key)",
)
def patch_replica(request, ws: str, deployment_id: UUID, replica_id: UUID, payload: ReplicaPatch):
    _, _, replica = access_replica(principal(request), ws, deployment_id, replica_id)
    # A null max_concurrent means "no cap"; any other null keeps the value, as a left-out field does.
    given = {
        name: value
        for name, value in payload.model_dump().items()
        if name in payload.model_fields_set and (value is not None or name == "max_concurrent")
    }
    return replica_out(replica_change(replica=replica, actor=principal(request).actor, **given))


@router.delete(
    "/workspaces/{ws}/deployments/{deployment_id}/replicas/{replica_id}",
    response={204: None, codes_4xx: ErrorOut},
    summary="Remove a replica",
)
def delete_replica(request, ws: str, deployment_id: UUID, replica_id: UUID):
    _, _, replica = access_replica(principal(request), ws, deployment_id, replica_id)
    replica_remove(replica=replica, actor=principal(request).actor)
    return Status(204, None)


# ---- grants ------------------------------------------------------------------------------------


class GrantOut(Schema):
    workspace: str
    granted_at: datetime


class GrantList(Schema):
    data: list[GrantOut]
    next_cursor: str | None


def _grant_target(request, ws: str, deployment_id: UUID, sub: str):
    access, deployment = access_deployment_grants(principal(request), ws, deployment_id)
    target = access.workspace.children.filter(slug=sub).first()
    if target is None:
        raise Http404("No such sub-workspace.")
    return deployment, target


@router.get(
    "/workspaces/{ws}/deployments/{deployment_id}/grants",
    response={200: GrantList, codes_4xx: ErrorOut},
    summary="List the sub-workspaces granted this deployment",
    tags=["grants"],
)
def list_grants(request, ws: str, deployment_id: UUID, limit: int = DEFAULT_LIMIT, cursor: str | None = None):
    _, deployment = access_deployment_grants(principal(request), ws, deployment_id)
    rows, next_cursor = page_by_id(ModelGrant.objects.filter(deployment=deployment).select_related("workspace"), cursor=cursor, limit=limit)
    return {"data": [{"workspace": g.workspace.slug, "granted_at": g.created_at} for g in rows], "next_cursor": next_cursor}


@router.put(
    "/workspaces/{ws}/deployments/{deployment_id}/grants/{sub}",
    response={200: GrantOut, codes_4xx: ErrorOut},
    summary="Let a sub-workspace call this deployment (granting twice changes nothing)",
    tags=["grants"],
)
def put_grant(request, ws: str, deployment_id: UUID, sub: str):
    deployment, target = _grant_target(request, ws, deployment_id, sub)
    grant = model_grant_add(deployment=deployment, workspace=target, actor=principal(request).actor)
    return {"workspace": target.slug, "granted_at": grant.created_at}


@router.delete(
    "/workspaces/{ws}/deployments/{deployment_id}/grants/{sub}",
    response={204: None, codes_4xx: ErrorOut},
    summary="Withdraw a sub-workspace's grant",
    tags=["grants"],
)
def delete_grant(request, ws: str, deployment_id: UUID, sub: str):
    deployment, target = _grant_target(request, ws, deployment_id, sub)
    if not model_grant_remove(deployment=deployment, workspace=target, actor=principal(request).actor):
        raise Http404("No such grant.")
    return Status(204, None)
