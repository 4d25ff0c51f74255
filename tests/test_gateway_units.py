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


def admit(limiter, prompt, *, tpm=None, yearly=None, seed=-1, completion=0, choices=1, floor=0):
    return run_async(
        limiter.admit(
            api_key_id=1,
            public_id="k",
            year=2026,
            prompt=prompt,
            completion=completion,
            choices=choices,
            floor=floor,
            tpm_limit=tpm,
            yearly_limit=yearly,
            seed=seed,
        )
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


async def _grants_up_to_what_the_limits_leave(limiter, public_id: str, window) -> None:
    async def admit(prompt, **limits):
        kwargs = dict(api_key_id=1, public_id=public_id, year=2026, prompt=prompt, tpm_limit=None, yearly_limit=None, floor=16)
        return await limiter.admit(**{**kwargs, **limits})

    # A first call on a small yearly limit, nothing used: capped to what remains, not refused.
    small = await admit(9, yearly_limit=30, seed=0, completion=1024)
    assert (small.outcome, small.granted, small.reservation.estimate) == (ADMIT, 21, 30)
    refused = await admit(9, yearly_limit=30, completion=1024)
    assert (refused.outcome, refused.remaining) == (QUOTA_REFUSED, 0)

    # TPM: the grant is per choice, and never more than asked.
    assert (await admit(100, tpm_limit=1000, completion=200, choices=2)).granted == 200
    wide = await admit(61, tpm_limit=1000, completion=500, choices=2)  # 439 left after the prompt
    assert (wide.outcome, wide.granted, wide.reservation.estimate) == (ADMIT, 219, 499)
    assert await window() == 999
    below_floor = await admit(0, tpm_limit=1000, completion=500)
    assert (below_floor.outcome, below_floor.remaining) == (TPM_REFUSED, 1)
    # A client that asks for less than the floor only needs what it asked for.
    tiny = await admit(0, tpm_limit=1000, completion=1)
    assert (tiny.outcome, tiny.granted) == (ADMIT, 1)
    assert await window() == 1000


def test_local_admission_grants_up_to_what_the_limits_leave_and_refuses_below_the_floor():
    limiter = LocalLimiter()

    async def window():
        return sum(limiter.buckets["gatehouse:tpm:k"].values())

    with time_machine.travel(1_000_000, tick=False):
        run_async(_grants_up_to_what_the_limits_leave(limiter, "k", window))


def test_redis_admission_script_grants_the_same_as_the_local_limiter(settings):
    import uuid

    from gateway.limits import RedisLimiter
    from gateway.resp import PipelinedRedis

    public_id = f"unit-{uuid.uuid4()}"

    async def run():
        redis = PipelinedRedis(settings.REDIS_URL)

        async def window():
            values = await redis.execute("HVALS", f"gatehouse:tpm:{public_id}")
            return sum(int(v) for v in values)

        try:
            await _grants_up_to_what_the_limits_leave(RedisLimiter(redis), public_id, window)
        finally:
            await redis.execute("DEL", f"gatehouse:tpm:{public_id}", f"gatehouse:yearly:{public_id}:2026")
            await redis.aclose()

    with time_machine.travel(1_000_000, tick=False):
        run_async(run())


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


@pytest.mark.parametrize(
    ("sent", "asked", "granted", "upstream", "header"),
    [
        ({}, None, 300, {"max_tokens": 300}, b"300"),
        ({"max_tokens": 500}, 500, 500, {"max_tokens": 500}, None),
        ({"max_completion_tokens": 500}, 500, 200, {"max_completion_tokens": 200}, b"200"),
        ({"max_tokens": 900, "max_completion_tokens": 400}, 400, 400, {"max_tokens": 400, "max_completion_tokens": 400}, None),
    ],
)
def test_the_cap_goes_upstream_in_the_field_the_client_used(sent, asked, granted, upstream, header):
    from gateway.limits import Admission
    from gateway.shapes import chat

    payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **sent}
    call = chat.parse(payload, True)
    entry = type("Entry", (), {"tpm_limit": 1000, "yearly_limit": None, "budget_blocks": False})()
    admission = Admission.of(call, entry)
    assert admission.asked == asked
    assert admission.apply_cap(call.body, chat.SHAPE.cap_param, granted) == header
    assert {k: v for k, v in call.body.items() if k in ("max_tokens", "max_completion_tokens")} == upstream


def test_local_failed_authentication_budget_counts_failures_only_and_resets_each_minute():
    from gateway.authlimit import AuthFailures

    guard = AuthFailures(limit=3)
    with time_machine.travel(1_000_000, tick=False) as clock:
        assert [run_async(guard.claim("10.0.0.1")) for _ in range(3)] == [0, 0, 0]
        guard.release("10.0.0.1")  # that lookup found a key
        assert run_async(guard.claim("10.0.0.1")) == 0
        assert run_async(guard.claim("10.0.0.1")) == 60  # over the budget: retry when the window ends
        assert run_async(guard.claim("10.0.0.2")) == 0  # per address
        clock.shift(60)
        assert run_async(guard.claim("10.0.0.1")) == 0
