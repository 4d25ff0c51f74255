"""Writes to deployments, their price versions and model grants. Every change is audited."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from console.audit import Actor, audit_record
from console.models import Workspace
from deployments.changes import deployment_changed
from deployments.health import deployment_probe_on_commit, replica_probe_on_commit
from deployments.models import (
    Deployment,
    DeploymentKind,
    DeploymentPrice,
    DeploymentReplica,
    DeploymentStatus,
    ModelGrant,
    ReplicaStatus,
    UpstreamKind,
)
from deployments.prices import clean_currency, clean_effective_from, clean_price, price_version_add
from deployments.selectors import price_in_force
from keys.changes import keys_changed
from keys.models import ApiKey, ByokCredential, RouterProvider, RouterProviderGrant
from lib.crypto import encrypt
from lib.tokenizer_file import clean_tokenizer_path
from lib.upstream import Resolver, system_resolver, upstream_host, validate_upstream_url

MODEL_ID_MAX = 200


def _clean_model_id(model_id: str, *, workspace: Workspace, exclude_pk: int | None = None) -> str:
    """A model id is unique within its organisation (the default workspace and its sub-workspaces),
    not installation-wide: clients only ever reach their own organisation's deployments, and a
    global namespace let one tenant probe ("already used") or squat another's ids. An id that
    starts with `@` names its organisation and must name this one.

    Call inside the transaction that saves the deployment: it locks the organisation's row, so
    two concurrent saves of the same id in one organisation cannot both pass the check.
    """
    if model_id != model_id.strip():
        raise ValidationError({"model_id": "The model id cannot start or end with spaces."})
    if not model_id:
        raise ValidationError({"model_id": "Enter the model id clients will send."})
    if len(model_id) > MODEL_ID_MAX:
        raise ValidationError({"model_id": f"At most {MODEL_ID_MAX} characters."})
    if any(not ch.isprintable() for ch in model_id):
        raise ValidationError({"model_id": "The model id cannot contain control or invisible characters."})
    root = Workspace.objects.select_for_update().get(pk=workspace.root_id)
    if model_id.startswith("@") and not model_id.startswith(f"@{root.slug}/"):
        raise ValidationError(
            {"model_id": f"Model ids starting with @ name their organisation: use @{root.slug}/…, or leave the @ prefix out."}
        )
    # The gateway resolves `byok/<name>/<model>` and `<router-slug>/<model>` before deployments.
    first = model_id.split("/", 1)[0]
    if "/" in model_id and (first == "byok" or RouterProvider.objects.filter(slug=first).exists()):
        raise ValidationError({"model_id": f"Model ids starting with “{first}/” are reserved for a router provider or BYOK."})
    clash = Deployment.objects.filter(root.organisation_q()).filter(model_id__iexact=model_id)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"model_id": f"The model id “{model_id}” is already used by another deployment of {root.name}."})
    return model_id


def _clean_kind(kind: str) -> str:
    if kind not in DeploymentKind.values:
        raise ValidationError({"kind": f"Choose one of: {', '.join(DeploymentKind.values)}."})
    return kind


def _clean_upstream(
    *,
    workspace: Workspace,
    kind: str,
    base_url: str,
    router_provider: RouterProvider | None,
    byok_credential: ByokCredential | None,
    resolve: Resolver,
) -> dict:
    if kind == UpstreamKind.ENDPOINT:
        try:
            url = validate_upstream_url(base_url, resolve=resolve)
        except ValidationError as exc:
            raise ValidationError({"upstream_base_url": exc.messages}) from None
        return {"upstream_base_url": url, "router_provider": None, "byok_credential": None}
    if kind == UpstreamKind.ROUTER:
        # The operator's upstream key: only a provider granted to this workspace (keys.router_providers).
        if (
            router_provider is None
            or not router_provider.is_active
            or not RouterProviderGrant.objects.filter(provider=router_provider, workspace=workspace).exists()
        ):
            raise ValidationError({"router_provider": "Choose a router provider granted to this workspace."})
        return {"upstream_base_url": "", "router_provider": router_provider, "byok_credential": None}
    if kind == UpstreamKind.BYOK:
        if byok_credential is None or byok_credential.workspace_id not in (workspace.id, workspace.root_id):
            raise ValidationError({"byok_credential": "Choose a BYOK credential of this workspace or its organisation."})
        return {"upstream_base_url": "", "router_provider": None, "byok_credential": byok_credential}
    raise ValidationError({"upstream_kind": "Choose an upstream kind."})


QUEUE_TIMEOUT_MAX = 600
QUEUE_WAITING_MAX = 100_000


def _clean_queue(value, field: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({field: "Enter a whole number."}) from None
    if not low <= number <= high:
        raise ValidationError({field: f"Enter a number from {low} to {high}."})
    return number


def _clean_fallback(*, workspace: Workspace, fallback: Deployment | None, own_pk: int | None) -> Deployment | None:
    """A fallback is another deployment of the same organisation (calls go to it only for keys that may call it too)."""
    if fallback is None:
        return None
    if fallback.pk == own_pk:
        raise ValidationError({"fallback": "A deployment cannot be its own fallback."})
    root_id = workspace.root_id
    if fallback.workspace.root_id != root_id:
        raise ValidationError({"fallback": "Choose a deployment of this organisation."})
    return fallback


def _clean_tokenizer_path(value: str) -> str:
    """Checked where it is set (the console and the gateways share the file system layout, as one
    image): a path that does not load as a tokenizer.json is refused here, not at request time."""
    try:
        return clean_tokenizer_path(value)
    except ValueError as exc:
        raise ValidationError({"tokenizer_path": str(exc)}) from None


def _probe_soon(deployment: Deployment) -> None:
    """Check a new or restarted upstream once committed, instead of at the next minute's round."""
    if deployment.upstream_kind == UpstreamKind.ENDPOINT and deployment.upstream_base_url:
        deployment_probe_on_commit(deployment_id=deployment.id)


