"""The gateway's published overhead (Server-Timing, the overhead histogram) and production's
commit-after-answer metering (a gateway started with GATEWAY_USAGE_COMMIT_BEFORE_ANSWER=0)."""

from __future__ import annotations

import re

import httpx
import pytest

from gateway.metering import UsageWriter
from gateway.spool import Spool
from gateway.timing import Timing
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY, chat_body, metric, run_async, start_gateway, wait_for
from tests.usage_writer_support import FlakyDatabase, row
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

SERVER_TIMING = re.compile(r"^gateway;dur=(\d+\.\d\d), upstream;dur=(\d+\.\d\d)$")


@pytest.fixture(scope="module")
def answering_first(django_db_setup, django_db_blocker):
    """A gateway as production runs it: the usage commit is awaited after the answer went out."""
    server = start_gateway("gateway-answer-first", GATEWAY_USAGE_COMMIT_BEFORE_ANSWER="0")
    yield server
    server.stop()


def deployment_for(world, demo, **fields):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", **fields)


def timing_of(response: httpx.Response) -> tuple[float, float]:
    match = SERVER_TIMING.match(response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    return float(match.group(1)), float(match.group(2))


def test_every_answer_says_how_long_the_gateway_and_the_upstream_took(world, demo, gateway):
    deployment = deployment_for(world, demo)
    _, plaintext = make_key(world.org, all_models=True, tpm_limit=100_000, yearly_token_limit=10**9, ip_allowlist=["127.0.0.0/8"])
    auth = {"authorization": f"Bearer {plaintext}"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answered = client.post("/v1/chat/completions", json=chat_body(deployment.model_id), headers=auth)
        assert answered.status_code == 200
        own, upstream = timing_of(answered)
        assert upstream > 0  # the demo model was called: its time is not the gateway's
        assert own > 0

        # A stream gets the header with its head: what is known then (the upstream's head).
        with client.stream("POST", "/v1/chat/completions", json=chat_body(deployment.model_id, stream=True), headers=auth) as streamed:
            assert streamed.status_code == 200
            own, upstream = timing_of(streamed)
            assert upstream > 0 and own > 0
            assert b"data: [DONE]" in streamed.read()

        # Refusals and other answers that never reach a model: all gateway, no upstream.
        refused = client.post("/v1/chat/completions", json=chat_body(deployment.model_id), headers={"authorization": "Bearer nope"})
        assert refused.status_code == 401
        assert timing_of(refused)[1] == 0
        listed = client.get("/v1/models", headers=auth)
        assert listed.status_code == 200
        assert timing_of(listed)[1] == 0


def test_the_overhead_histogram_counts_each_answer_under_its_endpoint(world, demo, gateway):
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind="embedding"
    )
    _, plaintext = make_key(world.org, all_models=True)
    name = "gatehouse_gateway_overhead_seconds_count"
    before = metric(gateway, name, endpoint="embeddings"), metric(gateway, name, endpoint="models")
    with httpx.Client(base_url=gateway.url, timeout=30, headers={"authorization": f"Bearer {plaintext}"}) as client:
        for _ in range(3):
            assert client.post("/v1/embeddings", json={"model": deployment.model_id, "input": "hello"}).status_code == 200
        assert client.get("/v1/models").status_code == 200
    after = metric(gateway, name, endpoint="embeddings"), metric(gateway, name, endpoint="models")
    assert (after[0] - before[0], after[1] - before[1]) == (3, 1)
    # The buckets are fine enough to show a sub-millisecond overhead.
    assert metric(gateway, "gatehouse_gateway_overhead_seconds_bucket", endpoint="embeddings", le="0.0005") >= 0


def test_answering_before_the_commit_still_writes_exactly_one_event_per_request(world, demo, answering_first):
    deployment = deployment_for(world, demo)
    key, plaintext = make_key(world.org, all_models=True, tpm_limit=1_000_000, yearly_token_limit=10**9)
    auth = {"authorization": f"Bearer {plaintext}"}
    request_ids = []
    with httpx.Client(base_url=answering_first.url, timeout=30) as client:
        for stream in (False, True, False, True, False):
            with client.stream(
                "POST", "/v1/chat/completions", json=chat_body(deployment.model_id, stream=stream), headers=auth
            ) as response:
                assert response.status_code == 200
                body = response.read()
                request_ids.append(response.headers["x-request-id"])
                assert b"[DONE]" in body if stream else b'"usage"' in body

    def written():
        return sorted(UsageEvent.objects.filter(api_key=key).values_list("request_id", flat=True))

    assert wait_for(lambda: len(written()) >= len(request_ids))
    assert written() == sorted(request_ids)
    events = UsageEvent.objects.filter(api_key=key)
    assert all(e.status_code == 200 and e.total_tokens > 0 for e in events)
    assert sorted(e.streamed for e in events) == [False, False, False, True, True]


def test_a_degraded_writer_is_not_healthy_so_answers_wait_for_their_row(world, tmp_path):
    """meter() answers before the commit only while the writer's last batch went into the database."""
    key, _ = make_key(world.org)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # the spool cannot be created either
    database = FlakyDatabase(down=False)

    async def scenario() -> list:
        writer = UsageWriter(run_db=database.run, spool=Spool(blocker / "spool", database_identity="x"))
        writer.use_psycopg = False
        writer.start()
        seen = [writer.healthy]
        for i, away in enumerate((False, True, False)):
            database.down = away
            try:
                await writer.submit(row(world, key, f"req_h{i}"))
            except Exception:
                pass
            seen.append(writer.healthy)
        await writer.stop()
        return seen

    assert run_async(scenario()) == [True, True, False, True]
    assert sorted(UsageEvent.objects.values_list("request_id", flat=True)) == ["req_h0", "req_h2"]


def test_stages_add_up_and_only_the_upstream_stages_count_as_upstream():
    timing = Timing(cpu=True)
    start = timing.origin
    timing.mark("auth", start + 0.001)
    timing.mark("upstream_head", start + 0.004)
    timing.mark("upstream_body", start + 0.005)
    timing.finished = timing.mark("send", start + 0.0055)
    assert timing.stage_ms() == {"auth": 1.0, "upstream_head": 3.0, "upstream_body": 1.0, "send": 0.5}
    assert round(timing.upstream, 6) == 0.004
    assert round(timing.gateway_seconds(), 6) == 0.0015
    assert set(timing.cpu_ms()) == {"auth", "upstream_head", "upstream_body", "send"}
