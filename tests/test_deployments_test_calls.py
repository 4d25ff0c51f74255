"""Console test calls: service rules (enqueue on commit, idempotent claim, failures, ephemeral
credential, sweep), the Test call tab's roles, and one end to end run with a real Celery worker,
the live gateway and the demo model."""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import time_machine
from celery.app.routes import MapRoute
from django.urls import reverse
from django.utils import timezone

from console.audit import Actor
from deployments import console_calls as svc
from deployments import tasks
from deployments.models import TestCall, TestCallStatus
from keys.models import ApiKey, ApiKeyKind, ApiKeySecret
from tests import gateway_support
from tests.factories import make_deployment
from tests.gateway_support import UPSTREAM_KEY
from tests.worker_processes import Worker, wait_for
from usage.models import UsageEvent

demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures
SYSTEM = Actor.system("tests")
QUESTION = "What is the capital of France?"
ANSWER = "Hello! I am the Gatehouse demo model. You said: What is the capital of France?"


@pytest.fixture
def enqueued(monkeypatch):
    """What run_test_call was asked to send (the broker is the process boundary)."""
    sent: list[int] = []

    def apply_async(args, expires):
        assert expires == svc.QUEUED_TOO_LONG.total_seconds()  # a late worker never runs a call the console gave up on
        sent.append(*args)

    monkeypatch.setattr(tasks.run_test_call, "apply_async", apply_async)
    return sent


def dead_deployment(world):
    return make_deployment(world.org, base_url="http://127.0.0.1:9/v1", model_id="@acme/dead")


def create(world, deployment, **kwargs) -> TestCall:
    return svc.create_test_call(deployment=deployment, workspace=world.org, actor=SYSTEM, prompt=QUESTION, **kwargs)


@pytest.mark.django_db
def test_create_enqueues_the_call_id_only_after_commit(world, enqueued, django_capture_on_commit_callbacks):
    deployment = dead_deployment(world)
    with django_capture_on_commit_callbacks() as callbacks:
        call = create(world, deployment, system_prompt="Be brief.", max_tokens=20)
        assert enqueued == []  # nothing is sent while the row may still roll back
    assert len(callbacks) == 1
    callbacks[0]()
    assert enqueued == [call.id]
    call.refresh_from_db()
    assert (call.status, call.workspace_id, call.max_tokens, call.stream) == (TestCallStatus.QUEUED, world.org.id, 20, True)


@pytest.mark.django_db
def test_blank_prompt_is_refused_and_nothing_is_enqueued(world, enqueued, django_capture_on_commit_callbacks):
    from django.core.exceptions import ValidationError

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(ValidationError):
        svc.create_test_call(deployment=dead_deployment(world), workspace=world.org, actor=SYSTEM, prompt="   ")
    assert enqueued == [] and not TestCall.objects.exists()


@pytest.mark.django_db
def test_claim_is_idempotent_and_a_second_delivery_changes_nothing(world, enqueued):
    call = create(world, dead_deployment(world))
    assert svc.claim_test_call(call.id) is True
    assert svc.claim_test_call(call.id) is False
    call.refresh_from_db()
    assert call.status == TestCallStatus.RUNNING and call.started_at is not None
    assert svc.execute_test_call(call.id) is None  # already claimed: the redelivered task returns without calling anything
    call.refresh_from_db()
    assert call.status == TestCallStatus.RUNNING and call.error == ""
    assert not ApiKey.objects.filter(kind=ApiKeyKind.TEST_CALL).exists()


@pytest.mark.django_db
def test_gateway_unreachable_fails_the_call_with_a_clear_error(world, enqueued, settings):
    settings.GATEWAY_INTERNAL_URL = "http://127.0.0.1:9"  # nothing listens on the discard port
    call = create(world, dead_deployment(world))
    svc.execute_test_call(call.id)
    call.refresh_from_db()
    assert call.status == TestCallStatus.FAILED and call.finished_at is not None
    assert call.error == "Could not connect to the gateway at http://127.0.0.1:9/v1/chat/completions."
    assert not ApiKeySecret.objects.filter(api_key__kind=ApiKeyKind.TEST_CALL).exists()  # the one-call secret is gone


