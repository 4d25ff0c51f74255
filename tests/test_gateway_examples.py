"""The console's code examples, rendered for a deployment, run unchanged against the live gateway."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deployments.examples import EXAMPLES, CallTarget, render_example
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

RUNNERS = {"python": [sys.executable], "shell": ["sh"]}
EXPECTED = {  # what each example prints from the demo model's deterministic answers
    "python": "Hello! I am the Gatehouse demo model.",
    "python-stream": "Hello! I am the Gatehouse demo model.",
    "python-tools": "The tool returned:",
    "curl": '"content":"Hello! I am the Gatehouse demo model.',
    "curl-stream": "data: [DONE]",
    "curl-v1": '"content":"Hello! I am the Gatehouse demo model.',
    "curl-v2": '"content":"Hello! I am the Gatehouse demo model.',
}


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.id in EXPECTED], ids=lambda e: e.id)
def test_code_example_runs_against_the_gateway(world, demo, gateway, tmp_path, example):
    deployment = make_deployment(world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo")
    key, plaintext = make_key(world.org, deployments=[deployment])
    target = CallTarget(
        public_base_url=gateway.url,
        model_id=deployment.model_id,
        project_id=str(world.org.public_id),
        deployment_id=str(deployment.public_id),
    )
    path = tmp_path / example.filename
    path.write_text(render_example(example, target))

    result = subprocess.run(
        [*RUNNERS[example.language], str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GATEHOUSE_API_KEY": plaintext},
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[example.id] in result.stdout, result.stdout[-2000:]
    assert UsageEvent.objects.filter(api_key=key, status_code=200).count() >= 1
