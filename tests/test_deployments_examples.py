"""Code examples: every language renders valid code for any model id, compiles with its real
toolchain, and (where the runtime needs no third-party package) runs against a recording
OpenAI-compatible server that checks what was actually sent.

Toolchains come from Debian's packages (scripts/test-prereqs.sh installs them). A missing one
skips its test with the reason. The Node.js and LangChain examples need `openai` from npm and
`langchain-openai` from PyPI: they run against the live gateway in tests/test_gateway_examples.py.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.examples import (
    API_KEY_ENV,
    EXAMPLES,
    EXAMPLES_BY_ID,
    CallTarget,
    cs_str,
    go_str,
    java_str,
    js_str,
    php_str,
    py_str,
    render_example,
    render_examples,
    sh_str,
)
from keys import tokens
from tests.recording_upstream import REPLY, RecordingUpstream

# Quotes of every kind, backslashes, shell and template syntax, a \u escape that javac would
# expand, non-ASCII and a character outside the BMP. All printable, so a valid model id.
NASTY = '@acme/Qwen "3" it\'s \\ $HOME `id` {{ x }} {% y %} """ \\u0022 <b>é😀'
PLAIN = "@sss/Qwen/Qwen3-0.6B-Base"
PROJECT, DEPLOYMENT = "0b7c1a2e-0000-4000-8000-000000000001", "0b7c1a2e-0000-4000-8000-000000000002"
KEY = tokens.generate()


def target(model_id: str = NASTY, base: str = "https://gw.example.com", api_key: str | None = None) -> CallTarget:
    return CallTarget(public_base_url=base, model_id=model_id, project_id=PROJECT, deployment_id=DEPLOYMENT, api_key=api_key)


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/test-prereqs.sh installs it from Debian's packages)")


def write(tmp_path: Path, example_id: str, source: str) -> Path:
    path = tmp_path / EXAMPLES_BY_ID[example_id].filename
    path.write_text(source, encoding="utf-8")
    return path


def run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


# ---- rendering -------------------------------------------------------------------------------


def test_the_registry_covers_every_language_the_console_promises():
    assert [e.id for e in EXAMPLES if e.group == "examples"] == [
        "python",
        "python-stream",
        "python-tools",
        "langchain",
        "node",
        "curl",
        "curl-stream",
        "java",
        "go",
        "csharp",
        "php",
        "python-responses",
        "python-responses-stream",
        "curl-responses",
        "anthropic",
        "curl-messages",
        "claude-code",
        "dashscope",
        "curl-dashscope",
        "curl-completions",
        "python-embeddings",
        "langchain-embeddings",
        "curl-embeddings",
        "node-embeddings",
        "curl-rerank",
    ]
    assert len({e.filename for e in EXAMPLES}) == len(EXAMPLES)


@pytest.mark.parametrize(
    "kind, ids, paths",
    [
        ("embedding", ["python-embeddings", "langchain-embeddings", "curl-embeddings", "node-embeddings"], ["/v1/embeddings"]),
        ("rerank", ["curl-rerank"], ["/v1/rerank"]),
    ],
)
def test_embedding_and_rerank_deployments_show_their_own_examples_and_paths(kind, ids, paths):
    target = CallTarget(public_base_url="https://gw.example", model_id="m", kind=kind)
    assert [e.id for e in render_examples(target)] == ids
    assert [p.split("/", 3)[-1] for p, _, _ in target.paths()] == [path.lstrip("/") for path in paths]
    assert render_examples(target, group="api") == []


def test_chat_deployments_list_every_path_they_serve():
    target = CallTarget(public_base_url="https://gw.example", model_id="m", project_id="p", deployment_id="d")
    served = [p for p, _, _ in target.paths()]
    assert served == [
        "POST https://gw.example/v1/chat/completions",
        "POST https://gw.example/api/v2/chat/completions",
        "POST https://gw.example/v1/p/deployments/d/chat/completions",
        "POST https://gw.example/v1/responses",
        "POST https://gw.example/v1/completions",
        "POST https://gw.example/v1/messages",
        "POST https://gw.example/api/v1/services/aigc/text-generation/generation",
    ]
    for e in EXAMPLES:
        assert (Path(__file__).parent.parent / "templates" / "deployments" / "examples" / e.template).is_file()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