def _describe_upstream(deployment: Deployment) -> str:
    if deployment.upstream_kind == UpstreamKind.ROUTER:
        return f"router:{deployment.router_provider.slug}" if deployment.router_provider else "router"
    if deployment.upstream_kind == UpstreamKind.BYOK:
        return f"byok:{deployment.byok_credential.name}" if deployment.byok_credential else "byok"
    return upstream_host(deployment.upstream_base_url)


@transaction.atomic
def deployment_create(
    *,
    workspace: Workspace,
    actor: Actor,
    name: str,
    model_id: str,
    kind: str = DeploymentKind.CHAT,
    responses_passthrough: bool = False,
    upstream_kind: str = UpstreamKind.ENDPOINT,
    upstream_base_url: str = "",
    upstream_model: str = "",
    upstream_api_key: str = "",
    router_provider: RouterProvider | None = None,
    byok_credential: ByokCredential | None = None,
    description: str = "",
    timeout_seconds: int = 120,
    tokenizer_path: str = "",
    input_per_million: Decimal | str = Decimal("0"),
    output_per_million: Decimal | str = Decimal("0"),
    currency: str = "USD",
    upstream_weight: int = 1,
    upstream_max_concurrent: int | None = None,
    fallback: Deployment | None = None,
    queue_timeout_seconds: int = 10,
    queue_max_waiting: int = 100,
    resolve: Resolver = system_resolver,
) -> Deployment:
    """Create a deployment; an endpoint deployment gets its first replica from upstream_base_url
    (more with replica_add)."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Enter a name."})
    model_id = _clean_model_id(model_id, workspace=workspace)
    kind = _clean_kind(kind)
    if kind == DeploymentKind.EMBEDDING and clean_price(output_per_million, "output_per_million"):
        raise ValidationError({"output_per_million": "Embedding deployments have an input price only; leave the output price at 0."})
    upstream = _clean_upstream(
        workspace=workspace,
        kind=upstream_kind,
        base_url=upstream_base_url,
        router_provider=router_provider,
        byok_credential=byok_credential,
        resolve=resolve,
    )
    upstream_api_key = upstream_api_key.strip()
    deployment = Deployment(
        workspace=workspace,
        name=name,
        model_id=model_id,
        description=description.strip(),
        kind=kind,
        responses_passthrough=bool(responses_passthrough) and kind == DeploymentKind.CHAT,
        upstream_kind=upstream_kind,
        upstream_model=upstream_model.strip(),
        timeout_seconds=timeout_seconds,
        tokenizer_path=_clean_tokenizer_path(tokenizer_path),
        status=DeploymentStatus.RUNNING,
        created_by=actor.user if getattr(actor.user, "pk", None) else None,
        fallback=_clean_fallback(workspace=workspace, fallback=fallback, own_pk=None),
        queue_timeout_seconds=_clean_queue(queue_timeout_seconds, "queue_timeout_seconds", 0, QUEUE_TIMEOUT_MAX),
        queue_max_waiting=_clean_queue(queue_max_waiting, "queue_max_waiting", 1, QUEUE_WAITING_MAX),
        **upstream,
    )
    if upstream_api_key and upstream_kind == UpstreamKind.ENDPOINT:
        deployment.upstream_api_key_encrypted = encrypt(upstream_api_key)
        deployment.upstream_api_key_last4 = upstream_api_key[-4:]
    # The base URL was validated above with rules that also allow single-label hosts (docker
    # service names), which Django's URLField would refuse.
    deployment.full_clean(exclude=["upstream_base_url", "workspace", "created_by", "router_provider", "byok_credential"])
    deployment.save()
    if upstream_kind == UpstreamKind.ENDPOINT:
        DeploymentReplica.objects.create(
            deployment=deployment,
            base_url=deployment.upstream_base_url,
            weight=_clean_weight(upstream_weight),
            max_concurrent=_clean_max_concurrent(upstream_max_concurrent),
            api_key_encrypted=deployment.upstream_api_key_encrypted,
            api_key_last4=deployment.upstream_api_key_last4,
        )
    audit_record(
        workspace=workspace,
        actor=actor,
        action="deployment.created",
        target=deployment,
        details={
            "model_id": model_id,
            "kind": kind,
            "upstream": _describe_upstream(deployment),
            "upstream_api_key": "set" if upstream_api_key else "none",
        },
    )
    deployment_price_set(
        deployment=deployment, actor=actor, input_per_million=input_per_million, output_per_million=output_per_million, currency=currency
    )
    deployment_changed(deployment.id)
    _probe_soon(deployment)
    return deployment


UPDATABLE = (
    "name",
    "model_id",
    "description",
    "kind",
    "responses_passthrough",
    "upstream_kind",
    "upstream_base_url",
    "upstream_model",
    "router_provider",
    "byok_credential",
    "timeout_seconds",
    "fallback",
    "queue_timeout_seconds",
    "queue_max_waiting",
    "tokenizer_path",
)


@transaction.atomic
def deployment_update(
    *,
    deployment: Deployment,
    actor: Actor,
    name: str,
    model_id: str,
    description: str = "",
    kind: str | None = None,
    responses_passthrough: bool | None = None,
    upstream_kind: str = UpstreamKind.ENDPOINT,
    upstream_base_url: str = "",
    upstream_model: str = "",
    router_provider: RouterProvider | None = None,
    byok_credential: ByokCredential | None = None,
    timeout_seconds: int = 120,
    tokenizer_path: str | None = None,
    upstream_api_key: str = "",
    clear_upstream_api_key: bool = False,
    fallback: Deployment | None = None,
    queue_timeout_seconds: int = 10,
    queue_max_waiting: int = 100,
    resolve: Resolver = system_resolver,
) -> Deployment:
    """Change settings. An empty upstream_api_key keeps the stored key; clear_upstream_api_key removes it.
    kind / responses_passthrough / tokenizer_path None keep what is set."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Enter a name."})
    kind = deployment.kind if kind is None else _clean_kind(kind)
    if kind == DeploymentKind.EMBEDDING and kind != deployment.kind:
        current = price_in_force(deployment, timezone.now())
        if current is not None and current.output_per_million:
            raise ValidationError({"kind": "Embedding deployments have an input price only: set the output price to 0 first."})
    passthrough = deployment.responses_passthrough if responses_passthrough is None else bool(responses_passthrough)
    new = {
        "kind": kind,
        "responses_passthrough": passthrough and kind == DeploymentKind.CHAT,
        "name": name,
        "model_id": _clean_model_id(model_id, workspace=deployment.workspace, exclude_pk=deployment.pk),
        "description": description.strip(),
        "upstream_kind": upstream_kind,
        "upstream_model": upstream_model.strip(),
        "timeout_seconds": timeout_seconds,
        "fallback": _clean_fallback(workspace=deployment.workspace, fallback=fallback, own_pk=deployment.pk),
        "queue_timeout_seconds": _clean_queue(queue_timeout_seconds, "queue_timeout_seconds", 0, QUEUE_TIMEOUT_MAX),
        "queue_max_waiting": _clean_queue(queue_max_waiting, "queue_max_waiting", 1, QUEUE_WAITING_MAX),
        "tokenizer_path": deployment.tokenizer_path if tokenizer_path is None else _clean_tokenizer_path(tokenizer_path),
        **_clean_upstream(
            workspace=deployment.workspace,
            kind=upstream_kind,
            base_url=upstream_base_url,
            router_provider=router_provider,
            byok_credential=byok_credential,
            resolve=resolve,
        ),
    }
    changes: dict[str, list] = {}
    for field in UPDATABLE:
        old = getattr(deployment, field)
        if old != new[field]:
            changes[field] = [str(old) if old is not None else None, str(new[field]) if new[field] is not None else None]
            setattr(deployment, field, new[field])
    if "upstream_base_url" in changes:  # the audit log shows hosts, like the details page
        changes["upstream_base_url"] = [upstream_host(v or "") for v in changes["upstream_base_url"]]
    update_fields = [f for f in UPDATABLE if f in changes]
    upstream_api_key = upstream_api_key.strip()
    if upstream_kind != UpstreamKind.ENDPOINT or clear_upstream_api_key:
        if deployment.upstream_api_key_encrypted:
            deployment.upstream_api_key_encrypted, deployment.upstream_api_key_last4 = "", ""
            changes["upstream_api_key"] = "removed"
            update_fields += ["upstream_api_key_encrypted", "upstream_api_key_last4"]
    elif upstream_api_key:
        deployment.upstream_api_key_encrypted = encrypt(upstream_api_key)
        deployment.upstream_api_key_last4 = upstream_api_key[-4:]
        changes["upstream_api_key"] = "replaced"
        update_fields += ["upstream_api_key_encrypted", "upstream_api_key_last4"]
    if not changes:
        return deployment
    deployment.full_clean(exclude=["upstream_base_url", "workspace", "created_by", "router_provider", "byok_credential", "model_id"])
    deployment.save(update_fields=[*update_fields, "updated_at"])
    _sync_first_replica(deployment)
    audit_record(workspace=deployment.workspace, actor=actor, action="deployment.updated", target=deployment, details=changes)
    deployment_changed(deployment.id)
    if changes.keys() & {"upstream_kind", "upstream_base_url", "upstream_api_key"}:
        _probe_soon(deployment)
    return deployment


