"""Loading a key and its scope from the database (sync, on the gateway's DB thread): the entry
gateway/auth.py's cache keeps, with every route, replica (keys decrypted once here) and price
version the hot path needs, and the generations that tell admission when it is stale."""

from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings

from deployments import changes as deployment_changes
from deployments.models import DeploymentPrice, DeploymentReplica, ReplicaStatus
from deployments.selectors import callable_deployments
from gateway.balancer import Replica
from gateway.routes import KeyEntry, Price, Route
from gateway.tokenizer import counter_for
from keys.changes import GENERATION_KEY, local_generations
from keys.models import ApiKeySecret, ByokCredential, RouterProviderGrant, RouterProviderPrice
from keys.selectors import api_key_secret_lookup
from lib.crypto import decrypt
from lib.net import parse_networks
from lib.redis import redis_client
from lib.upstream import upstream_host
from usage.budgets import budget_guard


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _decrypt(token: str) -> tuple[str | None, str]:
    if not token:
        return None, ""
    try:
        return decrypt(token), ""
    except ValueError as exc:
        return None, str(exc)


def _chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


def current_generation(api_key_id: int) -> int:
    if settings.REDIS_URL:
        try:
            value = redis_client().hget(GENERATION_KEY, str(api_key_id))
        except Exception:
            # Unknown: admission needs Redis anyway and fails closed; once Redis is back the
            # generation it reports differs from -1 and the key is reloaded.
            return -1
        return int(value or 0)
    return local_generations.get(api_key_id, 0)


def deployment_generations() -> dict[int, int]:
    """Every deployment's change generation (only changed deployments have one; the rest are 0)."""
    if settings.REDIS_URL:
        try:
            return {int(k): int(v) for k, v in redis_client().hgetall(deployment_changes.GENERATION_KEY).items()}
        except Exception:
            return {}
    return dict(deployment_changes.local_generations)


def _add_credential_routes(
    routes: dict[str, Route],
    wildcards: dict[str, Route],
    *,
    kind: str,
    prefix: str,
    key: str,
    encrypted: str,
    base_url: str,
    model_names: list[str],
    prices: dict[str, tuple[Price, ...]] | None = None,
) -> None:
    """Routes through a router provider or BYOK credential: `prefix/model` for each listed model,
    or a wildcard (any `prefix/...`) when it lists none. `prices` maps a model name to its price
    versions, "" to the default for the others (router providers; BYOK spends the workspace's own key)."""
    api_key, problem = _decrypt(encrypted)
    prices = prices or {}
    base = Route(
        name=prefix,
        kind=kind,
        chat_url=_chat_url(base_url),
        upstream_model="",
        api_key=api_key,
        credential_error=problem,
        timeout=float(settings.GATEWAY_UPSTREAM_TIMEOUT),
        prices=prices.get("", ()),
        prices_by_model={name: versions for name, versions in prices.items() if name} or None,
    )
    if model_names:
        for model in model_names:
            routes[f"{prefix}/{model}"] = base.with_model(f"{prefix}/{model}", model)
    else:
        wildcards[key] = base


_UNDECRYPTABLE = b"\x00"


def _replicas_by_deployment(deployment_ids: list[int]) -> dict[int, tuple[Replica, ...]]:
    """Enabled replicas of these deployments, keys decrypted once here (never per request)."""
    if not deployment_ids:
        return {}
    found: dict[int, list[Replica]] = {}
    for r in DeploymentReplica.objects.filter(deployment_id__in=deployment_ids, enabled=True).order_by("id"):
        api_key, problem = _decrypt(r.api_key_encrypted)
        auth = _UNDECRYPTABLE if problem else (b"Bearer " + api_key.encode() if api_key else None)
        found.setdefault(r.deployment_id, []).append(
            Replica(
                id=r.id,
                uid=str(r.public_id),
                base_url=r.base_url.rstrip("/"),
                auth=auth,
                weight=max(1, r.weight),
                max_concurrent=r.max_concurrent,
                probed_down=r.status == ReplicaStatus.DOWN,
                label=upstream_host(r.base_url),
            )
        )
    return {deployment_id: tuple(replicas) for deployment_id, replicas in found.items()}


def router_provider_prices(provider_ids: list[int]) -> dict[int, dict[str, tuple[Price, ...]]]:
    """provider id -> model name ("" for the default) -> price versions, newest first."""
    found: dict[int, dict[str, list[Price]]] = {}
    if provider_ids:
        for p in RouterProviderPrice.objects.filter(provider_id__in=provider_ids).order_by("-effective_from"):
            found.setdefault(p.provider_id, {}).setdefault(p.model_name, []).append(
                Price(p.effective_from.timestamp(), p.input_per_million, p.output_per_million, p.currency)
            )
    return {pid: {name: tuple(versions) for name, versions in models.items()} for pid, models in found.items()}


def _router_usable(deployment) -> bool:
    provider = deployment.router_provider
    return (
        provider is not None
        and provider.is_active
        and RouterProviderGrant.objects.filter(provider=provider, workspace_id=deployment.workspace_id).exists()
    )