@pytest.mark.parametrize("api_key", [None, KEY], ids=["env-key", "literal-key"])
def test_every_example_renders_plain_text_with_the_base_url_and_key(example, api_key):
    source = render_example(example, target(PLAIN, api_key=api_key))
    assert "&quot;" not in source and "&#x27;" not in source and "&lt;" not in source  # no HTML escaping
    assert PLAIN in source or example.id == "curl-v1"
    if example.id == "curl-v1":
        assert f"/v1/{PROJECT}/deployments/{DEPLOYMENT}/chat/completions" in source and "X-Apig-AppCode" in source
    elif example.id == "curl-v2":
        assert "https://gw.example.com/api/v2/chat/completions" in source
    elif example.section == "DashScope":
        assert "https://gw.example.com/api/v1" in source
    elif example.id in ("anthropic", "claude-code"):  # Anthropic clients add /v1/messages themselves
        assert "https://gw.example.com" in source and "https://gw.example.com/v1" not in source
    else:
        assert "https://gw.example.com/v1" in source
    if api_key is None:
        assert API_KEY_ENV in source and KEY not in source
    else:
        assert KEY in source and API_KEY_ENV not in source


def test_streaming_examples_ask_for_usage():
    assert 'stream_options={"include_usage": True}' in render_example(EXAMPLES_BY_ID["python-stream"], target(PLAIN))
    assert '"stream_options": {"include_usage": true}' in render_example(EXAMPLES_BY_ID["curl-stream"], target(PLAIN))


@pytest.mark.parametrize("example_id", ["python", "python-stream", "python-tools", "langchain"])
def test_python_examples_carry_the_exact_model_id_and_base_url(example_id):
    tree = ast.parse(render_example(EXAMPLES_BY_ID[example_id], target()))
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert NASTY in strings and "https://gw.example.com/v1" in strings


@pytest.mark.parametrize(
    ("literal", "language"),
    [(py_str, "python"), (js_str, "js"), (sh_str, "sh"), (java_str, "java"), (go_str, "go"), (cs_str, "cs"), (php_str, "php")],
)
def test_literal_helpers_never_leave_a_raw_quote_or_newline(literal, language):
    # Model ids cannot hold control characters, but the helpers must not depend on that.
    for value in [NASTY, "a\nb", "tab\t", "\x00\x1f\x7f", "'", '"', "\\", "\u2028"]:
        text = literal(value)
        inner = text[1:-1]
        if language in ("sh", "php"):  # single-quoted: a newline is legal, only the quote is special
            assert "'" not in inner.replace("'\\''", "").replace("\\'", "")
        else:
            assert "\n" not in inner and '"' not in inner.replace('\\"', "")


def test_js_literal_round_trips_through_node():
    need("node")
    script = f"process.stdout.write(JSON.stringify({js_str(NASTY)}))"
    assert json.loads(run(["node", "-e", script], cwd=Path.cwd()).stdout) == NASTY


# ---- compile / syntax check with the real toolchains -------------------------------------------


def rendered_variants():
    for api_key in (None, KEY):
        yield {r.id: r.source for r in render_examples(target(api_key=api_key)) + render_examples(target(api_key=api_key), group="api")}


@pytest.mark.parametrize("example_id", ["python", "python-stream", "python-tools", "langchain"])
def test_python_examples_compile(tmp_path, example_id):
    for sources in rendered_variants():
        run([sys.executable, "-m", "py_compile", str(write(tmp_path, example_id, sources[example_id]))], cwd=tmp_path)


def test_node_example_passes_node_check(tmp_path):
    need("node")
    for sources in rendered_variants():
        run(["node", "--check", str(write(tmp_path, "node", sources["node"]))], cwd=tmp_path)


@pytest.mark.parametrize("example_id", ["curl", "curl-stream", "curl-v1", "curl-v2"])
def test_shell_examples_parse(tmp_path, example_id):
    for sources in rendered_variants():
        run(["sh", "-n", str(write(tmp_path, example_id, sources[example_id]))], cwd=tmp_path)
        run(["bash", "-n", str(write(tmp_path, example_id, sources[example_id]))], cwd=tmp_path)


def test_java_example_compiles_with_javac(tmp_path):
    need("javac")
    for i, sources in enumerate(rendered_variants()):
        folder = tmp_path / str(i)
        folder.mkdir()
        run(["javac", "-encoding", "UTF-8", "-Xlint:all", "-Werror", str(write(folder, "java", sources["java"]))], cwd=folder)


def test_go_example_builds_and_is_gofmt_clean(tmp_path):
    need("go", "gofmt")
    for i, sources in enumerate(rendered_variants()):
        folder = tmp_path / str(i)
        folder.mkdir()
        path = write(folder, "go", sources["go"])
        assert run(["gofmt", "-l", str(path)], cwd=folder).stdout == "", sources["go"]
        run(["go", "vet", str(path)], cwd=folder, env={"GOFLAGS": "-mod=mod", "GO111MODULE": "auto"})