def deployment_settings(deployment: Deployment) -> dict:
    """A deployment's settings as deployment_update takes them (what an edit form starts from)."""
    return {field: getattr(deployment, field) for field in UPDATABLE}


# deployment_update keeps these when given None, so a partial change leaves them unchecked.
_KEPT_WHEN_NONE = ("kind", "responses_passthrough", "tokenizer_path")


def deployment_change(*, deployment: Deployment, actor: Actor, **changes) -> Deployment:
    """deployment_update with only the settings in `changes`: every other one keeps its value
    (also upstream_api_key / clear_upstream_api_key, as deployment_update's defaults do)."""
    unknown = changes.keys() - {*UPDATABLE, "upstream_api_key", "clear_upstream_api_key"}
    if unknown:
        raise TypeError(f"deployment_change() got unexpected settings: {', '.join(sorted(unknown))}")
    current = {field: value for field, value in deployment_settings(deployment).items() if field not in _KEPT_WHEN_NONE}
    return deployment_update(deployment=deployment, actor=actor, **{**current, **changes})


def _set_status(*, deployment: Deployment, actor: Actor, status: DeploymentStatus, action: str) -> Deployment:
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if locked.status == status:
            return locked
        old = locked.status
        locked.status, locked.last_error = status, ""
        locked.save(update_fields=["status", "last_error", "updated_at"])
        audit_record(workspace=locked.workspace, actor=actor, action=action, target=locked, details={"from": old, "to": status})
        deployment_changed(locked.id)
        if status == DeploymentStatus.RUNNING:
            _probe_soon(locked)
    deployment.status, deployment.last_error = locked.status, locked.last_error
    return deployment


