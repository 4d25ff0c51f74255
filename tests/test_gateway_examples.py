"""The console's code examples, rendered for a deployment, run unchanged against the live gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.examples import EXAMPLES, CallTarget, render_example
from tests import gateway_support
from tests.factories import make_deployment, make_key
from tests.gateway_support import UPSTREAM_KEY
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db(transaction=True)
demo, gateways, gateway = gateway_support.demo, gateway_support.gateways, gateway_support.gateway  # live-process fixtures

RUNNERS = {
    "python": [sys.executable],
    "shell": ["sh"],
    "javascript": ["node"],
    "java": ["java"],
    "go": ["go", "run"],
    "php": ["php"],
    "csharp": ["mono", "chat.exe"],
}  # C#: .NET is not in Debian's packages; Mono runs the same source
NODE_OPENAI = "openai@7.57.0"  # the `npm install openai` the Node.js example asks for, pinned
NODE_CACHE = Path(__file__).resolve().parent.parent / "var" / "test" / "node-openai"
EXPECTED = {  # what each example prints from the demo model's deterministic answers
    "python": "Hello! I am the Gatehouse demo model.",
    "python-stream": "Hello! I am the Gatehouse demo model.",
    "python-tools": "The tool returned:",
    "langchain": "Hello! I am the Gatehouse demo model.",
    "curl": '"content":"Hello! I am the Gatehouse demo model.',
    "curl-stream": "data: [DONE]",
    "curl-v1": '"content":"Hello! I am the Gatehouse demo model.',
    "curl-v2": '"content":"Hello! I am the Gatehouse demo model.',
    "node": "Hello! I am the Gatehouse demo model.",
    "java": '"content":"Hello! I am the Gatehouse demo model.',
    "go": "Hello! I am the Gatehouse demo model.",
    "php": "Hello! I am the Gatehouse demo model.",
    "csharp": '"content":"Hello! I am the Gatehouse demo model.',
    "python-responses": "Hello! I am the Gatehouse demo model.",
    "python-responses-stream": "Hello! I am the Gatehouse demo model.",
    "curl-responses": '"text":"Hello! I am the Gatehouse demo model.',
    "anthropic": "Hello! I am the Gatehouse demo model.",
    "curl-messages": '"text":"Hello! I am the Gatehouse demo model.',
    "claude-code": "Hello! I am the Gatehouse demo model.",
    "dashscope": "Hello! I am the Gatehouse demo model.",
    "curl-dashscope": '"finish_reason":"stop"',
    "curl-completions": '"text":"Hello! I am the Gatehouse demo model.',
    "python-embeddings": "input 1: 16 dimensions",
    "langchain-embeddings": "2 documents, 16 dimensions; query vector of 16",
    "curl-embeddings": '"object":"embedding"',
    "node-embeddings": "input 1: 16 dimensions",
    "curl-rerank": '"relevance_score"',
}
# Claude Code itself is not run here: the recipe's variables are checked with the anthropic SDK,
# which reads the same ANTHROPIC_BASE_URL / ANTHROPIC_AUTH_TOKEN, and the model from ANTHROPIC_MODEL.
CLAUDE_CODE_CHECK = """
import os
import anthropic
message = anthropic.Anthropic(max_retries=0).messages.create(
    model=os.environ["ANTHROPIC_MODEL"], max_tokens=60, messages=[{"role": "user", "content": "hi"}]
)
print(message.content[0].text)
"""
# LangChain runs with langchain-openai from requirements-dev.txt (pinned to the newest release whose
# langchain-core this machine's package index can resolve; see the pin's comment there).


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """`npm install openai` once per run, from the npm registry, into a cache the examples link to."""
    if not (NODE_CACHE / "node_modules" / "openai").exists():
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_CACHE), NODE_OPENAI], check=True, timeout=300
        )
    return NODE_CACHE / "node_modules"


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.id in EXPECTED], ids=lambda e: e.id)
def test_code_example_runs_against_the_gateway(world, demo, gateway, tmp_path, example, request):
    kind = example.kinds[0]
    deployment = make_deployment(
        world.org, base_url=demo.url + "/v1", upstream_api_key=UPSTREAM_KEY, upstream_model="gatehouse-demo", kind=kind
    )
    key, plaintext = make_key(world.org, deployments=[deployment])
    target = CallTarget(
        public_base_url=gateway.url,
        model_id=deployment.model_id,
        project_id=str(world.org.public_id),
        deployment_id=str(deployment.public_id),
        kind=kind,
    )
    path = tmp_path / example.filename
    path.write_text(render_example(example, target))
    if example.language == "javascript":
        (tmp_path / "node_modules").symlink_to(request.getfixturevalue("node_modules"))
    if example.language == "csharp":
        subprocess.run(["mcs", "-r:System.Net.Http", "-out:chat.exe", str(path)], cwd=tmp_path, check=True, timeout=120)

    command = [*RUNNERS[example.language], str(path)]
    if example.id == "claude-code":
        (tmp_path / "check.py").write_text(CLAUDE_CODE_CHECK)
        command = ["sh", "-c", f". ./{example.filename} && {sys.executable} check.py"]
    # Nothing from this machine's own Anthropic/DashScope/OpenAI settings may reach the examples.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "DASHSCOPE_", "OPENAI_"))}
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
        env={**clean, "GATEHOUSE_API_KEY": plaintext},
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert EXPECTED[example.id] in result.stdout, result.stdout[-2000:]
    if example.id == "langchain":  # LangChain read the gateway's usage block into usage_metadata
        assert "'total_tokens': " in result.stdout, result.stdout[-2000:]
    assert UsageEvent.objects.filter(api_key=key, status_code=200).count() >= 1
