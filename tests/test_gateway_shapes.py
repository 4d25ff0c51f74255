"""Embeddings, completions and rerank through the live gateway with the real clients: scope,
limits and metering hold per endpoint (live gateway, demo model, PostgreSQL, Redis)."""

from __future__ import annotations

import base64
import struct
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.errors import GatewayError
from gateway.shapes import completions, embeddings, rerank
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures


@pytest.fixture
def chat_model(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


@pytest.fixture
def embedding_model(world, demo):
    return make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, kind="embedding", input_price="0.10", output_price="0"
    )


@pytest.fixture
def rerank_model(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, kind="rerank", output_price="0")


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.url + "/v1", max_retries=0, timeout=20)


def test_openai_sdk_embeddings_base64_by_default_float_dimensions_and_tokens(world, embedding_model, gateway):
    key, plaintext = make_key(world.org, deployments=[embedding_model])
    client = sdk(gateway, plaintext)

    # The SDK asks for base64 and decodes it: the vector arrives as floats of unit length.
    default = client.embeddings.create(model=embedding_model.model_id, input="The quick brown fox")
    vector = default.data[0].embedding
    assert len(vector) == 16 and abs(sum(v * v for v in vector) - 1) < 1e-5
    assert default.model == embedding_model.model_id
    assert (default.usage.prompt_tokens, default.usage.total_tokens) == (4, 4)

    floats = client.embeddings.create(model=embedding_model.model_id, input=["a b", "c"], encoding_format="float", dimensions=8)
    assert [len(d.embedding) for d in floats.data] == [8, 8]
    assert floats.usage.prompt_tokens == 3

    tokens = client.embeddings.create(model=embedding_model.model_id, input=[[1, 2, 3], [4, 5]])
    assert tokens.usage.prompt_tokens == 5

    raw = httpx.post(
        gateway.url + "/v1/embeddings",
        json={"model": embedding_model.model_id, "input": "x", "encoding_format": "base64", "dimensions": 4},
        headers={"authorization": f"Bearer {plaintext}"},
    ).json()
    decoded = struct.unpack("<4f", base64.b64decode(raw["data"][0]["embedding"]))
    assert abs(sum(v * v for v in decoded) - 1) < 1e-5

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.prompt_tokens, e.completion_tokens, e.status_code) for e in events] == [
        ("embeddings", 4, 0, 200),
        ("embeddings", 3, 0, 200),
        ("embeddings", 5, 0, 200),
        ("embeddings", 1, 0, 200),
    ]
    assert events[0].cost == Decimal("0.0000004")  # 4 tokens at 0.10 per million, input only


def test_langchain_openai_embeddings(world, embedding_model, gateway):
    from langchain_openai import OpenAIEmbeddings

    key, plaintext = make_key(world.org, deployments=[embedding_model])
    emb = OpenAIEmbeddings(
        model=embedding_model.model_id, api_key=plaintext, base_url=gateway.url + "/v1", check_embedding_ctx_length=False, max_retries=0
    )
    vectors = emb.embed_documents(["alpha beta", "gamma"])
    assert [len(v) for v in vectors] == [16, 16]
    assert len(emb.embed_query("delta")) == 16
    assert UsageEvent.objects.filter(api_key=key, endpoint="embeddings", status_code=200).count() == 2


def test_kinds_are_kept_apart_and_models_lists_them(world, chat_model, embedding_model, rerank_model, gateway):
    key, plaintext = make_key(world.org, all_models=True)
    client = sdk(gateway, plaintext)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=embedding_model.model_id, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "unsupported_model" and "/v1/embeddings" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=chat_model.model_id, input="hi")

    listed = httpx.get(gateway.url + "/v1/models", headers={"authorization": f"Bearer {plaintext}"}).json()["data"]
    kinds = {m["id"]: m["kind"] for m in listed}
    assert kinds == {chat_model.model_id: "chat", embedding_model.model_id: "embedding", rerank_model.model_id: "rerank"}
    refused = UsageEvent.objects.filter(api_key=key).order_by("created_at")
    assert [(e.endpoint, e.status_code, e.total_tokens) for e in refused] == [("chat.completions", 400, 0), ("embeddings", 400, 0)]


def test_completions_streamed_and_not_are_metered_from_the_upstream_usage(world, chat_model, gateway):
    key, plaintext = make_key(world.org, deployments=[chat_model])
    client = sdk(gateway, plaintext)
    done = client.completions.create(model=chat_model.model_id, prompt="Say hi", max_tokens=50)
    assert done.choices[0].text.startswith("Hello! I am the Gatehouse demo model.")
    assert done.model == chat_model.model_id

    text, usage = "", None
    for chunk in client.completions.create(model=chat_model.model_id, prompt="Say hi", stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage:
            usage = chunk.usage
    assert text == done.choices[0].text
    assert (usage.prompt_tokens, usage.completion_tokens) == (done.usage.prompt_tokens, done.usage.completion_tokens)

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.streamed, e.estimated) for e in events] == [("completions", False, False), ("completions", True, False)]
    assert sum(e.total_tokens for e in events) == done.usage.total_tokens + usage.total_tokens