def deployment_stop(*, deployment: Deployment, actor: Actor) -> Deployment:
    """Stopped deployments refuse calls at the gateway; usage and grants are kept."""
    return _set_status(deployment=deployment, actor=actor, status=DeploymentStatus.STOPPED, action="deployment.stopped")


def deployment_start(*, deployment: Deployment, actor: Actor) -> Deployment:
    """Back to Running (also clears Failed/Unreachable; the worker's health check may set them again)."""
    return _set_status(deployment=deployment, actor=actor, status=DeploymentStatus.RUNNING, action="deployment.started")


@transaction.atomic
def deployment_price_set(
    *,
    deployment: Deployment,
    actor: Actor,
    input_per_million: Decimal | str,
    output_per_million: Decimal | str,
    currency: str = "USD",
    effective_from: datetime | None = None,
) -> DeploymentPrice:
    """Add a price version (the rules are deployments.prices'); setting the price already in force is a no-op."""
    effective_from = clean_effective_from(effective_from, timezone.now())
    input_price = clean_price(input_per_million, "input_per_million")
    output_price = clean_price(output_per_million, "output_per_million")
    if output_price and deployment.kind == DeploymentKind.EMBEDDING:
        raise ValidationError({"output_per_million": "Embedding deployments have an input price only; leave the output price at 0."})
    currency = clean_currency(currency)
    Deployment.objects.select_for_update().filter(pk=deployment.pk).first()  # orders concurrent price changes
    versions = DeploymentPrice.objects.filter(deployment=deployment)
    change = price_version_add(
        versions,
        priced_as=versions,
        what="deployment",
        actor=actor,
        effective_from=effective_from,
        input_price=input_price,
        output_price=output_price,
        currency=currency,
        deployment=deployment,
    )
    if not change.added:
        return change.price
    previous = change.previous
    audit_record(
        workspace=deployment.workspace,
        actor=actor,
        action="deployment.price_set",
        target=deployment,
        details={
            "input_per_million": str(input_price),
            "output_per_million": str(output_price),
            "currency": currency,
            "effective_from": effective_from.isoformat(),
            "previous": [str(previous.input_per_million), str(previous.output_per_million)] if previous else None,
        },
    )
    deployment_changed(deployment.id)
    return change.price


