"""The completion cap: a limited key's request is held to what admission reserved (live processes,
PostgreSQL, Redis, the demo model writing long answers unless capped)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest

from lib.redis import redis_client
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, wait_for
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

LONG = {"demo_reply_tokens": "1500"}  # the demo writes 1,500 tokens unless max_tokens stops it
CAPPED = "x-gatehouse-max-tokens-capped"


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def post(server, key: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30)


def prompt_tokens(body: dict) -> int:
    """What the gateway counts for this prompt (the same function it uses)."""
    from gateway.tokenizer import count_chat

    return count_chat(body)


def yearly_counter(key) -> int:
    return int(redis_client().get(f"gatehouse:yearly:{key.public_id}:{datetime.now(UTC).year}") or 0)


def test_first_call_on_a_small_yearly_limit_is_capped_to_what_remains_not_refused(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, yearly_token_limit=30)
    body = chat_body(deployment.model_id, "hi", metadata=LONG)  # no max_tokens
    cap = 30 - prompt_tokens(body)

    response = post(gateway, plaintext, body)

    assert response.status_code == 200, response.text
    assert response.headers[CAPPED] == str(cap)
    assert response.json()["usage"]["completion_tokens"] == cap
    assert response.json()["choices"][0]["finish_reason"] == "length"
    event = UsageEvent.objects.get(api_key=key)
    assert event.completion_tokens == cap and event.total_tokens <= 30

    # Now (almost) nothing is left: the refusal says what remains and what the request needs.
    refused = post(gateway, plaintext, body)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    remaining = 30 - event.total_tokens
    assert f"yearly token limit is 30 tokens and {remaining} remain" in error["message"]
    assert f"needs at least {prompt_tokens(body) + 16}" in error["message"]
    assert "exceeded" not in error["message"]
    assert UsageEvent.objects.filter(api_key=key, total_tokens__gt=0).count() == 1
    # The refusal is on the key's record, with nothing counted (tests/test_gateway_refusals.py).
    assert UsageEvent.objects.filter(api_key=key, status_code=429, total_tokens=0).count() == 1
    assert wait_for(lambda: yearly_counter(key) == event.total_tokens)


def test_a_request_that_fits_keeps_its_own_max_tokens_and_gets_no_header(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True, tpm_limit=100_000)
    response = post(gateway, plaintext, chat_body(deployment.model_id, max_completion_tokens=700, metadata=LONG))
    assert response.status_code == 200
    assert CAPPED not in response.headers
    assert response.json()["usage"]["completion_tokens"] == 700


def test_a_limited_key_without_max_tokens_gets_the_default_cap_and_is_told(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=100_000)
    response = post(gateway, plaintext, chat_body(deployment.model_id, metadata=LONG))
    assert response.status_code == 200
    assert response.headers[CAPPED] == "1024"  # GATEWAY_DEFAULT_MAX_TOKENS
    assert response.json()["usage"]["completion_tokens"] == 1024


def test_a_key_without_limits_gets_no_cap(world, deployment, gateway):
    _, plaintext = make_key(world.org, all_models=True)
    response = post(gateway, plaintext, chat_body(deployment.model_id, metadata=LONG))
    assert response.status_code == 200
    assert CAPPED not in response.headers
    assert response.json()["usage"]["completion_tokens"] == 1500


def test_the_cap_is_lowered_to_the_tpm_window_room_per_choice_and_holds_for_streams(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=1000)
    body = chat_body(deployment.model_id, max_tokens=2000, stream=True, metadata=LONG)
    cap = 1000 - prompt_tokens(body)

    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {plaintext}"}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers[CAPPED] == str(cap)
        text = "".join(response.iter_text())
    chunks = [orjson.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    delivered = sum(1 for c in chunks for choice in c["choices"] if choice["delta"].get("content"))
    assert delivered == cap
    event = UsageEvent.objects.get(api_key=key)
    assert event.completion_tokens == cap and event.total_tokens <= 1000

    # The window is full: a request that cannot get even the floor is refused, and says why.
    refused = post(gateway, plaintext, chat_body(deployment.model_id, max_tokens=2000))
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    assert "1000 tokens per minute and" in message and "it asked for up to 2000 completion tokens" in message


def test_max_tokens_below_the_floor_is_admitted_when_exactly_that_fits(world, deployment, gateway):
    key, plaintext = make_key(world.org, all_models=True, yearly_token_limit=1000)
    body = chat_body(deployment.model_id, max_tokens=5, metadata=LONG)
    assert post(gateway, plaintext, body).json()["usage"]["completion_tokens"] == 5


def test_a_deployment_with_its_own_tokenizer_json_is_counted_with_it(world, demo, gateway, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from gateway.tokenizer import count_chat, counter_for

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["user hello"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", tokenizer_path=path
    )
    _, plaintext = make_key(world.org, all_models=True, yearly_token_limit=100)
    body = chat_body(deployment.model_id, "東京は日本の首都です。", metadata=LONG)
    own, default = count_chat(body, counter_for(path)), count_chat(body)
    assert own < default  # one word run + one mark, where cl100k sees 11 tokens

    response = post(gateway, plaintext, body)
    assert response.status_code == 200
    assert response.headers[CAPPED] == str(100 - own)