class _ErrorHandler(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        _ErrorHandler.seen.append({"auth": self.headers["authorization"], "body": body})
        payload = json.dumps({"error": {"message": "This key may not call this model.", "type": "permission_error"}}).encode()
        self.send_response(403)
        self.send_header("content-type", "application/json")
        self.send_header("x-request-id", "req-403")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.mark.django_db
def test_error_status_fails_with_the_openai_error_message_and_an_ephemeral_secret(world, enqueued, settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        settings.GATEWAY_INTERNAL_URL = f"http://127.0.0.1:{server.server_address[1]}"
        deployment = dead_deployment(world)
        call = create(world, deployment, temperature="0.5")
        svc.execute_test_call(call.id)
    finally:
        server.shutdown()
    call.refresh_from_db()
    assert call.status == TestCallStatus.FAILED
    assert call.error == "The gateway answered HTTP 403: This key may not call this model."
    assert call.request_id == "req-403"
    sent = _ErrorHandler.seen[-1]
    assert sent["body"]["model"] == deployment.model_id and sent["body"]["temperature"] == 0.5
    assert sent["body"]["stream_options"] == {"include_usage": True}
    plaintext = sent["auth"].removeprefix("Bearer ")
    key = ApiKey.objects.get(workspace=world.org, kind=ApiKeyKind.TEST_CALL)
    assert key.all_models
    assert not key.secrets.exists()  # minted for this call only, deleted after it
    assert plaintext not in json.dumps(list(TestCall.objects.values()), default=str)


@pytest.mark.django_db
def test_sweep_fails_calls_stuck_in_running_or_streaming_only(world, enqueued):
    deployment = dead_deployment(world)
    old = timezone.now() - timedelta(minutes=30)
    stuck = [create(world, deployment) for _ in range(2)]
    TestCall.objects.filter(id=stuck[0].id).update(status=TestCallStatus.RUNNING, started_at=old)
    TestCall.objects.filter(id=stuck[1].id).update(status=TestCallStatus.STREAMING, started_at=old)
    fresh = create(world, deployment)
    TestCall.objects.filter(id=fresh.id).update(status=TestCallStatus.RUNNING, started_at=timezone.now())
    queued = create(world, deployment)

    assert svc.sweep_test_calls() == 2
    statuses = dict(TestCall.objects.values_list("id", "status"))
    assert statuses == {stuck[0].id: "failed", stuck[1].id: "failed", fresh.id: "running", queued.id: "queued"}
    assert "worker stopped" in TestCall.objects.get(id=stuck[0].id).error
    assert svc.sweep_test_calls() == 0


@pytest.mark.django_db
def test_sweep_fails_calls_no_worker_picked_up_and_a_late_worker_runs_nothing(world, enqueued):
    deployment = dead_deployment(world)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        waiting = create(world, deployment)
        running = create(world, deployment)
        assert svc.claim_test_call(running.id)

    with time_machine.travel(start + svc.QUEUED_TOO_LONG - timedelta(seconds=1), tick=False):
        assert svc.sweep_test_calls() == 0
    assert TestCall.objects.get(id=waiting.id).status == TestCallStatus.QUEUED

    with time_machine.travel(start + svc.QUEUED_TOO_LONG + timedelta(seconds=1), tick=False):
        assert svc.sweep_test_calls() == 1
    waiting.refresh_from_db()
    assert waiting.status == TestCallStatus.FAILED and waiting.finished_at is not None
    assert waiting.error.startswith("No worker picked this up within 2 minutes — is the Celery worker running?")
    assert TestCall.objects.get(id=running.id).status == TestCallStatus.RUNNING  # running calls get STUCK_AFTER
    assert svc.execute_test_call(waiting.id) is None  # the worker comes back: the claim refuses a failed call

    with time_machine.travel(start + svc.STUCK_AFTER + timedelta(seconds=1), tick=False):
        assert svc.sweep_test_calls() == 1
    assert TestCall.objects.get(id=running.id).error == "The worker stopped before this test call finished. Run it again."


@pytest.mark.django_db
def test_polling_a_call_nobody_picked_up_reports_it_even_without_a_worker_to_sweep(world, client_for, enqueued):
    deployment = dead_deployment(world)
    client = client_for(world.developer)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        call = create(world, deployment)
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        waiting = client.get(poll_url(call), HTTP_HX_REQUEST="true")
    assert waiting.status_code == 200 and "Waiting for the worker" in waiting.content.decode()

    with time_machine.travel(start + svc.QUEUED_TOO_LONG + timedelta(seconds=1), tick=False):
        response = client.get(poll_url(call), HTTP_HX_REQUEST="true")

    assert response.status_code == 286  # polling stops
    assert "is the Celery worker running?" in response.content.decode()
    assert TestCall.objects.get(id=call.id).status == TestCallStatus.FAILED


# --- the Test call tab -------------------------------------------------------------------------------------


def run_url(deployment, ws="acme"):
    return reverse("test_call_run", kwargs={"ws": ws, "deployment": deployment.public_id})


def poll_url(call, ws="acme"):
    return reverse("test_call_poll", kwargs={"ws": ws, "deployment": call.deployment.public_id, "call": call.public_id})


def tab_url(deployment, ws="acme"):
    return reverse("deployment_detail", kwargs={"ws": ws, "deployment": deployment.public_id}) + "?tab=test"


@pytest.mark.django_db
def test_viewer_sees_history_but_cannot_run(world, client_for, enqueued, django_capture_on_commit_callbacks):
    deployment = dead_deployment(world)
    create(world, deployment, system_prompt="x")
    client = client_for(world.viewer)
    page = client.get(tab_url(deployment)).content.decode()
    assert 'data-testid="test-call-history"' in page and 'data-testid="test-call-form"' not in page
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(run_url(deployment), {"prompt": "hi", "stream": "on"})
    assert response.status_code == 403
    assert TestCall.objects.count() == 1 and enqueued == []


@pytest.mark.django_db
def test_outsider_gets_404_on_run_and_poll(world, client_for, enqueued):
    deployment = dead_deployment(world)
    call = create(world, deployment)
    client = client_for(world.outsider)
    assert client.post(run_url(deployment), {"prompt": "hi"}).status_code == 404
    assert client.get(poll_url(call)).status_code == 404


@pytest.mark.django_db
def test_developer_runs_a_call_and_bad_input_changes_nothing(world, client_for, enqueued, django_capture_on_commit_callbacks):
    deployment = dead_deployment(world)
    client = client_for(world.developer)
    assert 'data-testid="test-call-form"' in client.get(tab_url(deployment)).content.decode()
    bad = client.post(run_url(deployment), {"prompt": "hi", "temperature": "7"})
    assert bad.status_code == 400 and "Must be below 2" in bad.content.decode()
    assert not TestCall.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(run_url(deployment), {"prompt": "hi", "max_tokens": "5"}, HTTP_HX_REQUEST="true")
    call = TestCall.objects.get()
    assert response.status_code == 200 and enqueued == [call.id]
    assert (call.created_by, call.stream, call.max_tokens) == (world.developer, False, 5)
    assert poll_url(call) in response.content.decode()  # the fragment polls
    assert client.get(poll_url(call), HTTP_HX_REQUEST="true").status_code == 200
    TestCall.objects.filter(id=call.id).update(status=TestCallStatus.FAILED, error="boom")
    done = client.get(poll_url(call), HTTP_HX_REQUEST="true")
    assert done.status_code == 286 and "boom" in done.content.decode() and "hx-get" not in done.content.decode()


def oob_history(html: str) -> str | None:
    """The history table sent out of band in an htmx response, if any."""
    marker = '<div id="test-call-history" hx-swap-oob="true">'
    return html[html.index(marker) :] if marker in html else None


@pytest.mark.django_db
def test_the_history_is_swapped_in_when_a_call_starts_and_when_it_finishes(world, client_for, enqueued):
    deployment = dead_deployment(world)
    earlier = create(world, deployment, system_prompt="earlier")
    TestCall.objects.filter(id=earlier.id).update(status=TestCallStatus.DONE)
    client = client_for(world.developer)
    assert oob_history(client.get(tab_url(deployment)).content.decode()) is None  # the page has it in place

    started = client.post(run_url(deployment), {"prompt": "Say hi"}, HTTP_HX_REQUEST="true").content.decode()
    call = TestCall.objects.exclude(id=earlier.id).get()
    history = oob_history(started)
    assert f'data-test-call="{call.public_id}"' in history and f'data-test-call="{earlier.public_id}"' in history
    assert started.index('data-testid="test-call-result"') < started.index("test-call-history")

    polling = client.get(poll_url(call), HTTP_HX_REQUEST="true")
    assert polling.status_code == 200 and oob_history(polling.content.decode()) is None  # not on every tick

    TestCall.objects.filter(id=call.id).update(status=TestCallStatus.DONE, latency_ms=123, prompt_tokens=7, completion_tokens=3)
    final = client.get(poll_url(call), HTTP_HX_REQUEST="true")

    assert final.status_code == 286
    row = oob_history(final.content.decode()).split(f'data-test-call="{call.public_id}"')[1].split("</tr>")[0]
    assert 'badge-ok">Done' in row and "123 ms" in row and "7 / 3" in row
    assert oob_history(client.get(poll_url(call)).content.decode()) is None  # a plain GET is just the card


@pytest.mark.django_db
def test_history_shows_the_last_ten_in_a_fixed_number_of_queries(world, client_for, enqueued, django_assert_max_num_queries):
    deployment = dead_deployment(world)
    for i in range(12):
        create(world, deployment, system_prompt=f"n{i}")
    client = client_for(world.developer)
    with django_assert_max_num_queries(12):
        page = client.get(tab_url(deployment)).content.decode()
    assert page.count("<tr data-test-call=") == 10


# --- end to end: real worker, live gateway, demo model ------------------------------------------------------


@pytest.fixture
def worker_routed(tmp_path, gateway):
    """A worker process that reaches the live gateway; run_test_call is routed to its queue."""
    from console.celery import app

    worker = Worker(tmp_path, extra_env={"GATEWAY_INTERNAL_URL": gateway.url})
    router = app.amqp.router
    before = router.routes
    router.routes = (MapRoute({tasks.run_test_call.name: {"queue": worker.queue}}), *before)
    try:
        yield worker
    finally:
        router.routes = before
        worker.stop()


@pytest.mark.django_db(transaction=True)
def test_end_to_end_a_streamed_test_call_reaches_done_through_the_gateway(world, client_for, demo, worker_routed):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    client = client_for(world.developer)

    response = client.post(run_url(deployment), {"prompt": QUESTION, "stream": "on", "temperature": "0.2"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    call = TestCall.objects.get()

    def finished():
        r = client.get(poll_url(call), HTTP_HX_REQUEST="true")
        return r if r.status_code == 286 else None

    last = wait_for(finished, timeout=60, interval=0.5, what="test call to finish")
    call.refresh_from_db()
    assert call.status == TestCallStatus.DONE, (call.error, worker_routed.output())
    assert call.output_text == ANSWER
    assert (call.prompt_tokens, call.completion_tokens) == (7, 19)
    assert call.ttft_ms is not None and call.latency_ms is not None and call.ttft_ms <= call.latency_ms
    assert call.request_id
    body = last.content.decode()
    assert ANSWER in body and "Time to first token" in body and "hx-get" not in body
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=call.request_id).first(), timeout=20, what="usage event")
    assert UsageEvent.objects.count() == 1
    assert event.is_test_call and event.streamed and event.workspace_id == world.org.id
    assert event.api_key.kind == ApiKeyKind.TEST_CALL
    assert call.cost == event.cost
    assert not ApiKeySecret.objects.filter(api_key__kind=ApiKeyKind.TEST_CALL).exists()


@pytest.mark.django_db(transaction=True)
def test_end_to_end_an_embedding_test_call_shows_dimensions_and_tokens(world, client_for, demo, worker_routed):
    deployment = make_deployment(
        world.org,
        base_url=demo.url + "/v1",
        upstream_api_key=UPSTREAM_KEY,
        upstream_model="gatehouse-demo",
        kind="embedding",
        output_price="0",
    )
    client = client_for(world.developer)
    page = client.get(tab_url(deployment)).content.decode()
    assert "Text to embed" in page and "id_temperature" not in page

    response = client.post(run_url(deployment), {"prompt": "Embed these five words please", "stream": "on"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    call = TestCall.objects.get()
    assert call.stream is False  # an embedding is never streamed, whatever the form said

    def finished():
        r = client.get(poll_url(call), HTTP_HX_REQUEST="true")
        return r if r.status_code == 286 else None

    last = wait_for(finished, timeout=60, interval=0.5, what="test call to finish")
    call.refresh_from_db()
    assert call.status == TestCallStatus.DONE, (call.error, worker_routed.output())
    assert call.output_text.startswith("16 dimensions\n[")
    assert (call.prompt_tokens, call.completion_tokens) == (5, 0)
    body = last.content.decode()
    assert "16 dimensions" in body and "5 in" in body
    event = wait_for(lambda: UsageEvent.objects.filter(request_id=call.request_id).first(), timeout=20, what="usage event")
    assert (event.endpoint, event.prompt_tokens, event.is_test_call) == ("embeddings", 5, True)
    assert call.cost == event.cost
