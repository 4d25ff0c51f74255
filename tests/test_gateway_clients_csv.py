"""The usage CSV adds up to what the real clients were told: every shape is called with the client
its users run (openai Python for chat, completions, embeddings and Responses, streamed and not; the
anthropic SDK for Messages; the dashscope SDK for DashScope; plain HTTP for rerank, which has no
official client), each client's own usage object is summed, and the console's usage CSV for the key
says the same per API and in total (live gateway, demo model, PostgreSQL, Redis, rollups)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import anthropic
import httpx
import openai
import pytest
from django.utils import timezone

from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent
from usage.services import usage_backfill

from .usage_factory import csv_sections

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# The dashscope SDK keeps a module-level base URL: each call runs in a fresh interpreter.
DASHSCOPE_SCRIPT = """
import json, os, sys
import dashscope
dashscope.base_http_api_url = os.environ["BASE"]
messages = [{"role": "user", "content": "What is the capital of France?"}]
kwargs = dict(api_key=os.environ["KEY"], model=os.environ["MODEL"], messages=messages, result_format="message")
if sys.argv[1] == "stream":
    usage = None
    for r in dashscope.Generation.call(stream=True, incremental_output=True, **kwargs):
        assert r.status_code == 200, (r.status_code, r.code)
        usage = dict(r.usage)
else:
    r = dashscope.Generation.call(**kwargs)
    assert r.status_code == 200, (r.status_code, r.code)
    usage = dict(r.usage)
print(json.dumps(usage))
"""


def dashscope_usage(gateway, key: str, model: str, mode: str) -> int:
    env = {"BASE": gateway.url + "/api/v1", "KEY": key, "MODEL": model, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = subprocess.run([sys.executable, "-c", DASHSCOPE_SCRIPT, mode], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    usage = json.loads(result.stdout.strip().splitlines()[-1])
    return usage["input_tokens"] + usage["output_tokens"]


def test_usage_csv_totals_equal_what_each_real_client_saw(world, demo, gateway, client_for):
    def deploy(kind: str):
        return make_deployment(
            world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind=kind
        )

    chat, embedding, rerank = deploy("chat"), deploy("embedding"), deploy("rerank")
    key, plaintext = make_key(world.org, deployments=[chat, embedding, rerank])
    oa = openai.OpenAI(api_key=plaintext, base_url=gateway.url + "/v1", max_retries=0, timeout=30)
    claude = anthropic.Anthropic(api_key=plaintext, base_url=gateway.url, max_retries=0, timeout=30)
    seen: Counter[str] = Counter()
    calls: Counter[str] = Counter()

    def saw(endpoint: str, tokens: int) -> None:
        assert tokens > 0
        seen[endpoint] += tokens
        calls[endpoint] += 1

    saw("chat.completions", oa.chat.completions.create(model=chat.model_id, messages=QUESTION).usage.total_tokens)
    chunks = list(oa.chat.completions.create(model=chat.model_id, messages=QUESTION, stream=True, stream_options={"include_usage": True}))
    saw("chat.completions", chunks[-1].usage.total_tokens)

    saw("completions", oa.completions.create(model=chat.model_id, prompt="The capital of France is", max_tokens=30).usage.total_tokens)
    chunks = list(
        oa.completions.create(model=chat.model_id, prompt="Paris is", max_tokens=30, stream=True, stream_options={"include_usage": True})
    )
    saw("completions", next(c.usage for c in reversed(chunks) if c.usage).total_tokens)

    saw("embeddings", oa.embeddings.create(model=embedding.model_id, input=["Paris", "the capital of France"]).usage.total_tokens)

    saw("responses", oa.responses.create(model=chat.model_id, input="What is the capital of France?").usage.total_tokens)
    with oa.responses.stream(model=chat.model_id, input="And of Italy?") as stream:
        saw("responses", stream.get_final_response().usage.total_tokens)

    plain = claude.messages.create(model=chat.model_id, max_tokens=100, messages=QUESTION)
    saw("messages", plain.usage.input_tokens + plain.usage.output_tokens)
    with claude.messages.stream(model=chat.model_id, max_tokens=100, messages=QUESTION) as stream:
        final = stream.get_final_message()
    saw("messages", final.usage.input_tokens + final.usage.output_tokens)

    saw("dashscope.generation", dashscope_usage(gateway, plaintext, chat.model_id, "message"))
    saw("dashscope.generation", dashscope_usage(gateway, plaintext, chat.model_id, "stream"))

    reranked = httpx.post(
        gateway.url + "/v1/rerank",
        json={"model": rerank.model_id, "query": "capital of France", "documents": ["Paris is in France", "Rome is in Italy"]},
        headers={"authorization": f"Bearer {plaintext}"},
        timeout=30,
    )
    assert reranked.status_code == 200, reranked.text
    saw("rerank", reranked.json()["usage"]["total_tokens"])

    events = UsageEvent.objects.filter(api_key=key)
    assert Counter(e.endpoint for e in events) == calls and all(e.status_code == 200 and not e.estimated for e in events)

    # The console's usage CSV, from the rollups (recomputed for the workspace: the incremental pass
    # may hold back events behind id gaps other tests left).
    usage_backfill(workspace=world.org, now=timezone.now() + timedelta(minutes=5))
    today = timezone.now().astimezone(world.org.tz).date()
    export = client_for(world.owner).get(f"/w/{world.org.slug}/usage/export.csv?start={today}&end={today}&key={key.public_id}")
    assert export.status_code == 200
    sections = csv_sections(list(csv.reader(io.StringIO(export.content.decode()))))
    days, by_api = sections["day"], sections["endpoint"]
    assert int(days[-1][days[0].index("total_tokens")]) == sum(seen.values())
    tokens_at, requests_at = by_api[0].index("total_tokens"), by_api[0].index("requests")
    assert {r[1]: int(r[tokens_at]) for r in by_api[1:-1]} == dict(seen)  # rows: API label, endpoint, …
    assert {r[1]: int(r[requests_at]) for r in by_api[1:-1]} == dict(calls)
