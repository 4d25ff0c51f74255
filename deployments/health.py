"""Deployment health checks: a cheap probe of each replica of each endpoint deployment.

GET {replica base_url}/models with the replica's upstream key and a short timeout. An answer
below 400 (or 404/405 from a server that does not list models) means Running; no answer, a 5xx,
or a refused key means Down, with the reason in last_error; a deployment is Unreachable when all
its enabled replicas are down. Stopped (and failed)
deployments are never probed; router and BYOK upstreams belong to their providers and are not
probed here.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import httpx
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from deployments.changes import replica_probed
from deployments.models import Deployment, DeploymentReplica, DeploymentStatus, ReplicaStatus, UpstreamKind
from lib.crypto import decrypt
from lib.upstream import Resolver, UpstreamRefused, pinned_url, resolve_checked, system_resolver, validate_upstream_url

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 5.0
PROBED_STATUSES = (DeploymentStatus.RUNNING, DeploymentStatus.UNREACHABLE)
# A server that answers 404/405 for /models is up; it just does not implement the listing.
ANSWERED_WITHOUT_LISTING = (404, 405)


@dataclass(frozen=True)
class ProbeResult:
    reachable: bool
    error: str = ""


# What an upstream's error text may echo back and the console must not show: the key we sent
# (exactly), other key-like tokens, Authorization values, and URL credentials or query strings.
_SCRUBS = (
    (re.compile(r"(?i)\b(bearer|basic)\s+[^\s,;\"']+"), r"\1 [redacted]"),
    (re.compile(r"(?i)\b((?:sk|pk|rk|gh[a-z]?|hf|xox[a-z]?)[-_])[A-Za-z0-9_\-]{8,}"), r"\1[redacted]"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@"), r"\1[redacted]@"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^\s?#\"']+)\?[^\s\"']*"), r"\1?[redacted]"),
    (re.compile(r"\b[A-Za-z0-9_\-]{40,}\b"), "[redacted]"),
)


def _redact(text: str, secret: str) -> str:
    """The text without the key we sent or anything else that looks like a credential."""
    if secret:
        text = text.replace(secret, "[redacted]")
    for pattern, replacement in _SCRUBS:
        text = pattern.sub(replacement, text)
    return text


def _upstream_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:200]
        if isinstance(error, str):
            return error[:200]
        if isinstance(body.get("message"), str):
            return body["message"][:200]
    return ""


def probe_upstream(*, base_url: str, api_key: str, timeout: float, resolve: Resolver | None = None) -> ProbeResult:
    """One GET {base_url}/models. Errors never contain the key or the URL's path.

    The URL is checked against the upstream policy first and resolved now; the probe connects to
    exactly the address it checked (a host that has started pointing at a refused address since
    it was saved is never contacted).
    """
    try:
        validate_upstream_url(base_url, resolve=resolve or system_resolver)
        parts = urlsplit(base_url)
        addresses = resolve_checked(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), resolve=resolve)
    except ValidationError as exc:
        return ProbeResult(False, exc.messages[0])
    except UpstreamRefused as exc:
        return ProbeResult(False, str(exc))
    except (OSError, UnicodeError):
        return ProbeResult(False, f"The host {parts.hostname} does not resolve from this server.")
    target, host = pinned_url(base_url.rstrip("/") + "/models", addresses[0])
    headers = {"Accept": "application/json", "User-Agent": "Gatehouse-health-check", "Host": host}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            response = client.get(target, headers=headers, extensions={"sni_hostname": parts.hostname})
    except httpx.TimeoutException:
        return ProbeResult(False, f"No answer within {timeout:g} s.")
    except httpx.ConnectError as exc:
        return ProbeResult(False, _redact(f"Cannot connect: {exc}"[:300], api_key))
    except httpx.HTTPError as exc:
        return ProbeResult(False, f"Request failed: {type(exc).__name__}.")
    status = response.status_code
    if status < 400 or status in ANSWERED_WITHOUT_LISTING:
        return ProbeResult(True)
    message = _redact(_upstream_message(response), api_key)
    if status in (401, 403):
        return ProbeResult(False, f"The upstream refused the API key (HTTP {status}){': ' + message if message else '.'}")
    return ProbeResult(False, f"HTTP {status} from the upstream{': ' + message if message else '.'}")


def deployments_due_for_probe() -> list[int]:
    return list(
        Deployment.objects.filter(upstream_kind=UpstreamKind.ENDPOINT, status__in=PROBED_STATUSES)
        .exclude(upstream_base_url="")
        .order_by("id")
        .values_list("id", flat=True)
    )


def deployments_without_replicas_due_for_probe() -> list[int]:
    return list(
        Deployment.objects.filter(upstream_kind=UpstreamKind.ENDPOINT, status__in=PROBED_STATUSES, replicas__isnull=True)
        .exclude(upstream_base_url="")
        .order_by("id")
        .values_list("id", flat=True)
    )


def replicas_due_for_probe() -> list[int]:
    """Every enabled replica of an endpoint deployment that is running or unreachable."""
    return list(
        DeploymentReplica.objects.filter(
            enabled=True, deployment__upstream_kind=UpstreamKind.ENDPOINT, deployment__status__in=PROBED_STATUSES
        )
        .order_by("id")
        .values_list("id", flat=True)
    )


def _probe(*, base_url: str, encrypted_key: str, timeout_seconds: int) -> tuple[ProbeResult, int]:
    started = time.monotonic()
    try:
        api_key = decrypt(encrypted_key) if encrypted_key else ""
    except ValueError:
        result = ProbeResult(False, "The stored upstream API key cannot be decrypted (was ENCRYPTION_KEY or SECRET_KEY changed?).")
    else:
        result = probe_upstream(base_url=base_url, api_key=api_key, timeout=min(PROBE_TIMEOUT_SECONDS, timeout_seconds))
    return result, int((time.monotonic() - started) * 1000)


def replica_health_check(*, replica_id: int, now: datetime | None = None) -> DeploymentReplica | None:
    """Probe one replica, record Up/Down on it and the deployment's resulting status, and tell the
    gateways (deployments.changes.replica_probed) so a passively ejected replica comes back at once.
    None when it is not probed (disabled, deployment stopped, gone)."""
    replica = (
        DeploymentReplica.objects.select_related("deployment__workspace")
        .filter(id=replica_id, enabled=True, deployment__upstream_kind=UpstreamKind.ENDPOINT, deployment__status__in=PROBED_STATUSES)
        .first()
    )
    if replica is None:
        return None
    result, elapsed_ms = _probe(
        base_url=replica.base_url, encrypted_key=replica.api_key_encrypted, timeout_seconds=replica.deployment.timeout_seconds
    )
    now = now or timezone.now()
    status = ReplicaStatus.UP if result.reachable else ReplicaStatus.DOWN
    with transaction.atomic():
        updated = DeploymentReplica.objects.filter(id=replica.id, base_url=replica.base_url).update(
            status=status, last_error=result.error[:500], last_checked_at=now, last_probe_ms=elapsed_ms
        )
        if updated and replica.status != status and replica.status != ReplicaStatus.UNKNOWN:
            logger.warning("replica %s of %s is now %s: %s", replica, replica.deployment.model_id, status, result.error or "answered")
            audit_record(
                workspace=replica.deployment.workspace,
                actor=Actor.system("health check"),
                action="deployment.replica_up" if result.reachable else "deployment.replica_down",
                target=replica.deployment,
                details={"replica": str(replica.public_id), "host": str(replica), "error": result.error[:200]},
            )
        _record_deployment_status(replica.deployment_id, now)
        if updated:
            replica_probed(replica.id, replica.public_id, up=result.reachable)
    replica.refresh_from_db(fields=["status", "last_error", "last_checked_at", "last_probe_ms"])
    return replica


def _record_deployment_status(deployment_id: int, now: datetime) -> None:
    """Running while any enabled replica is up (or not probed yet); Unreachable when all are down."""
    deployment = (
        Deployment.objects.select_for_update().select_related("workspace").filter(id=deployment_id, status__in=PROBED_STATUSES).first()
    )
    if deployment is None:  # stopped (or failed) meanwhile: keep what the other writer set
        return
    replicas = list(deployment.replicas.filter(enabled=True))
    down = [r for r in replicas if r.status == ReplicaStatus.DOWN]
    status = DeploymentStatus.UNREACHABLE if replicas and len(down) == len(replicas) else DeploymentStatus.RUNNING
    if len(replicas) == 1:
        error = down[0].last_error if down else ""
    elif down:
        error = f"{len(down)} of {len(replicas)} replicas down: " + "; ".join(f"{r}: {r.last_error}" for r in down)
    else:
        error = ""
    _set_deployment_status(deployment, status, error, now)


def _set_deployment_status(deployment: Deployment, status: str, error: str, now: datetime) -> None:
    updated = Deployment.objects.filter(id=deployment.id, status=deployment.status).update(
        status=status, last_error=error[:500], last_checked_at=now
    )
    if updated and status != deployment.status:
        logger.warning("deployment %s is now %s: %s", deployment.model_id, status, error or "upstream answered")
        audit_record(
            workspace=deployment.workspace,
            actor=Actor.system("health check"),
            action="deployment.reachable" if status == DeploymentStatus.RUNNING else "deployment.unreachable",
            target=deployment,
            details={"from": deployment.status, "to": status, "error": error[:200]},
        )


def deployment_health_check(*, deployment_id: int, now: datetime | None = None) -> Deployment | None:
    """Probe every enabled replica of one deployment and record Running/Unreachable. None when it is
    not probed (stopped, gone). A deployment row without replicas (made outside the services) is
    probed at its own upstream URL."""
    deployment = (
        Deployment.objects.select_related("workspace")
        .filter(id=deployment_id, upstream_kind=UpstreamKind.ENDPOINT, status__in=PROBED_STATUSES)
        .exclude(upstream_base_url="")
        .first()
    )
    if deployment is None:
        return None
    replica_ids = list(deployment.replicas.filter(enabled=True).values_list("id", flat=True))
    if replica_ids:
        for replica_id in replica_ids:
            replica_health_check(replica_id=replica_id, now=now)
    else:
        result, _ = _probe(
            base_url=deployment.upstream_base_url,
            encrypted_key=deployment.upstream_api_key_encrypted,
            timeout_seconds=deployment.timeout_seconds,
        )
        status = DeploymentStatus.RUNNING if result.reachable else DeploymentStatus.UNREACHABLE
        with transaction.atomic():
            # Conditional on the status read before the probe: a deployment stopped (or probed by a
            # concurrent check) meanwhile keeps what the other writer set.
            _set_deployment_status(deployment, status, result.error, now or timezone.now())
    deployment.refresh_from_db(fields=["status", "last_error", "last_checked_at"])
    return deployment


def deployment_probe_on_commit(*, deployment_id: int) -> None:
    """For request code (create, start, upstream change): probe once the change is committed.

    Expires like the periodic probes: after a worker outage the next round checks it anyway.
    """
    from deployments.tasks import PROBE_EXPIRES_SECONDS, deployment_probe  # not at the top: deployments.tasks imports this module

    transaction.on_commit(lambda: deployment_probe.apply_async(args=(deployment_id,), expires=PROBE_EXPIRES_SECONDS))


def replica_probe_on_commit(*, replica_id: int) -> None:
    """For request code (a replica added, edited or enabled): probe it once the change is committed."""
    from deployments.tasks import PROBE_EXPIRES_SECONDS, replica_probe  # not at the top: deployments.tasks imports this module

    transaction.on_commit(lambda: replica_probe.apply_async(args=(replica_id,), expires=PROBE_EXPIRES_SECONDS))
