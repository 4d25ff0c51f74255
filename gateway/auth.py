"""Who is calling and what may they call: credential parsing, the per-process key cache, scope.

A key is looked up by its digest once and kept in an in-process dict with everything the hot
path needs (limits, allowlist, expiry, the models it may call with their upstream routes and
price versions), so a cache hit does no database read. Freshness:

- every admitted request compares the key's generation in Redis (keys.changes bumps it after a
  key's transaction commits) inside the admission Lua call: a revocation or edit is seen by the
  next request on every process, with no window;
- a pub/sub listener drops changed keys from the cache at once, so refusal paths (expired,
  revoked, IP) see edits too, and the whole cache is dropped when that subscription reconnects;
- entries older than GATEWAY_KEY_CACHE_TTL are refreshed in the background (deployment status,
  grants and prices, which do not bump a key's generation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from django.conf import settings

from deployments import changes as deployment_changes
from gateway import errors
from gateway.balancer import Replica
from keys import tokens
from keys.changes import CHANNEL, GENERATION_KEY, local_generations
from keys.selectors import api_key_secret_lookup, key_unusable_reason

log = logging.getLogger("gateway")

MAX_CREDENTIAL_LENGTH = 200


def parse_bearer(raw: bytes | None, header: str) -> str:
    """The key from an Authorization or X-Apig-AppCode header value; GatewayError(401) otherwise.

    Format and checksum are checked here, before any lookup: a malformed credential never
    reaches the database, the cache or Redis.
    """
    if not raw:
        raise errors.missing_key(header)
    if len(raw) > MAX_CREDENTIAL_LENGTH:
        raise errors.invalid_key()
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise errors.invalid_key() from None
    if header == "Authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise errors.invalid_key()
        value = value.strip()
    if not tokens.is_well_formed(value):
        raise errors.invalid_key()
    return value


@dataclass(slots=True)
class Price:
    effective_from: float
    input_per_million: object  # Decimal
    output_per_million: object  # Decimal
    currency: str


@dataclass(slots=True)
class Route:
    """One model name a key may call and how to reach it."""

    name: str
    kind: str  # deployment / router / byok
    chat_url: str
    upstream_model: str
    api_key: str | None = field(repr=False)
    timeout: float
    status: str = "running"
    deployment_id: int | None = None
    deployment_public_id: str | None = None
    generation: int = 0  # the deployment's generation (deployments.changes) when loaded
    prices: tuple[Price, ...] = ()
    credential_error: str = ""
    # The Prometheus label: a provider's open-ended names share one series, so callers cannot
    # mint unbounded label values.
    metric_name: str = ""
    # Prompt token counter (gateway.tokenizer): the deployment's own tokenizer.json, loaded with the
    # key; None counts with the default (tiktoken cl100k_base).
    counter: object = None
    # chat_url without /chat/completions: the other API shapes append their own path to it.
    base_url: str = ""
    # The deployment's kind (chat / embedding / rerank); "" for provider routes, which may serve any.
    serves: str = ""
    responses_passthrough: bool = False
    # An endpoint deployment's enabled replicas (gateway.balancer picks one per request); empty
    # for router/BYOK routes, which go to base_url with api_key.
    replicas: tuple[Replica, ...] = ()
    fallback: str = ""  # model id of the fallback deployment, used when every replica is out
    # A router provider's per-model price versions (its default versions are `prices`), so a
    # wildcard route prices each model it is called with. None for everything else.
    prices_by_model: dict[str, tuple[Price, ...]] | None = None
    capped: bool = False  # some replica has max_concurrent: requests take capacity leases (gateway/capacity.py)
    queue_timeout: float = 10.0
    queue_max: int = 100

    def __post_init__(self) -> None:
        if not self.metric_name:
            self.metric_name = self.name
        if not self.base_url:
            self.base_url = self.chat_url.removesuffix("/chat/completions")

    def with_model(self, name: str, upstream_model: str, *, wildcard: bool = False) -> Route:
        return Route(
            name=name,
            kind=self.kind,
            chat_url=self.chat_url,
            upstream_model=upstream_model,
            api_key=self.api_key,
            timeout=self.timeout,
            credential_error=self.credential_error,
            metric_name=self.name + "/*" if wildcard else name,
            prices=self.prices_by_model.get(upstream_model, self.prices) if self.prices_by_model else self.prices,
        )

    def price_at(self, epoch: float) -> Price | None:
        # Versions are newest first: the first that started at or before the event is in force.
        for price in self.prices:
            if price.effective_from <= epoch:
                return price
        return None


@dataclass(slots=True)
class KeyEntry:
    api_key_id: int
    public_id: str
    workspace_id: int
    workspace_public_id: str
    time_zone: ZoneInfo
    kind: str
    revoked: bool
    expires_at: float | None
    secret_valid_until: float | None
    networks: tuple
    tpm_limit: int | None
    yearly_limit: int | None
    routes: dict[str, Route]
    by_deployment: dict[str, Route]
    router_wildcards: dict[str, Route]
    byok_wildcards: dict[str, Route]
    generation: int
    loaded_at: float
    refreshing: bool = False
    # Epoch until which a used-up budget with "block requests" refuses this workspace's calls
    # (usage.budgets.budget_blocked_until); the month's end, so a new month needs no reload.
    budget_blocked_until: float | None = None
    # A budget that blocks covers this key's workspace: completions are capped as for a token limit.
    budget_blocks: bool = False
    queue_priority: int = 1  # the workspace's turns per round in a full deployment's queue
    # The key's sub-workspace is archived (console.services.workspace_archive bumps its keys'
    # generations, so every process reloads the key and sees it before the next request).
    workspace_archived: bool = False

    def unusable_reason(self, now: float) -> str | None:
        """Why this key may not be used at `now` (None when it may), for the key's own usage
        record; clients get one answer for all reasons."""
        return key_unusable_reason(revoked=self.revoked, expires_at=self.expires_at, secret_valid_until=self.secret_valid_until, now=now)

    def route_for(self, model: str) -> Route | None:
        route = self.routes.get(model)
        if route is not None:
            return route
        # Providers without a model list accept any model under their prefix.
        if model.startswith("byok/"):
            name, _, upstream = model[5:].partition("/")
            base = self.byok_wildcards.get(name)
        else:
            slug, _, upstream = model.partition("/")
            base = self.router_wildcards.get(slug)
        if base is None or not upstream:
            return None
        return base.with_model(model, upstream, wildcard=True)

    def model_names(self) -> list[str]:
        return sorted(self.routes)

    def model_list(self) -> list[tuple[str, str]]:
        """(name, kind) for every model this key may call; provider models are chat models."""
        return [(name, self.routes[name].serves or "chat") for name in sorted(self.routes)]


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _decrypt(token: str) -> tuple[str | None, str]:
    if not token:
        return None, ""
    from lib.crypto import decrypt

    try:
        return decrypt(token), ""
    except ValueError as exc:
        return None, str(exc)


def _chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


def current_generation(api_key_id: int) -> int:
    if settings.REDIS_URL:
        from lib.redis import redis_client

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
        from lib.redis import redis_client

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
    from deployments.models import DeploymentReplica, ReplicaStatus
    from lib.upstream import upstream_host

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
    from keys.models import RouterProviderPrice

    found: dict[int, dict[str, list[Price]]] = {}
    if provider_ids:
        for p in RouterProviderPrice.objects.filter(provider_id__in=provider_ids).order_by("-effective_from"):
            found.setdefault(p.provider_id, {}).setdefault(p.model_name, []).append(
                Price(p.effective_from.timestamp(), p.input_per_million, p.output_per_million, p.currency)
            )
    return {pid: {name: tuple(versions) for name, versions in models.items()} for pid, models in found.items()}


def _router_usable(deployment) -> bool:
    from keys.models import RouterProviderGrant

    provider = deployment.router_provider
    return (
        provider is not None
        and provider.is_active
        and RouterProviderGrant.objects.filter(provider=provider, workspace_id=deployment.workspace_id).exists()
    )


def load_key(digest: str) -> KeyEntry | None:
    """Read one key and its scope from the database (sync; runs on the gateway's DB thread)."""
    from deployments.models import DeploymentPrice
    from deployments.selectors import callable_deployments
    from gateway.tokenizer import counter_for
    from keys.models import ApiKeySecret, ByokCredential

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
    from usage.budgets import budget_guard

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

    from lib.net import parse_networks

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


class KeyCache:
    """digest -> KeyEntry, with unknown digests remembered briefly and concurrent misses coalesced."""

    MISSING_TTL = 2.0
    MAX_MISSING = 10_000

    def __init__(self, run_db, *, ttl: float):
        self.run_db = run_db  # async callable running a sync function on the DB thread
        self.ttl = ttl
        self.entries: dict[str, KeyEntry] = {}
        self.by_id: dict[int, set[str]] = {}
        self.by_deployment: dict[int, set[str]] = {}
        self.missing: dict[str, float] = {}
        self.inflight: dict[str, asyncio.Future] = {}

    def holds(self, digest: str) -> bool:
        """Whether get() can answer without the database: a cached key, or a digest recently unknown."""
        if digest in self.entries:
            return True
        expiry = self.missing.get(digest)
        return expiry is not None and expiry > time.monotonic()

    async def get(self, digest: str) -> KeyEntry | None:
        entry = self.entries.get(digest)
        if entry is not None:
            if not settings.REDIS_URL and local_generations.get(entry.api_key_id, 0) != entry.generation:
                self.drop(entry.api_key_id)
            else:
                if time.monotonic() - entry.loaded_at > self.ttl and not entry.refreshing:
                    entry.refreshing = True
                    asyncio.get_running_loop().create_task(self._refresh(digest))
                return entry
        expiry = self.missing.get(digest)
        if expiry is not None:
            if expiry > time.monotonic():
                return None
            del self.missing[digest]
        return await self.load(digest)

    async def load(self, digest: str) -> KeyEntry | None:
        pending = self.inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        self.inflight[digest] = future
        try:
            entry = await self.run_db(load_key, digest)
            self._store(digest, entry)
            future.set_result(entry)
            return entry
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters, if any, re-raise it
            raise
        finally:
            del self.inflight[digest]

    def _store(self, digest: str, entry: KeyEntry | None) -> None:
        if entry is None:
            if len(self.missing) >= self.MAX_MISSING:
                self.missing.clear()
            self.missing[digest] = time.monotonic() + self.MISSING_TTL
            self.entries.pop(digest, None)
            return
        self.entries[digest] = entry
        self.by_id.setdefault(entry.api_key_id, set()).add(digest)
        for route in entry.by_deployment.values():
            self.by_deployment.setdefault(route.deployment_id, set()).add(digest)

    async def _refresh(self, digest: str) -> None:
        try:
            await self.load(digest)
        except Exception as exc:
            # The database may be away: the cached copy keeps serving (its generation is still
            # checked at every admission), and the next refresh is one TTL later.
            log.warning("background refresh of a cached key failed (%s); keeping the cached copy", type(exc).__name__)
            entry = self.entries.get(digest)
            if entry is not None:
                entry.refreshing = False
                entry.loaded_at = time.monotonic()

    def drop_digest(self, digest: str) -> None:
        entry = self.entries.pop(digest, None)
        if entry is not None:
            self.by_id.get(entry.api_key_id, set()).discard(digest)

    def drop(self, api_key_id: int) -> None:
        for digest in self.by_id.pop(api_key_id, ()):
            self.entries.pop(digest, None)

    def drop_deployment(self, deployment_id: int) -> None:
        for digest in self.by_deployment.pop(deployment_id, ()):
            self.entries.pop(digest, None)

    def clear(self) -> None:
        self.entries.clear()
        self.by_id.clear()
        self.by_deployment.clear()
        self.missing.clear()


async def listen_for_changes(redis, cache: KeyCache, balancer=None) -> None:
    """Drop changed keys and deployments from the cache as keys.changes / deployments.changes
    announce them, and pass replica probe results to the balancer (runs for the process's life)."""
    health_channels = (deployment_changes.HEALTH_CHANNEL, deployment_changes.HEALTH_CHANNEL.encode())
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANNEL, deployment_changes.CHANNEL, deployment_changes.HEALTH_CHANNEL)
            # Anything may have changed while we were not subscribed.
            cache.clear()
            if balancer is not None:
                balancer.forget_probes()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                channel = message.get("channel")
                if channel in health_channels:
                    _health_message(balancer, message.get("data"))
                    continue
                try:
                    changed = int(message["data"])
                except (TypeError, ValueError):
                    cache.clear()
                    continue
                if channel in (CHANNEL, CHANNEL.encode()):
                    cache.drop(changed)
                else:
                    cache.drop_deployment(changed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection lost: retry, the admission check still holds meanwhile
            log.warning("change subscription lost (%s); retrying", type(exc).__name__)
            await asyncio.sleep(0.5)
        finally:
            try:
                await pubsub.aclose()
            except Exception:
                pass


def _health_message(balancer, data) -> None:
    if balancer is None:
        return
    try:
        replica_id, up, uid = (data.decode() if isinstance(data, bytes) else str(data)).split(":")
        balancer.probed(int(replica_id), uid, up == "1")
    except ValueError:
        log.warning("ignored a malformed replica health message")


__all__ = ["GENERATION_KEY", "KeyCache", "KeyEntry", "Route", "listen_for_changes", "load_key", "parse_bearer"]