def _check_grantable(*, deployment: Deployment, workspace: Workspace) -> Workspace:
    root = deployment.workspace.parent or deployment.workspace
    if workspace.parent_id != root.id:
        raise ValidationError(f"{workspace.name} is not a sub-workspace of {root.name}.")
    if workspace.id == deployment.workspace_id:
        raise ValidationError(f"{workspace.name} owns this deployment and may always call it.")
    return root


@transaction.atomic
def model_grant_add(*, deployment: Deployment, workspace: Workspace, actor: Actor) -> ModelGrant:
    """Let a sub-workspace call a deployment of its organisation. Granting twice changes nothing."""
    root = _check_grantable(deployment=deployment, workspace=workspace)
    grant, created = ModelGrant.objects.get_or_create(
        deployment=deployment, workspace=workspace, defaults={"granted_by": actor.user if getattr(actor.user, "pk", None) else None}
    )
    if created:
        details = {"model_id": deployment.model_id, "deployment": str(deployment.public_id), "workspace": workspace.slug}
        audit_record(workspace=root, actor=actor, action="model_grant.added", target=grant, details=details)
        audit_record(workspace=workspace, actor=actor, action="model_grant.added", target=grant, details=details)
        deployment_changed(deployment.id)
    return grant


@transaction.atomic
def model_grant_remove(*, deployment: Deployment, workspace: Workspace, actor: Actor) -> bool:
    """Withdraw a sub-workspace's permission; its keys stop reaching the deployment. Returns whether a grant existed."""
    root = _check_grantable(deployment=deployment, workspace=workspace)
    grant = ModelGrant.objects.select_for_update().filter(deployment=deployment, workspace=workspace).first()
    if grant is None:
        return False
    details = {"model_id": deployment.model_id, "deployment": str(deployment.public_id), "workspace": workspace.slug}
    audit_record(workspace=root, actor=actor, action="model_grant.removed", target=grant, details=details)
    audit_record(workspace=workspace, actor=actor, action="model_grant.removed", target=grant, details=details)
    grant.delete()
    deployment_changed(deployment.id)
    return True