def test_csharp_example_compiles_with_mono(tmp_path):
    need("mcs")
    for i, sources in enumerate(rendered_variants()):
        folder = tmp_path / str(i)
        folder.mkdir()
        result = run(
            ["mcs", "-r:System.Net.Http", "-warnaserror+", "-out:chat.exe", str(write(folder, "csharp", sources["csharp"]))], cwd=folder
        )
        assert "error" not in result.stdout.lower()


def test_php_example_passes_php_lint(tmp_path):
    need("php")
    for sources in rendered_variants():
        run(["php", "-l", str(write(tmp_path, "php", sources["php"]))], cwd=tmp_path)


# ---- run against a recording OpenAI-compatible server --------------------------------------------


def php_has_curl() -> bool:
    return shutil.which("php") is not None and "curl" in subprocess.run(["php", "-m"], capture_output=True, text=True).stdout.split()


RUNNABLE = {
    "python": lambda path: [sys.executable, str(path)],
    "python-stream": lambda path: [sys.executable, str(path)],
    "python-tools": lambda path: [sys.executable, str(path)],
    "curl": lambda path: ["sh", str(path)],
    "curl-stream": lambda path: ["sh", str(path)],
    "curl-v1": lambda path: ["sh", str(path)],
    "curl-v2": lambda path: ["sh", str(path)],
    "java": lambda path: ["java", str(path)],
    "go": lambda path: ["go", "run", str(path)],
    "php": lambda path: ["php", str(path)],
}
TOOL = {"curl": "curl", "curl-stream": "curl", "curl-v1": "curl", "curl-v2": "curl", "java": "java", "go": "go", "php": "php"}


@pytest.fixture
def upstream():
    with RecordingUpstream() as server:
        yield server


def run_against(upstream, tmp_path, example_id: str, model_id: str = NASTY) -> tuple[str, list[dict]]:
    source = render_example(EXAMPLES_BY_ID[example_id], target(model_id, base=upstream.url))
    path = write(tmp_path, example_id, source)
    if example_id == "csharp":
        run(["mcs", "-r:System.Net.Http", "-out:chat.exe", str(path)], cwd=tmp_path)
        cmd = ["mono", "chat.exe"]
    else:
        cmd = RUNNABLE[example_id](path)
    result = run(cmd, cwd=tmp_path, env={API_KEY_ENV: KEY, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"})
    return result.stdout, upstream.records


@pytest.mark.parametrize("example_id", ["python", "python-stream", "curl", "curl-stream", "curl-v2", "java", "go", "csharp", "php"])
def test_example_runs_and_sends_the_exact_model_id_and_key(upstream, tmp_path, example_id):
    if example_id in TOOL:
        need(TOOL[example_id])
    if example_id == "csharp":
        need("mcs", "mono")
    if example_id == "php" and not php_has_curl():
        pytest.skip("PHP's curl extension is not installed (apt-get install php-curl)")
    stdout, records = run_against(upstream, tmp_path, example_id)
    (request,) = records
    expected_path = "/api/v2/chat/completions" if example_id == "curl-v2" else "/v1/chat/completions"
    assert request["path"] == expected_path
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert request["body"]["model"] == NASTY
    assert [m["role"] for m in request["body"]["messages"]] == ["system", "user"]
    if "stream" in example_id:
        assert request["body"]["stream"] is True and request["body"]["stream_options"] == {"include_usage": True}
    assert REPLY in stdout or all(word in stdout for word in REPLY.split())
    if example_id in ("python", "python-stream", "go", "php"):
        assert "tokens: 12 in, 7 out" in stdout


def test_v1_example_sends_the_app_code_header_to_the_deployment_path(upstream, tmp_path):
    need("curl")
    stdout, (request,) = run_against(upstream, tmp_path, "curl-v1")
    assert request["path"] == f"/v1/{PROJECT}/deployments/{DEPLOYMENT}/chat/completions"
    assert request["headers"]["x-apig-appcode"] == KEY and "authorization" not in request["headers"]
    assert "model" not in request["body"]


def test_tool_calling_example_runs_the_tool_and_sends_the_result_back(upstream, tmp_path):
    stdout, records = run_against(upstream, tmp_path, "python-tools")
    assert len(records) == 2
    assert records[0]["body"]["tools"][0]["function"]["name"] == "get_weather"
    tool_message = records[1]["body"]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert json.loads(tool_message["content"])["city"] == "Paris"
    assert REPLY in stdout


def test_examples_refuse_to_run_without_a_key(tmp_path):
    source = render_example(EXAMPLES_BY_ID["python"], target(PLAIN, base="http://127.0.0.1:9"))
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    result = subprocess.run([sys.executable, str(write(tmp_path, "python", source))], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and API_KEY_ENV in result.stderr
