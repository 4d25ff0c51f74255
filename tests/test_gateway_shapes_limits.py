"""Limits and metering hold on every API shape, streamed and not: a key's yearly limit and its TPM
limit each refuse every shape in its own error format, the key's counters (the yearly counter and
the TPM window in Redis) hold exactly what the clients were told, and the usage CSV adds up to the
same (live gateway, demo model, PostgreSQL, Redis)."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from keys.counters import tpm_counter_key, yearly_counter_key
from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, metric, wait_for
from usage.models import UsageEvent
from usage.services import usage_backfill

from .usage_factory import csv_sections

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

DASHSCOPE = "/api/v1/services/aigc/text-generation/generation"
# ~15,000 tokens by a real tokenizer (each digit is one), ~10,000 by the 3-characters-a-token
# estimate: more than the 5,000 a year the key has, however the shape counts.
HUGE = " ".join(str(i % 10) for i in range(15000))


def request(shape: str, model: str, text: str, stream: bool) -> tuple[str, dict, dict]:
    """(path, body, extra headers) for one call of `shape`."""
    if shape == "chat":
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 40}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return "/v1/chat/completions", body, {}
    if shape == "completions":
        body = {"model": model, "prompt": text, "max_tokens": 40}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return "/v1/completions", body, {}
    if shape == "responses":
        return "/v1/responses", {"model": model, "input": text, "max_output_tokens": 40, "stream": stream}, {}
    if shape == "messages":
        body = {"model": model, "max_tokens": 40, "messages": [{"role": "user", "content": text}], "stream": stream}
        return "/v1/messages", body, {"anthropic-version": "2023-06-01"}
    if shape == "dashscope":
        body = {
            "model": model,
            "input": {"messages": [{"role": "user", "content": text}]},
            "parameters": {"result_format": "message", "max_tokens": 40},
        }
        return DASHSCOPE, body, {"x-dashscope-sse": "enable"} if stream else {}
    if shape == "embeddings":
        return "/v1/embeddings", {"model": model, "input": text}, {}
    return "/v1/rerank", {"model": model, "query": text, "documents": ["Paris is in France", text]}, {}


def seen_usage(shape: str, stream: bool, response: httpx.Response) -> int:
    """Total tokens as the client was told, read the way that API's clients read them."""
    if not stream:
        usage = response.json()["usage"]
        if shape in ("chat", "completions"):
            return usage["prompt_tokens"] + usage["completion_tokens"]
        if shape in ("responses", "messages", "dashscope"):
            return usage["input_tokens"] + usage["output_tokens"]
        return usage.get("prompt_tokens", usage.get("total_tokens"))
    datas = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip() != "[DONE]"]
    if shape in ("chat", "completions"):
        usage = next(d["usage"] for d in reversed(datas) if d.get("usage"))
        return usage["prompt_tokens"] + usage["completion_tokens"]
    if shape == "responses":
        usage = next(d["response"]["usage"] for d in datas if d["type"] == "response.completed")
        return usage["input_tokens"] + usage["output_tokens"]
    if shape == "messages":
        start = next(d["message"]["usage"] for d in datas if d["type"] == "message_start")
        final = next(d["usage"] for d in datas if d["type"] == "message_delta")
        assert final["input_tokens"] is not None or start["input_tokens"]
        return final["input_tokens"] + final["output_tokens"]
    usage = datas[-1]["usage"]  # DashScope: the last event carries the final counts
    return usage["input_tokens"] + usage["output_tokens"]


def refused_as(shape: str, response: httpx.Response) -> str:
    body = response.json()
    if shape == "messages":
        return body["error"]["type"]
    if shape == "dashscope":
        return body["code"]
    return body["error"]["code"]


REFUSAL = {
    "yearly": {"messages": "rate_limit_error", "dashscope": "Throttling.AllocationQuota"},
    "tpm": {"messages": "rate_limit_error", "dashscope": "Throttling.RateQuota"},
}
DEFAULT_REFUSAL = {"yearly": "insufficient_quota", "tpm": "rate_limit_exceeded"}
CASES = [
    ("chat", False),
    ("chat", True),
    ("completions", False),
    ("completions", True),
    ("responses", False),
    ("responses", True),
    ("messages", False),
    ("messages", True),
    ("dashscope", False),
    ("dashscope", True),
    ("embeddings", False),
    ("rerank", False),
]