# ---- replicas ----------------------------------------------------------------------------------
def model_grants_set(
    *, deployment: Deployment, workspaces: Iterable[Workspace], candidates: QuerySet[Workspace], actor: Actor
) -> tuple[list[Workspace], list[Workspace]]:
    """Make `workspaces` the sub-workspaces among `candidates` that may call the deployment:
    grant the missing ones, withdraw the others' grants. Returns (granted, withdrawn)."""
    wanted = {w.id: w for w in workspaces}
    current = set(ModelGrant.objects.filter(deployment=deployment).values_list("workspace_id", flat=True))
    added = [model_grant_add(deployment=deployment, workspace=w, actor=actor).workspace for wid, w in wanted.items() if wid not in current]
    removed = []
    for w in candidates.filter(pk__in=current - set(wanted)):
        model_grant_remove(deployment=deployment, workspace=w, actor=actor)
        removed.append(w)
    return added, removed


WEIGHT_MAX = 100
MAX_CONCURRENT_MAX = 100_000


def _clean_weight(weight) -> int:
    try:
        value = int(weight)
    except (TypeError, ValueError):
        raise ValidationError({"weight": "Enter a whole number from 1 to 100."}) from None
    if not 1 <= value <= WEIGHT_MAX:
        raise ValidationError({"weight": f"Enter a whole number from 1 to {WEIGHT_MAX}."})
    return value


