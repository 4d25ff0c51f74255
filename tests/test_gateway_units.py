"""Pure pieces of the gateway: the in-process limiter (embedded default), the SSE relay, validation."""

from __future__ import annotations

import orjson
import pytest
import time_machine

from gateway.errors import GatewayError
from gateway.limits import ADMIT, NEEDS_SEED, QUOTA_REFUSED, TPM_REFUSED, LocalLimiter
from gateway.proxy import SseRelay
from gateway.validation import validate_chat
from tests.gateway_support import run_async


def admit(limiter, estimate, *, tpm=None, yearly=None, seed=-1):
    return run_async(
        limiter.admit(api_key_id=1, public_id="k", year=2026, estimate=estimate, tpm_limit=tpm, yearly_limit=yearly, seed=seed)
    )


def test_local_tpm_window_admits_up_to_the_limit_and_slides():
    limiter = LocalLimiter()
    with time_machine.travel(1_000_000, tick=False) as clock:
        assert [admit(limiter, 400, tpm=1000).outcome for _ in range(3)] == [ADMIT, ADMIT, TPM_REFUSED]
        clock.shift(30)
        refused = admit(limiter, 400, tpm=1000)
        assert (refused.outcome, refused.retry_after) == (TPM_REFUSED, 30)  # the first bucket leaves the window in 30 s
        clock.shift(30)
        assert admit(limiter, 400, tpm=1000).outcome == ADMIT


def test_local_settle_returns_unused_tokens_and_release_returns_all():
    limiter = LocalLimiter()
    with time_machine.travel(1_000_000, tick=False):
        first = admit(limiter, 600, tpm=1000)
        assert admit(limiter, 600, tpm=1000).outcome == TPM_REFUSED
        run_async(limiter.settle(first.reservation, 100))
        second = admit(limiter, 600, tpm=1000)
        assert second.outcome == ADMIT
        run_async(limiter.settle(second.reservation, 0))
        run_async(limiter.settle(second.reservation, 0))  # settling twice changes nothing
        assert sum(limiter.buckets["gatehouse:tpm:k"].values()) == 100


def test_local_yearly_limit_is_seeded_then_reserved():
    limiter = LocalLimiter()
    assert admit(limiter, 100, yearly=1000).outcome == NEEDS_SEED
    assert admit(limiter, 100, yearly=1000, seed=850).outcome == ADMIT
    assert admit(limiter, 100, yearly=1000).outcome == QUOTA_REFUSED
    assert admit(limiter, 50, yearly=1000).outcome == ADMIT


def test_oversized_request_is_refused_with_a_full_minute():
    decision = admit(LocalLimiter(), 2000, tpm=1000)
    assert (decision.outcome, decision.retry_after) == (TPM_REFUSED, 60)


def sse(obj) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_relay_strips_usage_unless_asked_rewrites_model_and_holds_done():
    chunk = {"model": "upstream", "choices": [{"index": 0, "delta": {"content": "Hello"}}], "usage": None}
    usage = {"model": "upstream", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
    stream = sse(chunk) + sse(usage) + b"data: [DONE]\n\n"

    hidden = SseRelay(client_model="client", upstream_model="upstream", client_wants_usage=False)
    out = hidden.feed(stream[:7]) + hidden.feed(stream[7:])  # split mid-event
    events = [orjson.loads(line[6:]) for line in out.split(b"\n\n") if line]
    assert [e["model"] for e in events] == ["client"]
    assert hidden.state.usage["total_tokens"] == 4 and hidden.state.saw_done
    assert b"[DONE]" not in out

    shown = SseRelay(client_model="client", upstream_model="upstream", client_wants_usage=True)
    events = [orjson.loads(line[6:]) for line in shown.feed(stream).split(b"\n\n") if line]
    assert events[-1]["usage"]["total_tokens"] == 4


def test_relay_counts_delivered_text_for_estimates_and_accepts_crlf():
    relay = SseRelay(client_model="m", upstream_model="m", client_wants_usage=False)
    relay.feed(b"data: " + orjson.dumps({"choices": [{"delta": {"content": "abcdefgh"}}]}) + b"\r\n\r\n")
    relay.feed(b": keep-alive comment\n\n")
    assert relay.state.delivered_chunks == 1
    assert relay.estimated_completion_tokens() == 2


@pytest.mark.parametrize(
    "body",
    [
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "temperature": 0,
            "top_p": 1,
            "n": 4,
            "presence_penalty": -2,
            "stop": ["a", "b"],
            "seed": 7,
            "stream": True,
            "stream_options": {"include_usage": True},
            "some_future_field": {"x": 1},
        },
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1.999, "stop": "END", "max_tokens": 1},
    ],
)
def test_valid_bodies_pass_untouched(body):
    assert validate_chat(dict(body)) == body


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages.[0]"),
        ({"model": "m", "messages": [{"role": "user"}], "temperature": True}, "temperature"),
        ({"model": "m", "messages": [{"role": "user"}], "n": 1.0}, "n"),
        ({"model": "m", "messages": [{"role": "user"}], "stop": ["a", 1]}, "stop"),
        ({"model": "m", "messages": [{"role": "user"}], "base_url": "http://x"}, "base_url"),
    ],
)
def test_invalid_bodies_name_the_parameter(body, param):
    with pytest.raises(GatewayError) as caught:
        validate_chat(body)
    assert (caught.value.status, caught.value.param) == (400, param)
