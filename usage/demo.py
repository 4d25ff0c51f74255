"""Demo data for the embedded default (`make run`): an admin, a default workspace with a
sub-workspace and deployments behind the demo model server (`seed_demo`), then a month of
plausible usage so the dashboards, bills and key limits have something to show on first start
(`seed_demo_usage`).

It lives in usage, the app that may import all the others it fills. The events are written
exactly as the gateway writes them (price in force copied, cost stamped) by two clearly named demo
keys, then rolled up by the real rollup code. Nothing here runs outside those two commands, and
the traffic is only ever seeded into a database that has no usage yet.
"""

from __future__ import annotations

import random
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from console.audit import Actor
from console.models import Membership, Role, User, Workspace
from console.services import membership_add, workspace_create
from deployments.models import Deployment, DeploymentPrice, ModelGrant
from deployments.services import deployment_create, deployment_update, model_grant_add
from keys.models import ApiKey
from keys.services import api_key_create
from usage.budgets import budget_spend, local_month
from usage.models import UsageEvent
from usage.pricing import token_cost
from usage.services import budget_set, usage_backfill

# Where the demo traffic "came from": an address of TEST-NET-3, reserved for documentation.
DEMO_CLIENT_IP = "203.0.113.10"
DEMO_ADMIN = "admin"
DEMO_MODEL_ID = "@acme/gatehouse-demo"
DEMO_EMBEDDING_ID = "@acme/gatehouse-demo-embed"


@dataclass(frozen=True)
class DemoWorld:
    admin: User
    workspace: Workspace
    chat: Deployment
    embedding: Deployment
    password: str | None  # set only when this run created the admin or was given a password


def _demo_deployment(
    workspace: Workspace, actor: Actor, *, model_id: str, name: str, kind: str, description: str, prices: tuple[str, str]
) -> Deployment:
    """A deployment behind the demo model server (Procfile `demo:` on DEMO_MODEL_PORT), so the
    gateway can be called right after `make run`. Kept pointing at the current port."""
    base_url = f"http://127.0.0.1:{settings.DEMO_MODEL_PORT}/v1"
    existing = Deployment.objects.filter(workspace=workspace, model_id=model_id).first()
    if existing is None:
        return deployment_create(
            workspace=workspace,
            actor=actor,
            name=name,
            model_id=model_id,
            kind=kind,
            upstream_base_url=base_url,
            upstream_model="gatehouse-demo",
            description=description,
            input_per_million=prices[0],
            output_per_million=prices[1],
        )
    if existing.upstream_base_url != base_url:
        return deployment_update(
            deployment=existing,
            actor=actor,
            name=existing.name,
            model_id=existing.model_id,
            description=existing.description,
            upstream_base_url=base_url,
            upstream_model=existing.upstream_model,
            timeout_seconds=existing.timeout_seconds,
        )
    return existing


@transaction.atomic
def demo_world_seed(*, password: str | None = None) -> DemoWorld:
    """The admin (created with `password`, or a new random one, when missing; given
    `password` when it exists), workspace `acme` with sub-workspace `acme-research`, and the chat
    and embedding demo deployments. Safe to rerun: what exists is kept."""
    actor = Actor.system("manage.py seed_demo")
    admin = User.objects.filter(username=DEMO_ADMIN).first()
    new_password = None
    if admin is None:
        new_password = password or secrets.token_urlsafe(9)
        admin = User.objects.create_superuser(DEMO_ADMIN, "admin@example.com", new_password)
    elif password:
        admin.set_password(password)
        admin.save(update_fields=["password"])
        new_password = password

    default = Workspace.objects.filter(slug="acme").first() or workspace_create(name="Acme", slug="acme", time_zone="UTC", actor=actor)
    if not Membership.objects.filter(workspace=default, user=admin).exists():
        membership_add(workspace=default, user=admin, role=Role.OWNER, actor=actor)
    if not Workspace.objects.filter(slug="acme-research").exists():
        workspace_create(name="Research", slug="acme-research", parent=default, time_zone="Europe/Berlin", actor=actor)

    chat = _demo_deployment(
        default,
        actor,
        model_id=DEMO_MODEL_ID,
        name="Demo model",
        kind="chat",
        description="Gatehouse's built-in demo model: deterministic answers, honest token counts.",
        prices=("2.50", "10.00"),
    )
    embedding = _demo_deployment(
        default,
        actor,
        model_id=DEMO_EMBEDDING_ID,
        name="Embedding demo",
        kind="embedding",
        description="The demo model's deterministic embeddings (16 dimensions), for /v1/embeddings.",
        prices=("0.10", "0"),
    )
    return DemoWorld(admin=admin, workspace=default, chat=chat, embedding=embedding, password=new_password)


@dataclass(frozen=True)
class DemoTraffic:
    events: int
    keys: list[str]


def _demo_key(workspace: Workspace, actor: Actor, name: str, deployment: Deployment, **limits) -> ApiKey:
    existing = ApiKey.objects.filter(workspace=workspace, name=name).first()
    if existing is not None:
        return existing
    # The plaintext is dropped on purpose: these keys only label demo traffic. Rotate one in
    # Secrets to call the gateway with it.
    api_key, _ = api_key_create(
        workspace=workspace,
        actor=actor,
        name=name,
        deployments=[deployment],
        description="Labels the demo traffic seeded by `make run`.",
        **limits,
    )
    return api_key