def load_key(digest: str) -> KeyEntry | None:
    """Read one key and its scope from the database (sync; runs on the gateway's DB thread)."""
    api_key_id = ApiKeySecret.objects.filter(digest=digest).values_list("api_key_id", flat=True).first()
    if api_key_id is None:
        return None
    # Read the generations before the rows: a change committed after this point bumps them
    # again, so the next admission sees a newer generation and reloads.
    generation = current_generation(api_key_id)
    deployment_gens = deployment_generations()
    secret = api_key_secret_lookup(digest)
    if secret is None:
        return None
    key, valid_until = secret.api_key, secret.valid_until
    workspace = key.workspace
    budget_blocks, blocked_until = budget_guard(workspace)

    deployments = callable_deployments(workspace).select_related("router_provider", "byok_credential", "fallback")
    if not key.all_models:
        deployments = deployments.filter(id__in=key.deployments.values("id"))
    deployments = list(deployments)
    # A deployment that routes through a router provider needs the provider active and granted to
    # the deployment's workspace, as a key scope does; otherwise it is not callable.
    deployments = [d for d in deployments if d.upstream_kind != "router" or _router_usable(d)]
    prices: dict[int, list[Price]] = {}
    for p in DeploymentPrice.objects.filter(deployment__in=[d.id for d in deployments]).order_by("-effective_from"):
        prices.setdefault(p.deployment_id, []).append(
            Price(p.effective_from.timestamp(), p.input_per_million, p.output_per_million, p.currency)
        )

    replicas = _replicas_by_deployment([d.id for d in deployments if d.upstream_kind == "endpoint"])
    routes: dict[str, Route] = {}
    by_deployment: dict[str, Route] = {}
    for d in deployments:
        if d.upstream_kind == "router" and d.router_provider is not None:
            base_url, token = d.router_provider.base_url, d.router_provider.api_key_encrypted
        elif d.upstream_kind == "byok" and d.byok_credential is not None:
            base_url, token = d.byok_credential.base_url, d.byok_credential.api_key_encrypted
        else:
            base_url, token = d.upstream_base_url, d.upstream_api_key_encrypted
        api_key, problem = _decrypt(token)
        route = Route(
            name=d.model_id,
            kind="deployment",
            chat_url=_chat_url(base_url),
            upstream_model=d.upstream_model or d.model_id,
            api_key=api_key,
            credential_error=problem,
            timeout=float(d.timeout_seconds),
            status=d.status,
            deployment_id=d.id,
            deployment_public_id=str(d.public_id),
            generation=deployment_gens.get(d.id, 0),
            prices=tuple(prices.get(d.id, ())),
            serves=d.kind,
            responses_passthrough=d.responses_passthrough,
            replicas=replicas.get(d.id, ()) if d.upstream_kind == "endpoint" else (),
            fallback=d.fallback.model_id if d.fallback_id else "",
            queue_timeout=float(d.queue_timeout_seconds),
            queue_max=d.queue_max_waiting,
            # Loaded here, on the database thread, once per process and file: never per request.
            counter=counter_for(d.tokenizer_path) if d.tokenizer_path else None,
        )
        route.capped = any(r.max_concurrent for r in route.replicas)
        if route.replicas and not problem:
            # Each replica carries its own key; the deployment's own is its first replica's.
            problem = next((r.label for r in route.replicas if r.auth is _UNDECRYPTABLE), "")
            if problem:
                route.credential_error = f"the upstream key of replica {problem} cannot be decrypted"
        routes[d.model_id] = route
        by_deployment[str(d.public_id)] = route

    router_wildcards: dict[str, Route] = {}
    providers = list(key.router_providers.filter(is_active=True, grants__workspace=workspace))
    provider_prices = router_provider_prices([p.id for p in providers])
    for provider in providers:
        _add_credential_routes(
            routes,
            router_wildcards,
            kind="router",
            prefix=provider.slug,
            key=provider.slug,
            encrypted=provider.api_key_encrypted,
            base_url=provider.base_url,
            model_names=provider.model_names,
            prices=provider_prices.get(provider.id),
        )

    byok_wildcards: dict[str, Route] = {}
    credentials = ByokCredential.objects.filter(workspace=workspace)
    if not key.all_byok:
        credentials = credentials.filter(id__in=key.byok_credentials.values("id"))
    for credential in credentials:
        _add_credential_routes(
            routes,
            byok_wildcards,
            kind="byok",
            prefix=f"byok/{credential.name}",
            key=credential.name,
            encrypted=credential.api_key_encrypted,
            base_url=credential.base_url,
            model_names=credential.model_names,
        )

    return KeyEntry(
        api_key_id=key.id,
        public_id=str(key.public_id),
        workspace_id=workspace.id,
        workspace_public_id=str(workspace.public_id),
        time_zone=ZoneInfo(workspace.time_zone),
        kind=key.kind,
        revoked=key.revoked_at is not None,
        expires_at=_epoch(key.expires_at),
        secret_valid_until=_epoch(valid_until),
        networks=parse_networks(key.ip_allowlist or []),
        tpm_limit=key.tpm_limit,
        yearly_limit=key.yearly_token_limit,
        routes=routes,
        by_deployment=by_deployment,
        router_wildcards=router_wildcards,
        byok_wildcards=byok_wildcards,
        generation=generation,
        loaded_at=time.monotonic(),
        budget_blocked_until=_epoch(blocked_until),
        budget_blocks=budget_blocks,
        queue_priority=workspace.queue_priority,
        workspace_archived=workspace.archived_at is not None,
    )
