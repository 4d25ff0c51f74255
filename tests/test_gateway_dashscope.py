"""The DashScope-native API through the live gateway with the real `dashscope` SDK pointed at
`dashscope.base_http_api_url`, as seed 003 describes for a sub-workspace's key: translated to
chat completions, streamed with X-DashScope-SSE, DashScope's error shape, limits and metering."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from deployments.models import ModelGrant
from gateway.errors import GatewayError
from gateway.shapes import Call, dashscope
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

ANSWER = "Hello! I am the Gatehouse demo model. You said: Who are you?"
PATH = "/api/v1/services/aigc/text-generation/generation"

# Each SDK call runs in a fresh interpreter: the SDK keeps a module-level base URL and session.
SCRIPT = """
import json, os, sys
import dashscope
dashscope.base_http_api_url = os.environ["BASE"]
messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Who are you?"}]
mode = sys.argv[1]
if mode == "stream":
    text, usage, code = "", None, None
    for r in dashscope.Generation.call(api_key=os.environ["KEY"], model=os.environ["MODEL"], messages=messages, result_format="message", stream=True, incremental_output=True):
        if r.status_code != 200:
            code = (r.status_code, r.code)
            break
        text += r.output.choices[0].message.content
        usage = dict(r.usage)
    print(json.dumps({"text": text, "usage": usage, "error": code}))
else:
    r = dashscope.Generation.call(api_key=os.environ["KEY"], model=os.environ["MODEL"], messages=messages, result_format=mode)
    out = r.output.choices[0].message.content if r.status_code == 200 and mode == "message" else (r.output.text if r.status_code == 200 else None)
    print(json.dumps({"status": r.status_code, "code": r.code, "text": out, "usage": dict(r.usage) if r.usage else None, "request_id": r.request_id}))
