"""The openai SDK's exceptions, unchanged, for the shapes beside chat completions: embeddings,
Responses (plain and streamed) and legacy completions each answer a bad key, an address outside the
allowlist, a model out of scope, a bad parameter and an exhausted limit so that the SDK raises the
exception (and error code) it raises against OpenAI itself. Anthropic Messages and DashScope have
their own clients' tests (tests/test_gateway_messages.py, tests/test_gateway_dashscope.py)."""

from __future__ import annotations

import openai
import pytest

from keys.tokens import generate
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

LONG = "The quick brown fox jumps over the lazy dog. " * 40  # 401 tokens: more than a limit of 100


def call(shape: str, client: openai.OpenAI, model: str, text: str = "Say hi", **extra):
    if shape == "embeddings":
        return client.embeddings.create(model=model, input=text, **extra)
    if shape == "completions":
        return client.completions.create(model=model, prompt=text, max_tokens=10, **extra)
    if shape == "responses-stream":
        with client.responses.stream(model=model, input=text, max_output_tokens=60, **extra) as stream:
            return stream.get_final_response()
    return client.responses.create(model=model, input=text, max_output_tokens=60, **extra)


BAD_PARAMETER = {
    "embeddings": {"dimensions": 0},
    "completions": {"temperature": 3},
    "responses": {"temperature": 3},
    "responses-stream": {"temperature": 3},
}
SHAPES = list(BAD_PARAMETER)


@pytest.fixture
def deployments(world, demo):
    make = lambda kind: make_deployment(  # noqa: E731
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind=kind
    )
    return {"chat": make("chat"), "embedding": make("embedding")}


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=gateway.url + "/v1", max_retries=0, timeout=20)


@pytest.mark.parametrize("shape", SHAPES)
def test_openai_sdk_exceptions_for_each_shape(world, deployments, gateway, demo, shape):
    deployment = deployments["embedding" if shape == "embeddings" else "chat"]
    model = deployment.model_id
    _, plaintext = make_key(world.org, deployments=[deployment])
    assert call(shape, sdk(gateway, plaintext), model)  # the shape answers this key

    with pytest.raises(openai.AuthenticationError) as caught:
        call(shape, sdk(gateway, generate()), model)
    assert caught.value.code == "invalid_api_key"

    _, fenced = make_key(world.org, deployments=[deployment], ip_allowlist=["10.0.0.0/8"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        call(shape, sdk(gateway, fenced), model)
    assert caught.value.code == "ip_not_allowed"

    foreign = make_deployment(world.other_org, base_url=demo.url + "/v1", kind=deployment.kind)
    for out_of_scope in ("no-such-model", foreign.model_id):
        with pytest.raises(openai.NotFoundError) as caught:
            call(shape, sdk(gateway, plaintext), out_of_scope)
        assert caught.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as caught:
        call(shape, sdk(gateway, plaintext), model, **BAD_PARAMETER[shape])
    assert caught.value.code == "invalid_value" and caught.value.param == next(iter(BAD_PARAMETER[shape]))

    _, small_tpm = make_key(world.org, deployments=[deployment], tpm_limit=100)
    with pytest.raises(openai.RateLimitError) as caught:
        call(shape, sdk(gateway, small_tpm), model, LONG)
    assert caught.value.code == "rate_limit_exceeded"
    assert int(caught.value.response.headers["retry-after"]) >= 1

    _, small_year = make_key(world.org, deployments=[deployment], yearly_token_limit=100)
    with pytest.raises(openai.RateLimitError) as caught:
        call(shape, sdk(gateway, small_year), model, LONG)
    assert (caught.value.code, caught.value.type) == ("insufficient_quota", "insufficient_quota")