def _clean_max_concurrent(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValidationError({"max_concurrent": "Enter a whole number, or leave empty for no cap."}) from None
    if not 1 <= number <= MAX_CONCURRENT_MAX:
        raise ValidationError({"max_concurrent": f"Enter a number from 1 to {MAX_CONCURRENT_MAX}, or leave empty for no cap."})
    return number


def _sync_first_replica(deployment: Deployment) -> None:
    """The deployment's upstream fields are its first replica's: an edit of them edits that replica."""
    if deployment.upstream_kind != UpstreamKind.ENDPOINT:
        return
    first = DeploymentReplica.objects.filter(deployment=deployment).order_by("id").first()
    if first is None:
        DeploymentReplica.objects.create(
            deployment=deployment,
            base_url=deployment.upstream_base_url,
            api_key_encrypted=deployment.upstream_api_key_encrypted,
            api_key_last4=deployment.upstream_api_key_last4,
        )
        return
    fields = []
    if first.base_url != deployment.upstream_base_url:
        if DeploymentReplica.objects.filter(deployment=deployment, base_url=deployment.upstream_base_url).exclude(pk=first.pk).exists():
            raise ValidationError({"upstream_base_url": "Another replica of this deployment already has this URL."})
        first.base_url, first.status, first.last_error, first.last_checked_at = (
            deployment.upstream_base_url,
            ReplicaStatus.UNKNOWN,
            "",
            None,
        )
        fields += ["base_url", "status", "last_error", "last_checked_at"]
    if first.api_key_encrypted != deployment.upstream_api_key_encrypted:
        first.api_key_encrypted, first.api_key_last4 = deployment.upstream_api_key_encrypted, deployment.upstream_api_key_last4
        fields += ["api_key_encrypted", "api_key_last4"]
    if fields:
        first.save(update_fields=[*fields, "updated_at"])


def _mirror_first_replica(deployment: Deployment) -> None:
    """After a replica change: the deployment's upstream fields show its (new) first replica."""
    first = DeploymentReplica.objects.filter(deployment=deployment).order_by("id").first()
    if first is None:
        return
    if (deployment.upstream_base_url, deployment.upstream_api_key_encrypted) != (first.base_url, first.api_key_encrypted):
        deployment.upstream_base_url = first.base_url
        deployment.upstream_api_key_encrypted, deployment.upstream_api_key_last4 = first.api_key_encrypted, first.api_key_last4
        deployment.save(update_fields=["upstream_base_url", "upstream_api_key_encrypted", "upstream_api_key_last4", "updated_at"])


def _replica_details(replica: DeploymentReplica) -> dict:
    return {
        "replica": str(replica.public_id),
        "host": upstream_host(replica.base_url),
        "weight": replica.weight,
        "max_concurrent": replica.max_concurrent,
        "enabled": replica.enabled,
        "upstream_api_key": "set" if replica.api_key_encrypted else "none",
    }


def _locked_endpoint(deployment: Deployment) -> Deployment:
    locked = Deployment.objects.select_for_update().select_related("workspace").get(pk=deployment.pk)
    if locked.upstream_kind != UpstreamKind.ENDPOINT:
        raise ValidationError("Only deployments that route to an OpenAI-compatible endpoint have replicas.")
    return locked


def _clean_replica_url(deployment: Deployment, base_url: str, *, exclude_pk: int | None, resolve: Resolver) -> str:
    try:
        url = validate_upstream_url(base_url, resolve=resolve)
    except ValidationError as exc:
        raise ValidationError({"base_url": exc.messages}) from None
    clash = DeploymentReplica.objects.filter(deployment=deployment, base_url=url)
    if exclude_pk is not None:
        clash = clash.exclude(pk=exclude_pk)
    if clash.exists():
        raise ValidationError({"base_url": "This deployment already has a replica with this URL."})
    return url


@transaction.atomic
def replica_add(
    *,
    deployment: Deployment,
    actor: Actor,
    base_url: str,
    weight: int = 1,
    api_key: str = "",
    max_concurrent: int | None = None,
    enabled: bool = True,
    resolve: Resolver = system_resolver,
) -> DeploymentReplica:
    """Add a server to an endpoint deployment; the gateway starts sending it traffic once it is probed up or answers."""
    deployment = _locked_endpoint(deployment)
    api_key = (api_key or "").strip()
    replica = DeploymentReplica(
        deployment=deployment,
        base_url=_clean_replica_url(deployment, base_url, exclude_pk=None, resolve=resolve),
        weight=_clean_weight(weight),
        max_concurrent=_clean_max_concurrent(max_concurrent),
        enabled=enabled,
    )
    if api_key:
        replica.api_key_encrypted, replica.api_key_last4 = encrypt(api_key), api_key[-4:]
    replica.save()
    _mirror_first_replica(deployment)
    audit_record(
        workspace=deployment.workspace, actor=actor, action="deployment.replica_added", target=deployment, details=_replica_details(replica)
    )
    deployment_changed(deployment.id)
    if enabled:
        replica_probe_on_commit(replica_id=replica.id)
    return replica


@transaction.atomic
def replica_update(
    *,
    replica: DeploymentReplica,
    actor: Actor,
    base_url: str,
    weight: int = 1,
    max_concurrent: int | None = None,
    enabled: bool = True,
    api_key: str = "",
    clear_api_key: bool = False,
    resolve: Resolver = system_resolver,
) -> DeploymentReplica:
    """Change a replica. An empty api_key keeps the stored key; clear_api_key removes it."""
    deployment = _locked_endpoint(replica.deployment)
    replica = DeploymentReplica.objects.select_for_update().get(pk=replica.pk, deployment=deployment)
    new = {
        "base_url": _clean_replica_url(deployment, base_url, exclude_pk=replica.pk, resolve=resolve),
        "weight": _clean_weight(weight),
        "max_concurrent": _clean_max_concurrent(max_concurrent),
        "enabled": bool(enabled),
    }
    if not new["enabled"] and replica.enabled and not deployment.replicas.filter(enabled=True).exclude(pk=replica.pk).exists():
        raise ValidationError({"enabled": "This is the only enabled replica; stop the deployment instead of disabling it."})
    changes: dict[str, object] = {}
    for field, value in new.items():
        old = getattr(replica, field)
        if old != value:
            changes[field] = [old, value] if field != "base_url" else [upstream_host(old), upstream_host(value)]
            setattr(replica, field, value)
    fields = list(new)
    if "base_url" in changes:
        replica.status, replica.last_error, replica.last_checked_at = ReplicaStatus.UNKNOWN, "", None
        fields += ["status", "last_error", "last_checked_at"]
    api_key = (api_key or "").strip()
    if clear_api_key and replica.api_key_encrypted:
        replica.api_key_encrypted, replica.api_key_last4 = "", ""
        changes["upstream_api_key"] = "removed"
    elif api_key:
        replica.api_key_encrypted, replica.api_key_last4 = encrypt(api_key), api_key[-4:]
        changes["upstream_api_key"] = "replaced"
    if not changes:
        return replica
    replica.save(update_fields=[*fields, "api_key_encrypted", "api_key_last4", "updated_at"])
    _mirror_first_replica(deployment)
    audit_record(
        workspace=deployment.workspace,
        actor=actor,
        action="deployment.replica_updated",
        target=deployment,
        details={"replica": str(replica.public_id), "host": upstream_host(replica.base_url), **changes},
    )
    deployment_changed(deployment.id)
    if replica.enabled and changes.keys() & {"base_url", "upstream_api_key", "enabled"}:
        replica_probe_on_commit(replica_id=replica.id)
    return replica


REPLICA_SETTINGS = ("base_url", "weight", "max_concurrent", "enabled")


def replica_settings(replica: DeploymentReplica) -> dict:
    """A replica's settings as replica_update takes them (what an edit form starts from; never its key)."""
    return {field: getattr(replica, field) for field in REPLICA_SETTINGS}


def replica_change(*, replica: DeploymentReplica, actor: Actor, **changes) -> DeploymentReplica:
    """replica_update with only the settings in `changes`: every other one keeps its value (an
    absent api_key keeps the stored key)."""
    unknown = changes.keys() - {*REPLICA_SETTINGS, "api_key", "clear_api_key"}
    if unknown:
        raise TypeError(f"replica_change() got unexpected settings: {', '.join(sorted(unknown))}")
    return replica_update(replica=replica, actor=actor, **{**replica_settings(replica), **changes})


@transaction.atomic
def replica_remove(*, replica: DeploymentReplica, actor: Actor) -> None:
    """Remove a replica; the last one cannot go (stop the deployment instead)."""
    deployment = _locked_endpoint(replica.deployment)
    replica = DeploymentReplica.objects.select_for_update().filter(pk=replica.pk, deployment=deployment).first()
    if replica is None:
        return
    others = deployment.replicas.exclude(pk=replica.pk)
    if not others.exists():
        raise ValidationError("A deployment needs at least one replica; stop the deployment instead.")
    if replica.enabled and not others.filter(enabled=True).exists():
        raise ValidationError("This is the only enabled replica; enable another one first.")
    details = _replica_details(replica)
    replica.delete()
    _mirror_first_replica(deployment)
    audit_record(workspace=deployment.workspace, actor=actor, action="deployment.replica_removed", target=deployment, details=details)
    deployment_changed(deployment.id)


QUEUE_PRIORITY_MAX = 10


@transaction.atomic
def workspace_queue_priority_set(*, workspace: Workspace, actor: Actor, priority) -> Workspace:
    """A sub-workspace's turns per round when a deployment is at capacity (gateway/capacity.py).
    Set by the organisation, never by the sub-workspace itself; its keys are reloaded at once."""
    if workspace.parent_id is None:
        raise ValidationError("Queue priority is set for sub-workspaces.")
    try:
        value = int(priority)
    except (TypeError, ValueError):
        raise ValidationError({"priority": "Enter a whole number."}) from None
    if not 1 <= value <= QUEUE_PRIORITY_MAX:
        raise ValidationError({"priority": f"Enter a number from 1 to {QUEUE_PRIORITY_MAX}."})
    workspace = Workspace.objects.select_for_update().get(pk=workspace.pk)
    if workspace.queue_priority == value:
        return workspace
    details = {"workspace": workspace.slug, "from": workspace.queue_priority, "to": value}
    workspace.queue_priority = value
    workspace.save(update_fields=["queue_priority"])
    audit_record(workspace=workspace.parent, actor=actor, action="workspace.queue_priority_set", target=workspace, details=details)
    keys_changed(list(ApiKey.objects.filter(workspace=workspace).values_list("id", flat=True)))
    return workspace
