"""Import from server: read a model server's list (GET {base}/models) and turn each model into a
deployment, or into a replica of an existing deployment serving the same upstream model.

vLLM, SGLang, llama.cpp's server and Ollama's OpenAI API all answer `GET /v1/models` with an
OpenAI list (`{"data": [{"id": ...}]}`; llama.cpp also sends `models`). A base URL given without
`/v1` is tried with it first. The address is checked against the upstream policy and the request
goes to exactly the checked address, as for health probes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.core.exceptions import ValidationError
from django.db import transaction

from console.audit import Actor
from console.models import Workspace
from deployments.models import Deployment, DeploymentReplica, UpstreamKind
from deployments.services import deployment_create, replica_add
from lib.upstream import Resolver, UpstreamRefused, pinned_url, resolve_checked, system_resolver, validate_upstream_url

FETCH_TIMEOUT_SECONDS = 5.0
MAX_MODELS = 200


@dataclass(frozen=True)
class Offer:
    """One model the server lists, and what importing it would do."""

    upstream_model: str
    existing: Deployment | None  # a deployment of this organisation serving the same upstream model
    already_replica: bool  # the server is already one of that deployment's replicas

    @property
    def action(self) -> str:
        if self.existing is None:
            return "create"
        return "none" if self.already_replica else "add_replica"


def _get_models(url: str, api_key: str, resolve: Resolver | None) -> list[str] | None:
    """The ids at {url}/models; None when the server does not answer there with a model list."""
    parts = urlsplit(url)
    try:
        addresses = resolve_checked(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), resolve=resolve)
    except UpstreamRefused as exc:
        raise ValidationError({"base_url": str(exc)}) from None
    except (OSError, UnicodeError):
        raise ValidationError({"base_url": f"The host {parts.hostname} does not resolve from this server."}) from None
    target, host = pinned_url(url.rstrip("/") + "/models", addresses[0])
    headers = {"Accept": "application/json", "User-Agent": "Gatehouse-import", "Host": host}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client:
            response = client.get(target, headers=headers, extensions={"sni_hostname": parts.hostname})
    except httpx.TimeoutException:
        raise ValidationError({"base_url": f"The server did not answer within {FETCH_TIMEOUT_SECONDS:g} s."}) from None
    except httpx.HTTPError:
        raise ValidationError({"base_url": "Cannot connect to the server."}) from None
    if response.status_code in (401, 403):
        raise ValidationError({"api_key": f"The server refused the API key (HTTP {response.status_code})."})
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    ids: list[str] = []
    for item in (body.get("data") or []) + (body.get("models") or []):
        if isinstance(item, dict):
            name = item.get("id") or item.get("model") or item.get("name")
            if isinstance(name, str) and name.strip() and name not in ids and len(name) <= 200:
                ids.append(name.strip())
    return ids[:MAX_MODELS] if ("data" in body or "models" in body) else None


def server_models(*, base_url: str, api_key: str = "", resolve: Resolver | None = None) -> tuple[str, list[str]]:
    """(the OpenAI base URL that answered, the model ids it lists). ValidationError says why not."""
    try:
        url = validate_upstream_url(base_url, resolve=resolve or system_resolver)
    except ValidationError as exc:
        raise ValidationError({"base_url": exc.messages}) from None
    candidates = [url] if url.rstrip("/").endswith("/v1") else [url.rstrip("/") + "/v1", url]
    for candidate in candidates:
        ids = _get_models(candidate, api_key, resolve)
        if ids is not None:
            if not ids:
                raise ValidationError({"base_url": "The server answered but lists no models."})
            return candidate.rstrip("/"), ids
    raise ValidationError({"base_url": "No OpenAI-compatible model list at this address (tried GET /v1/models and /models)."})


def import_offers(*, workspace: Workspace, base_url: str, models: list[str]) -> list[Offer]:
    deployments = list(Deployment.objects.filter(workspace.organisation_q()).filter(upstream_kind=UpstreamKind.ENDPOINT).order_by("id"))
    replica_urls = {
        (deployment_id, url)
        for deployment_id, url in DeploymentReplica.objects.filter(deployment__in=deployments).values_list("deployment_id", "base_url")
    }
    offers = []
    for model in models:
        existing = next((d for d in deployments if (d.upstream_model or d.model_id) == model), None)
        offers.append(
            Offer(model, existing, existing is not None and (existing.id, base_url) in replica_urls),
        )
    return offers


def default_model_id(workspace: Workspace, upstream_model: str) -> str:
    org = workspace.parent.slug if workspace.parent_id else workspace.slug
    return f"@{org}/{upstream_model}"[:200]


@transaction.atomic
def deployments_import(
    *,
    workspace: Workspace,
    actor: Actor,
    base_url: str,
    api_key: str = "",
    models: list[str],
    resolve: Resolver = system_resolver,
) -> list[tuple[str, Deployment, str]]:
    """Import the chosen models of a server: a new deployment each, or a new replica of the
    deployment already serving that upstream model. Returns (model, deployment, "created" /
    "replica added" / "already a replica"). All or nothing."""
    offers = {o.upstream_model: o for o in import_offers(workspace=workspace, base_url=base_url, models=models)}
    done = []
    for model in models:
        offer = offers[model]
        if offer.action == "create":
            deployment = deployment_create(
                workspace=workspace,
                actor=actor,
                name=model.rsplit("/", 1)[-1][:80],
                model_id=default_model_id(workspace, model),
                upstream_base_url=base_url,
                upstream_model=model,
                upstream_api_key=api_key,
                description=f"Imported from {urlsplit(base_url).netloc}",
                resolve=resolve,
            )
            done.append((model, deployment, "created"))
        elif offer.action == "add_replica":
            replica_add(deployment=offer.existing, actor=actor, base_url=base_url, api_key=api_key, resolve=resolve)
            done.append((model, offer.existing, "replica added"))
        else:
            done.append((model, offer.existing, "already a replica"))
    return done
