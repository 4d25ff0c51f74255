"""Console test calls: a prompt the worker sends through the real gateway, like an SDK would.

The worker authenticates with the workspace's hidden `test_call` ApiKey and a secret minted for
this one call (keys.services): the plaintext exists only in the worker's memory, only its digest
is stored, and the secret row is deleted after the call (it also expires by itself a few minutes
later).

The functions are named verb first (create_test_call, not test_call_create): pytest collects
every function whose name starts with "test" that a test module imports.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from console.audit import Actor, audit_record
from console.models import Workspace
from deployments.models import Deployment, DeploymentKind, TestCall, TestCallStatus
from deployments.selectors import price_in_force
from keys.services import api_key_for_test_calls, api_key_secret_discard, api_key_secret_mint
from usage.pricing import token_cost
from usage.selectors import event_cost

log = logging.getLogger(__name__)

SECRET_LIFETIME = timedelta(minutes=5)
SAVE_EVERY_SECONDS = 0.2
STUCK_AFTER = timedelta(minutes=10)
# A worker claims a call within a second; one still queued after this never will be (the worker
# is down or the message was lost). The task expires at the same moment, so a worker that comes
# back later does not run a call the console has already reported as failed.
QUEUED_TOO_LONG = timedelta(minutes=2)
NOT_PICKED_UP = (
    f"No worker picked this up within {QUEUED_TOO_LONG.seconds // 60} minutes — is the Celery worker running? Run it again once it is."
)
MAX_PROMPT_CHARS = 20000


def gateway_url(path: str = "/v1/chat/completions") -> str:
    return (settings.GATEWAY_INTERNAL_URL or settings.PUBLIC_BASE_URL).rstrip("/") + path


def _path(deployment: Deployment) -> str:
    """What a test call of this deployment calls: embedding models are tried on /v1/embeddings."""
    return "/v1/embeddings" if deployment.kind == DeploymentKind.EMBEDDING else "/v1/chat/completions"


def describe_embedding(body: dict) -> str:
    """The test call's output for an embedding: its dimensions and first values (the vector itself is long)."""
    vectors = [item.get("embedding") or [] for item in body.get("data") or [] if isinstance(item, dict)]
    if not vectors or not isinstance(vectors[0], list):
        raise ValueError("the answer holds no embedding")
    first = vectors[0]
    head = ", ".join(f"{v:.4f}" for v in first[:8]) + (", …" if len(first) > 8 else "")
    return f"{len(first)} dimensions\n[{head}]"


def create_test_call(
    *,
    deployment: Deployment,
    workspace: Workspace,
    actor: Actor,
    prompt: str,
    system_prompt: str = "",
    temperature: Decimal | None = None,
    max_tokens: int | None = None,
    stream: bool = True,
) -> TestCall:
    from deployments.tasks import run_test_call  # here, not at the top: deployments.tasks imports this module

    if not prompt.strip():
        raise ValidationError({"prompt": "Write a prompt."})
    if deployment.kind == DeploymentKind.RERANK:
        raise ValidationError({"prompt": "Test calls try chat and embedding models; call a rerank model with the curl example."})
    if deployment.kind == DeploymentKind.EMBEDDING:
        system_prompt, temperature, max_tokens, stream = "", None, None, False  # an embedding has none of these
    if len(prompt) > MAX_PROMPT_CHARS or len(system_prompt) > MAX_PROMPT_CHARS:
        raise ValidationError({"prompt": f"Keep prompts under {MAX_PROMPT_CHARS} characters."})
    with transaction.atomic():
        call = TestCall.objects.create(
            deployment=deployment,
            workspace=workspace,
            created_by=actor.user if getattr(actor.user, "pk", None) else None,
            system_prompt=system_prompt,
            prompt=prompt,
            temperature=temperature,
            max_tokens=max_tokens,
            stream=stream,
        )
        audit_record(
            workspace=workspace,
            actor=actor,
            action="deployment.test_call",
            target=deployment,
            details={"test_call": str(call.public_id), "stream": stream},
        )
        transaction.on_commit(lambda: run_test_call.apply_async(args=(call.id,), expires=QUEUED_TOO_LONG.total_seconds()))
    return call


def claim_test_call(test_call_id: int) -> bool:
    """queued → running, exactly once however often the task is delivered."""
    updated = TestCall.objects.filter(id=test_call_id, status=TestCallStatus.QUEUED).update(
        status=TestCallStatus.RUNNING, started_at=timezone.now()
    )
    return updated == 1


def _save(call: TestCall, *fields: str) -> None:
    call.save(update_fields=list(fields))


def _fail(call: TestCall, error: str) -> None:
    call.status, call.error, call.finished_at = TestCallStatus.FAILED, error[:2000], timezone.now()
    _save(call, "status", "error", "finished_at", "output_text", "request_id", "ttft_ms")


def _error_message(response: httpx.Response) -> str:
    try:
        body = json.loads(response.read() or b"{}")
        message = (body.get("error") or {}).get("message") or ""
    except (ValueError, AttributeError):
        message = ""
    return f"The gateway answered HTTP {response.status_code}" + (f": {message}" if message else ".")


