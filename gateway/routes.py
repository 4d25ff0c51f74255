"""What a cached key may call: its entry (limits, allowlist, expiry, budget state) and its routes
(model name → upstream, replicas, price versions), as gateway/keyload.py builds them from the
database once per key and process."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from gateway.balancer import Replica
from keys.selectors import key_unusable_reason


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