def _backdate_prices(deployment: Deployment, *, since: datetime, change_at: datetime) -> list[DeploymentPrice]:
    """Price versions covering the demo month: 20 % cheaper until `change_at`, then the current
    price. Written directly, not through deployment_price_set (which refuses a past effective date
    because it would reprice past usage): there is no usage yet, so nothing is repriced."""
    current = deployment.prices.order_by("-effective_from").first()
    if current is None or deployment.prices.filter(effective_from__lte=since).exists():
        return list(deployment.prices.order_by("effective_from"))
    discount = Decimal("0.8")
    DeploymentPrice.objects.create(
        deployment=deployment,
        effective_from=since,
        currency=current.currency,
        input_per_million=current.input_per_million * discount,
        output_per_million=current.output_per_million * discount,
    )
    # The price seed_demo set moments ago becomes the one in force since the change.
    DeploymentPrice.objects.filter(id=current.id).update(effective_from=change_at)
    return list(deployment.prices.order_by("effective_from"))


def _price_at(prices: list[DeploymentPrice], at: datetime) -> DeploymentPrice | None:
    in_force = [p for p in prices if p.effective_from <= at]
    return in_force[-1] if in_force else None


def _events_for_day(
    rng: random.Random,
    *,
    workspace: Workspace,
    key: ApiKey,
    deployment: Deployment,
    prices: list[DeploymentPrice],
    day_start: datetime,
    day_end: datetime,
    volume: int,
) -> list[UsageEvent]:
    events = []
    span = max((day_end - day_start).total_seconds(), 1)
    for _ in range(volume):
        at = day_start + timedelta(seconds=rng.uniform(0, span))
        price = _price_at(prices, at)
        input_price = price.input_per_million if price else Decimal(0)
        output_price = price.output_per_million if price else Decimal(0)
        failed = rng.random() < 0.03
        prompt = 0 if failed else int(rng.lognormvariate(6.2, 0.7))
        completion = 0 if failed else int(rng.lognormvariate(5.0, 0.8))
        streamed = rng.random() < 0.4
        events.append(
            UsageEvent(
                request_id=f"demo-{uuid.uuid4().hex}",
                created_at=at,
                workspace=workspace,
                api_key=key,
                deployment=deployment,
                model=deployment.model_id,
                prompt_tokens=prompt,
                completion_tokens=completion,
                total_tokens=prompt + completion,
                status_code=rng.choice((429, 502)) if failed else 200,
                error_code="rate_limit_exceeded" if failed else "",
                streamed=streamed,
                client_ip=DEMO_CLIENT_IP,
                latency_ms=int(rng.lognormvariate(5.8, 0.5)),
                ttft_ms=int(rng.lognormvariate(4.5, 0.4)) if streamed else None,
                input_price_per_million=input_price,
                output_price_per_million=output_price,
                currency=price.currency if price else "USD",
                cost=token_cost(prompt, completion, price),
            )
        )
    return events


def demo_traffic_seed(*, deployment: Deployment, days: int = 30, now: datetime | None = None, seed: int = 7) -> DemoTraffic:
    """Seed `days` days of demo traffic on `deployment` from its default workspace and first
    sub-workspace. Does nothing (0 events) once any usage exists, so restarts never pile it up."""
    if UsageEvent.objects.exists():
        return DemoTraffic(events=0, keys=[])
    now = now or timezone.now()
    rng = random.Random(seed)
    actor = Actor.system("manage.py seed_demo_usage")
    org = deployment.workspace
    sub = Workspace.objects.filter(parent=org).order_by("name").first()
    with transaction.atomic():
        prices = _backdate_prices(deployment, since=now - timedelta(days=days + 1), change_at=now - timedelta(days=12))
        keys = [(org, _demo_key(org, actor, "web-app.demo", deployment, tpm_limit=60_000, yearly_token_limit=50_000_000), 90)]
        if sub is not None:
            if not ModelGrant.objects.filter(deployment=deployment, workspace=sub).exists():
                model_grant_add(deployment=deployment, workspace=sub, actor=actor)
            keys.append((sub, _demo_key(sub, actor, "notebooks.demo", deployment, tpm_limit=20_000), 35))
        events: list[UsageEvent] = []
        for workspace, key, daily in keys:
            today = now.astimezone(workspace.tz).replace(hour=0, minute=0, second=0, microsecond=0)
            for back in range(days - 1, -1, -1):
                day_start = today - timedelta(days=back)
                weekday_factor = 0.35 if day_start.weekday() >= 5 else 1.0
                day_end = min(day_start + timedelta(days=1), now)
                # The day in progress gets its share so far: a day's volume in the hour since a
                # sub-workspace's local midnight would show as a spike at the end of every chart.
                elapsed = (day_end - day_start) / timedelta(days=1)
                volume = max(1, round(rng.gauss(daily, daily * 0.2) * weekday_factor * elapsed))
                events += _events_for_day(
                    rng,
                    workspace=workspace,
                    key=key,
                    deployment=deployment,
                    prices=prices,
                    day_start=day_start,
                    day_end=day_end,
                    volume=volume,
                )
        UsageEvent.objects.bulk_create(events, batch_size=1000)
        # As the gateway would have recorded it: each key was last used by its latest request.
        for _, key, _ in keys:
            latest = max((e.created_at for e in events if e.api_key_id == key.id), default=None)
            ApiKey.objects.filter(id=key.id).update(last_used_at=latest, last_used_ip=DEMO_CLIENT_IP if latest else None)
    usage_backfill(since=(now - timedelta(days=days + 1)).date(), now=now)
    # Budgets that show both states: the organisation comfortably inside its budget, the
    # sub-workspace past its 80 % warning (neither blocks requests).
    for workspace, _, _ in keys:
        spent = budget_spend(workspace, local_month(now, workspace.tz), "USD")
        share = Decimal("0.45") if workspace.is_default else Decimal("0.9")
        amount = max(Decimal("0.05"), (spent / share).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        budget_set(workspace=workspace, amount=amount, currency="USD", block_requests=False, actor=actor, now=now)
    return DemoTraffic(events=len(events), keys=[key.name for _, key, _ in keys])