@dataclass
class _Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _body(call: TestCall) -> dict:
    if call.deployment.kind == DeploymentKind.EMBEDDING:
        return {"model": call.deployment.model_id, "input": call.prompt, "encoding_format": "float"}
    messages = ([{"role": "system", "content": call.system_prompt}] if call.system_prompt else []) + [
        {"role": "user", "content": call.prompt}
    ]
    body: dict = {"model": call.deployment.model_id, "messages": messages, "stream": call.stream}
    if call.temperature is not None:
        body["temperature"] = float(call.temperature)
    if call.max_tokens is not None:
        body["max_tokens"] = call.max_tokens
    if call.stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _read_stream(call: TestCall, response: httpx.Response, started: float, usage: _Usage) -> float | None:
    first: float | None = None
    last_save = 0.0
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("error"):
            raise RuntimeError((chunk["error"] or {}).get("message") or "The stream ended with an error.")
        if chunk.get("usage"):
            usage.prompt_tokens = chunk["usage"].get("prompt_tokens")
            usage.completion_tokens = chunk["usage"].get("completion_tokens")
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") or ""
            if not text:
                continue
            now = time.monotonic()
            if first is None:
                first = now
                call.ttft_ms = int((now - started) * 1000)
                call.status = TestCallStatus.STREAMING
                _save(call, "status", "ttft_ms")
            call.output_text += text
            if now - last_save >= SAVE_EVERY_SECONDS:
                _save(call, "output_text")
                last_save = now
    return first


def _cost(call: TestCall) -> tuple[Decimal | None, str]:
    """The cost on the gateway's usage event; priced here only when that event is not in the
    database (yet): the gateway spooled it while PostgreSQL was away."""
    recorded = event_cost(call.request_id) if call.request_id else None
    if recorded is not None:
        return recorded
    price = price_in_force(call.deployment, call.started_at or timezone.now())
    if price is None or call.prompt_tokens is None:
        return None, ""
    return token_cost(call.prompt_tokens, call.completion_tokens or 0, price), price.currency


def execute_test_call(test_call_id: int, *, timeout: float = 120) -> TestCall | None:
    if not claim_test_call(test_call_id):
        return None
    call = TestCall.objects.select_related("deployment", "workspace").get(id=test_call_id)
    secret, plaintext = api_key_secret_mint(api_key=api_key_for_test_calls(workspace=call.workspace), valid_for=SECRET_LIFETIME)
    started = time.monotonic()
    usage = _Usage()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(timeout, connect=10)) as client,
            client.stream(
                "POST", gateway_url(_path(call.deployment)), json=_body(call), headers={"authorization": f"Bearer {plaintext}"}
            ) as response,
        ):
            call.request_id = response.headers.get("x-request-id", "")[:64]
            if response.status_code >= 400:
                _fail(call, _error_message(response))
                return call
            if call.stream:
                _read_stream(call, response, started, usage)
            elif call.deployment.kind == DeploymentKind.EMBEDDING:
                body = json.loads(response.read())
                call.output_text = describe_embedding(body)
                usage.prompt_tokens, usage.completion_tokens = (body.get("usage") or {}).get("prompt_tokens"), 0
            else:
                body = json.loads(response.read())
                call.ttft_ms = int((time.monotonic() - started) * 1000)
                call.output_text = "".join((c.get("message") or {}).get("content") or "" for c in body.get("choices") or [])
                usage.prompt_tokens = (body.get("usage") or {}).get("prompt_tokens")
                usage.completion_tokens = (body.get("usage") or {}).get("completion_tokens")
    except httpx.ConnectError:
        _fail(call, f"Could not connect to the gateway at {gateway_url(_path(call.deployment))}.")
        return call
    except httpx.TimeoutException:
        _fail(call, f"The gateway did not answer within {timeout:.0f} s.")
        return call
    except (httpx.HTTPError, ValueError, RuntimeError) as exc:
        _fail(call, f"The call failed: {exc}")
        return call
    finally:
        del plaintext
        api_key_secret_discard(secret=secret)
    call.latency_ms = int((time.monotonic() - started) * 1000)
    call.prompt_tokens, call.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    call.cost, call.currency = _cost(call)
    call.status, call.finished_at = TestCallStatus.DONE, timezone.now()
    _save(
        call,
        "status",
        "finished_at",
        "output_text",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "currency",
        "request_id",
    )
    return call


def sweep_test_calls(*, older_than: timedelta = STUCK_AFTER, queued_for: timedelta = QUEUED_TOO_LONG) -> int:
    """Fail test calls no worker will finish: running/streaming for longer than `older_than` (the
    worker died), or still queued after `queued_for` (no worker picked them up)."""
    now = timezone.now()
    stuck = TestCall.objects.filter(status__in=(TestCallStatus.RUNNING, TestCallStatus.STREAMING), started_at__lt=now - older_than).update(
        status=TestCallStatus.FAILED, finished_at=now, error="The worker stopped before this test call finished. Run it again."
    )
    return stuck + _fail_unclaimed(TestCall.objects.all(), now=now, queued_for=queued_for)


def _fail_unclaimed(calls, *, now: datetime, queued_for: timedelta = QUEUED_TOO_LONG) -> int:
    # Conditional on status=queued, like the claim: whichever of the two runs first wins.
    return calls.filter(status=TestCallStatus.QUEUED, created_at__lt=now - queued_for).update(
        status=TestCallStatus.FAILED, finished_at=now, error=NOT_PICKED_UP
    )


def expire_test_call_if_unclaimed(call: TestCall) -> TestCall:
    """For the console's poll: the periodic sweep runs on a worker too, so when no worker is up
    only the person watching the call can notice that nobody picked it up."""
    if call.status == TestCallStatus.QUEUED and _fail_unclaimed(TestCall.objects.filter(id=call.id), now=timezone.now()):
        call.refresh_from_db(fields=["status", "finished_at", "error"])
    return call


def recent_test_calls(deployment: Deployment, workspace: Workspace, limit: int = 10) -> list[TestCall]:
    return list(TestCall.objects.filter(deployment=deployment, workspace=workspace).select_related("created_by")[:limit])