def test_rerank_passes_through_and_meters_input_tokens(world, rerank_model, gateway):
    key, plaintext = make_key(world.org, deployments=[rerank_model])
    response = httpx.post(
        gateway.url + "/v1/rerank",
        json={
            "model": rerank_model.model_id,
            "query": "capital of France",
            "documents": ["Paris is the capital of France", "Bananas"],
            "top_n": 1,
        },
        headers={"authorization": f"Bearer {plaintext}"},
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert [r["index"] for r in data["results"]] == [0] and data["model"] == rerank_model.model_id
    event = UsageEvent.objects.get(api_key=key)
    assert (event.endpoint, event.prompt_tokens, event.completion_tokens) == ("rerank", data["usage"]["total_tokens"], 0)


def test_embedding_tpm_limit_refuses_with_the_openai_rate_limit_error(world, embedding_model, gateway):
    key, plaintext = make_key(world.org, deployments=[embedding_model], tpm_limit=40)
    client = sdk(gateway, plaintext)
    client.embeddings.create(model=embedding_model.model_id, input="x" * 60)  # 8 tokens by cl100k
    client.embeddings.create(model=embedding_model.model_id, input="x" * 60)
    with pytest.raises(openai.RateLimitError):
        # 51 tokens by cl100k, more than the 40 a minute: never fits
        client.embeddings.create(model=embedding_model.model_id, input="The quick brown fox jumps over the lazy dog. " * 5)
    assert UsageEvent.objects.filter(api_key=key, status_code=200, endpoint="embeddings").count() == 2


# ---- translation tables (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, body, param",
    [
        (embeddings, {"model": "m"}, "input"),
        (embeddings, {"model": "m", "input": []}, "input"),
        (embeddings, {"model": "m", "input": [1, "a"]}, "input"),
        (embeddings, {"model": "m", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        (embeddings, {"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
        (embeddings, {"input": "a"}, "model"),
        (embeddings, {"model": "m", "input": "a", "base_url": "http://x"}, "base_url"),
        (completions, {"model": "m"}, "prompt"),
        (completions, {"model": "m", "prompt": "a", "max_tokens": -1}, "max_tokens"),
        (completions, {"model": "m", "prompt": "a", "stream": "yes"}, "stream"),
        (rerank, {"model": "m", "documents": ["a"]}, "query"),
        (rerank, {"model": "m", "query": "q", "documents": []}, "documents"),
        (rerank, {"model": "m", "query": "q", "documents": [{"title": "no text"}]}, "documents.[0]"),
    ],
)
def test_bad_bodies_name_the_parameter(shape, body, param):
    with pytest.raises(GatewayError) as caught:
        shape.SHAPE.parse(body, True)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    "body, estimate",
    [
        ({"model": "m", "input": "abcdef"}, 3),
        ({"model": "m", "input": ["abc", "abcdef"]}, 5),
        ({"model": "m", "input": [1, 2, 3]}, 3),
        ({"model": "m", "input": [[1, 2], [3]]}, 3),
    ],
)
def test_embedding_inputs_are_estimated_and_generate_nothing(body, estimate):
    call = embeddings.SHAPE.parse(body, True)
    assert (call.prompt_estimate, call.completion_budget, call.stream) == (estimate, 0, False)


@pytest.mark.parametrize(
    "data, tokens",
    [
        ({"usage": {"total_tokens": 7}}, (7, 0)),
        ({"usage": {"prompt_tokens": 5, "total_tokens": 7}}, (5, 0)),
        ({"meta": {"billed_units": {"input_tokens": 9, "search_units": 1}}}, (9, 0)),
        ({"results": []}, None),
    ],
)
def test_rerank_usage_from_vllm_jina_and_cohere_answers(data, tokens):
    assert rerank.SHAPE.usage(data) == tokens


# ---- deployment kind -------------------------------------------------------------------------


def test_embedding_deployments_have_an_input_price_only(world):
    from django.core.exceptions import ValidationError

    from console.audit import Actor
    from deployments.services import deployment_create, deployment_price_set

    actor = Actor.system("test")
    with pytest.raises(ValidationError) as caught:
        deployment_create(
            workspace=world.org,
            actor=actor,
            name="E",
            model_id="emb-1",
            kind="embedding",
            upstream_base_url="http://10.0.0.5:8000/v1",
            output_per_million="1",
        )
    assert "output_per_million" in caught.value.message_dict
    deployment = deployment_create(
        workspace=world.org,
        actor=actor,
        name="E",
        model_id="emb-1",
        kind="embedding",
        upstream_base_url="http://10.0.0.5:8000/v1",
        input_per_million="0.02",
    )
    assert deployment.kind == "embedding"
    with pytest.raises(ValidationError):
        deployment_price_set(deployment=deployment, actor=actor, input_per_million="0.02", output_per_million="0.5")
    with pytest.raises(ValidationError):
        deployment_create(
            workspace=world.org, actor=actor, name="X", model_id="x-1", kind="vision", upstream_base_url="http://10.0.0.5:8000/v1"
        )


def test_create_deployment_command_takes_a_kind(world):
    from io import StringIO

    from django.core.management import call_command

    from deployments.models import Deployment

    out = StringIO()
    call_command(
        "create_deployment",
        workspace=world.org.slug,
        name="Embed",
        model="emb-cmd",
        upstream_url=["http://10.0.0.5:8000/v1"],
        kind="embedding",
        stdout=out,
    )
    assert "kind:      Embedding" in out.getvalue()
    assert Deployment.objects.get(model_id="emb-cmd").kind == "embedding"