"""


def run_sdk(gateway, key: str, model: str, mode: str) -> dict:
    env = {"BASE": gateway.url + "/api/v1", "KEY": key, "MODEL": model, "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def deployment(world, demo):
    return make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")


def test_sub_workspace_key_calls_a_granted_model_with_the_dashscope_sdk(world, deployment, gateway):
    ModelGrant.objects.create(deployment=deployment, workspace=world.sub)
    key, plaintext = make_key(world.sub, all_models=True)

    message = run_sdk(gateway, plaintext, deployment.model_id, "message")
    assert (message["status"], message["text"]) == (200, ANSWER)
    assert message["usage"] == {"input_tokens": 10, "output_tokens": 16, "total_tokens": 26}
    assert message["request_id"].startswith("req_")

    text = run_sdk(gateway, plaintext, deployment.model_id, "text")
    assert (text["status"], text["text"]) == (200, ANSWER)

    streamed = run_sdk(gateway, plaintext, deployment.model_id, "stream")
    assert streamed["error"] is None and streamed["text"] == ANSWER
    assert (streamed["usage"]["input_tokens"], streamed["usage"]["output_tokens"]) == (10, 16)

    events = list(UsageEvent.objects.filter(api_key=key).order_by("created_at"))
    assert [(e.endpoint, e.streamed, e.estimated, e.workspace_id) for e in events] == [
        ("dashscope.generation", False, False, world.sub.id),
        ("dashscope.generation", False, False, world.sub.id),
        ("dashscope.generation", True, False, world.sub.id),
    ]
    assert [e.total_tokens for e in events] == [26, 26, 26]  # what the SDK reported each time


def test_bad_key_and_refused_model_give_dashscope_status_and_code(world, deployment, gateway):
    # The sub-workspace has no grant for this deployment: its key is refused the model.
    key, plaintext = make_key(world.sub, all_models=True)
    refused = run_sdk(gateway, plaintext, deployment.model_id, "message")
    assert (refused["status"], refused["code"]) == (403, "Model.AccessDenied")
    bad = run_sdk(gateway, "gh_live_" + "x" * 40, deployment.model_id, "message")
    assert (bad["status"], bad["code"]) == (401, "InvalidApiKey")
    bad_stream = run_sdk(gateway, "gh_live_" + "x" * 40, deployment.model_id, "stream")
    assert bad_stream["error"] == [401, "InvalidApiKey"]


def test_curl_style_sse_and_the_tpm_limit(world, deployment, gateway):
    key, plaintext = make_key(world.org, deployments=[deployment], tpm_limit=60)
    body = {
        "model": deployment.model_id,
        "input": {"messages": [{"role": "user", "content": "Who are you?"}]},
        "parameters": {"result_format": "message", "incremental_output": True},
    }
    with httpx.stream(
        "POST", gateway.url + PATH, json=body, headers={"authorization": f"Bearer {plaintext}", "x-dashscope-sse": "enable"}
    ) as response:
        raw = response.read().decode()
    assert response.headers["content-type"].startswith("text/event-stream")
    datas = [json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:")]
    assert (
        "".join(d["output"]["choices"][0]["message"]["content"] for d in datas)
        == "Hello! I am the Gatehouse demo model. You said: Who are you?"
    )
    assert [d["output"]["choices"][0]["finish_reason"] for d in datas][-2:] == ["null", "stop"]
    final = datas[-1]["usage"]

    refused = httpx.post(
        gateway.url + PATH,
        json={**body, "input": {"messages": [{"role": "user", "content": "z" * 150}]}},
        headers={"authorization": f"Bearer {plaintext}"},
    )
    assert refused.status_code == 429 and refused.json()["code"] == "Throttling.RateQuota"
    assert refused.json()["request_id"] == refused.headers["x-request-id"]
    ok = [e for e in UsageEvent.objects.filter(api_key=key) if e.status_code == 200]
    assert [(e.prompt_tokens, e.completion_tokens) for e in ok] == [(final["input_tokens"], final["output_tokens"])]


# ---- translation tables (pure) ---------------------------------------------------------------


def test_request_translates_to_a_chat_body():
    call = dashscope.SHAPE.parse(
        {
            "model": "qwen-plus",
            "input": {"messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]}]},
            "parameters": {
                "result_format": "message",
                "incremental_output": True,
                "max_tokens": 30,
                "top_k": 5,
                "enable_search": True,
                "seed": 1,
            },
        },
        True,
    )
    assert call.body == {"messages": [{"role": "user", "content": "ab"}], "max_tokens": 30, "top_k": 5, "seed": 1}
    assert call.completion_budget == 30 and call.extra == {"format": "message", "incremental": True}
    prompt = dashscope.SHAPE.parse({"model": "m", "input": {"prompt": "hi"}}, True)
    assert prompt.body["messages"] == [{"role": "user", "content": "hi"}] and prompt.extra["format"] == "text"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "m"}, "input"),
        ({"model": "m", "input": {"messages": []}}, "input.messages"),
        ({"model": "m", "input": {"messages": [{"role": "bot", "content": "x"}]}}, "input.messages.[0].role"),
        ({"model": "m", "input": {"prompt": "x"}, "parameters": {"result_format": "xml"}}, "parameters.result_format"),
        ({"model": "m", "input": {"prompt": "x"}, "parameters": {"temperature": 3}}, "temperature"),
    ],
)
def test_bad_bodies_name_the_parameter(body, param):
    with pytest.raises(GatewayError) as caught:
        dashscope.SHAPE.parse(body, True)
    assert (caught.value.status, caught.value.param) == (400, param)


@pytest.mark.parametrize(
    "error, status, code",
    [
        (GatewayError(401, "m", code="invalid_api_key"), 401, "InvalidApiKey"),
        (GatewayError(404, "m", code="model_not_found"), 403, "Model.AccessDenied"),
        (GatewayError(429, "m", code="rate_limit_exceeded"), 429, "Throttling.RateQuota"),
        (GatewayError(429, "m", code="insufficient_quota"), 429, "Throttling.AllocationQuota"),
        (GatewayError(400, "m", code="invalid_value"), 400, "InvalidParameter"),
        (GatewayError(502, "m", code="upstream_error"), 502, "InternalError"),
    ],
)
def test_errors_use_dashscope_codes(error, status, code):
    got_status, body = dashscope.SHAPE.error_body(error, "req_1")
    assert (got_status, json.loads(body)) == (status, {"code": code, "message": "m", "request_id": "req_1"})


def test_answer_in_message_and_text_formats():
    data = {"choices": [{"message": {"content": "Hi"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    for fmt, output in (
        ("message", {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "Hi"}}]}),
        ("text", {"text": "Hi", "finish_reason": "stop"}),
    ):
        out = json.loads(dashscope.SHAPE.respond(data, Call(body={}, model="m", extra={"format": fmt, "incremental": False}), "m", "req_2"))
        assert out == {"output": output, "usage": {"input_tokens": 3, "output_tokens": 1, "total_tokens": 4}, "request_id": "req_2"}