def counters(key) -> tuple[int, int]:
    """(TPM window, yearly counter) of a key in Redis, as admission reads them."""
    tpm = sum(int(v) for v in redis_client().hgetall(tpm_counter_key(key.public_id)).values())
    yearly = int(redis_client().get(yearly_counter_key(key.public_id, timezone.now().astimezone(key.workspace.tz).year)) or 0)
    return tpm, yearly


@pytest.mark.parametrize("limit", ["yearly", "tpm"])
@pytest.mark.parametrize("shape, stream", CASES, ids=[f"{s}-{'stream' if t else 'once'}" for s, t in CASES])
def test_limits_and_metering_hold_per_shape(world, demo, gateway, client_for, shape, stream, limit):
    kind = {"embeddings": "embedding", "rerank": "rerank"}.get(shape, "chat")
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind=kind
    )
    limits = {"yearly_token_limit": 5_000} if limit == "yearly" else {"tpm_limit": 5_000}
    key, plaintext = make_key(world.org, deployments=[deployment], **limits)
    auth = {"x-api-key": plaintext} if shape == "messages" else {"authorization": f"Bearer {plaintext}"}

    def metrics() -> tuple[float, ...]:
        """The /metrics samples chat completions are counted in, for this deployment."""
        return (
            metric(gateway, "gatehouse_gateway_requests_total", model=deployment.model_id, status="200"),
            metric(gateway, "gatehouse_gateway_requests_total", model=deployment.model_id, status="429"),
            metric(gateway, "gatehouse_gateway_tokens_total", model=deployment.model_id),
            metric(gateway, "gatehouse_gateway_request_seconds_count", model=deployment.model_id),
        )

    metrics_before = metrics()
    seen = 0
    for text in ("What is the capital of France?", "Say hi"):
        path, body, headers = request(shape, deployment.model_id, text, stream)
        response = httpx.post(gateway.url + path, json=body, headers={**auth, **headers}, timeout=30)
        assert response.status_code == 200, response.text
        seen += seen_usage(shape, stream, response)

    path, body, headers = request(shape, deployment.model_id, HUGE, stream)
    refused = httpx.post(gateway.url + path, json=body, headers={**auth, **headers}, timeout=30)
    assert refused.status_code == 429 and refused_as(shape, refused) == REFUSAL[limit].get(shape, DEFAULT_REFUSAL[limit])
    # Settled to what the clients saw: the reservation (prompt + cap) is gone, the refusal added nothing.
    assert wait_for(lambda: counters(key)[0 if limit == "tpm" else 1] == seen), counters(key)

    # The same /metrics labels as chat completions: requests by status and model, tokens, latency.
    delta = tuple(after - before for after, before in zip(metrics(), metrics_before, strict=True))
    assert delta[:3] == (2, 1, seen) and delta[3] >= 2, delta

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    endpoint = {"chat": "chat.completions", "dashscope": "dashscope.generation"}.get(shape, shape)
    assert [(e.endpoint, e.status_code, e.streamed) for e in events] == [(endpoint, 200, stream)] * 2 + [(endpoint, 429, False)]
    assert not any(e.estimated for e in events)
    assert sum(e.total_tokens for e in events) == seen

    # The usage CSV, from the rollups (recomputed for the workspace: the incremental pass may hold
    # back events behind id gaps that other tests left), says the same.
    usage_backfill(workspace=world.org, now=timezone.now() + timedelta(minutes=5))
    today = timezone.now().astimezone(world.org.tz).date()
    export = client_for(world.owner).get(f"/w/{world.org.slug}/usage/export.csv?start={today}&end={today}&key={key.public_id}")
    rows = csv_sections(list(csv.reader(io.StringIO(export.content.decode()))))
    days, by_api = rows["day"], rows["endpoint"]
    assert int(days[-1][days[0].index("total_tokens")]) == seen
    assert {r[1]: int(r[by_api[0].index("total_tokens")]) for r in by_api[1:-1]} == {endpoint: seen}
