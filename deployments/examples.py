"""Code examples for a deployment: a registry of plain source files, rendered per language.

Each example is a real source file under templates/deployments/examples/. It is rendered with
a template engine that does NOT HTML-escape (the page escapes the finished text once, when it
puts it in a <pre>), and every value is inserted as a literal already escaped for that
language: a model id such as `a"b\\c` must come out as a valid string in Python, Java, Go, C#,
PHP, JavaScript and shell alike. Bodies for languages without a JSON library in their standard
library (Java, C#, curl) are serialised here with json.dumps and then escaped for the host
language's string syntax.

The API key is either read from the GATEHOUSE_API_KEY environment variable or, for one response
only, written in as a literal (the Secrets page hands over a freshly created key).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from django.conf import settings
from django.template import Context, Engine

API_KEY_ENV = "GATEHOUSE_API_KEY"
SYSTEM_PROMPT = "You are a helpful assistant."
USER_PROMPT = "Say hello in one short sentence."
EMBED_TEXTS = ("Gatehouse keeps keys, limits and bills in one place.", "The demo model answers deterministically.")
RERANK_QUERY = "Which text is about limits?"
DASHSCOPE_PATH = "/api/v1/services/aigc/text-generation/generation"


@dataclass(frozen=True)
class Example:
    id: str
    label: str
    template: str  # file name under templates/deployments/examples/
    filename: str  # what the user saves it as
    language: str  # picks the literal escaping: python, javascript, shell, java, go, csharp, php
    install: str  # one line: what to install first ("" when nothing)
    run: str  # one line: how to run it
    group: str = "examples"  # "examples" (Code Examples tab) or "api" (API call tab)
    kinds: tuple[str, ...] = ("chat",)  # the deployment kinds it is shown for
    section: str = "Chat completions"  # the API it calls (examples are grouped by it)


EXAMPLES: tuple[Example, ...] = (
    Example("python", "Python", "python_chat.py", "chat.py", "python", "pip install openai", "python chat.py"),
    Example(
        "python-stream", "Python streaming", "python_stream.py", "chat_stream.py", "python", "pip install openai", "python chat_stream.py"
    ),
    Example(
        "python-tools", "Python tool calling", "python_tools.py", "chat_tools.py", "python", "pip install openai", "python chat_tools.py"
    ),
    Example(
        "langchain",
        "LangChain",
        "langchain_chat.py",
        "chat_langchain.py",
        "python",
        "pip install langchain-openai",
        "python chat_langchain.py",
    ),
    Example("node", "Node.js", "node_chat.mjs", "chat.mjs", "javascript", "npm install openai", "node chat.mjs"),
    Example("curl", "curl", "curl_chat.sh", "chat.sh", "shell", "", "sh chat.sh"),
    Example("curl-stream", "curl streaming", "curl_stream.sh", "chat_stream.sh", "shell", "", "sh chat_stream.sh"),
    Example(
        "java",
        "Java",
        "GatehouseChat.java",
        "GatehouseChat.java",
        "java",
        "JDK 17 or newer, no other dependencies",
        "java GatehouseChat.java",
    ),
    Example("go", "Go", "go_chat.go", "main.go", "go", "Go 1.19 or newer, standard library only", "go run main.go"),
    Example("csharp", "C#", "csharp_chat.cs", "Program.cs", "csharp", "a console project (dotnet new console); no packages", "dotnet run"),
    Example(
        "php", "PHP", "php_chat.php", "chat.php", "php", "PHP 8 with the curl extension (apt install php-cli php-curl)", "php chat.php"
    ),
    Example(
        "python-responses",
        "Python",
        "python_responses.py",
        "responses.py",
        "python",
        "pip install openai",
        "python responses.py",
        section="Responses API",
    ),
    Example(
        "python-responses-stream",
        "Python streaming",
        "python_responses_stream.py",
        "responses_stream.py",
        "python",
        "pip install openai",
        "python responses_stream.py",
        section="Responses API",
    ),
    Example("curl-responses", "curl", "curl_responses.sh", "responses.sh", "shell", "", "sh responses.sh", section="Responses API"),
    Example(
        "anthropic",
        "Python (anthropic)",
        "anthropic_messages.py",
        "messages.py",
        "python",
        "pip install anthropic",
        "python messages.py",
        section="Anthropic Messages",
    ),
    Example("curl-messages", "curl", "curl_messages.sh", "messages.sh", "shell", "", "sh messages.sh", section="Anthropic Messages"),
    Example(
        "claude-code",
        "Claude Code",
        "claude_code.sh",
        "claude_code_env.sh",
        "shell",
        "Claude Code (npm install -g @anthropic-ai/claude-code)",
        ". ./claude_code_env.sh && claude",
        section="Anthropic Messages",
    ),
    Example(
        "dashscope",
        "Python (dashscope)",
        "python_dashscope.py",
        "generation.py",
        "python",
        "pip install dashscope",
        "python generation.py",
        section="DashScope",
    ),
    Example("curl-dashscope", "curl (SSE)", "curl_dashscope.sh", "generation.sh", "shell", "", "sh generation.sh", section="DashScope"),
    Example("curl-completions", "curl", "curl_completions.sh", "completions.sh", "shell", "", "sh completions.sh", section="Completions"),
    Example(
        "python-embeddings",
        "Python",
        "python_embeddings.py",
        "embeddings.py",
        "python",
        "pip install openai",
        "python embeddings.py",
        kinds=("embedding",),
        section="Embeddings",
    ),
    Example(
        "langchain-embeddings",
        "LangChain",
        "langchain_embeddings.py",
        "embeddings_langchain.py",
        "python",
        "pip install langchain-openai",
        "python embeddings_langchain.py",
        kinds=("embedding",),
        section="Embeddings",
    ),
    Example(
        "curl-embeddings",
        "curl",
        "curl_embeddings.sh",
        "embeddings.sh",
        "shell",
        "",
        "sh embeddings.sh",
        kinds=("embedding",),
        section="Embeddings",
    ),
    Example(
        "node-embeddings",
        "Node.js",
        "node_embeddings.mjs",
        "embeddings.mjs",
        "javascript",
        "npm install openai",
        "node embeddings.mjs",
        kinds=("embedding",),
        section="Embeddings",
    ),
    Example("curl-rerank", "curl", "curl_rerank.sh", "rerank.sh", "shell", "", "sh rerank.sh", kinds=("rerank",), section="Rerank"),
    Example("curl-v1", "V1 path (X-Apig-AppCode)", "curl_v1.sh", "chat_v1.sh", "shell", "", "sh chat_v1.sh", group="api"),
    Example("curl-v2", "V2 path (Bearer)", "curl_v2.sh", "chat_v2.sh", "shell", "", "sh chat_v2.sh", group="api"),
)
EXAMPLES_BY_ID = {e.id: e for e in EXAMPLES}


# ---- string literals, one function per language -------------------------------------------


def py_str(value: str) -> str:
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def js_str(value: str) -> str:
    # JSON strings are JavaScript strings (ES2019 made U+2028/U+2029 legal in them too).
    return json.dumps(value, ensure_ascii=False)


def sh_str(value: str) -> str:
    """A single-quoted shell word: nothing inside is special except the quote itself."""
    return "'" + value.replace("'", "'\\''") + "'"


def _utf16_units(ch: str) -> list[int]:
    data = ch.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _c_style_str(value: str, named: dict[str, str], escape: Callable[[str, int], str | None]) -> str:
    """A double-quoted literal for C-family languages: `named` escapes first, then `escape(ch, code)`
    for anything else that needs one (None keeps the character as it is)."""
    out = []
    for ch in value:
        code = ord(ch)
        out.append(named.get(ch) or escape(ch, code) or ch)
    return '"' + "".join(out) + '"'


_C_NAMED = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _utf16_escapes(ch: str) -> str:
    return "".join(f"\\u{unit:04x}" for unit in _utf16_units(ch))


def java_str(value: str) -> str:
    # javac turns \\uXXXX into characters before it reads string syntax, so \\u0022 would end the
    # string: quotes and controls use ordinary and octal escapes; \\u only for non-ASCII.
    def escape(ch: str, code: int) -> str | None:
        if code < 0x20 or code == 0x7F:
            return f"\\{code:03o}"
        return _utf16_escapes(ch) if code > 0x7E else None

    return _c_style_str(value, {**_C_NAMED, "\b": "\\b", "\f": "\\f"}, escape)


def java_text_block(text: str, indent: int) -> str:
    """A Java text block holding `text` (ASCII JSON): backslashes doubled, no \"\"\" inside."""
    escaped = text.replace("\\", "\\\\").replace('"""', '""\\"')
    pad = " " * indent
    return '"""\n' + "\n".join(pad + line for line in escaped.splitlines()) + "\n" + pad + '"""'


def go_str(value: str) -> str:
    def escape(ch: str, code: int) -> str | None:
        if code < 0x20 or code == 0x7F:
            return f"\\x{code:02x}"
        if not ch.isprintable():
            return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
        return None

    return _c_style_str(value, _C_NAMED, escape)


def cs_str(value: str) -> str:
    return _c_style_str(value, {**_C_NAMED, "\0": "\\0"}, lambda ch, code: _utf16_escapes(ch) if code < 0x20 or code > 0x7E else None)


def cs_verbatim(text: str) -> str:
    """A C# verbatim string @"..." (only the quote is special, written twice)."""
    return '@"' + text.replace('"', '""') + '"'


def php_str(value: str) -> str:
    """A single-quoted PHP string: only \\\\ and \\' are escapes; no $ interpolation."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


LITERALS = {"python": py_str, "javascript": js_str, "shell": sh_str, "java": java_str, "go": go_str, "csharp": cs_str, "php": php_str}

KEY_FROM_ENV = {
    "python": f'os.environ["{API_KEY_ENV}"]',
    "javascript": f"process.env.{API_KEY_ENV}",
    "java": f'System.getenv("{API_KEY_ENV}")',
    "go": f'os.Getenv("{API_KEY_ENV}")',
    "csharp": f'Environment.GetEnvironmentVariable("{API_KEY_ENV}")',
    "php": f"getenv('{API_KEY_ENV}')",
}


# ---- rendering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallTarget:
    """What an example calls. base_url is the OpenAI-compatible base, ending in /v1."""

    public_base_url: str
    model_id: str
    project_id: str = ""
    deployment_id: str = ""
    api_key: str | None = None  # a literal key for this one response; None reads GATEHOUSE_API_KEY
    kind: str = "chat"  # the deployment's kind: which APIs (and so which examples) it serves

    @property
    def base_url(self) -> str:
        return f"{self.public_base_url.rstrip('/')}/v1"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def v1_url(self) -> str:
        return f"{self.public_base_url.rstrip('/')}/v1/{self.project_id}/deployments/{self.deployment_id}/chat/completions"

    @property
    def v2_url(self) -> str:
        return f"{self.public_base_url.rstrip('/')}/api/v2/chat/completions"

    @property
    def public_url(self) -> str:
        return self.public_base_url.rstrip("/")

    @property
    def dashscope_url(self) -> str:
        return self.public_url + DASHSCOPE_PATH

    def paths(self) -> list[tuple[str, str, str]]:
        """(method and URL, API, credential header) for every path this deployment serves."""
        bearer = "Authorization: Bearer"
        if self.kind == "embedding":
            return [(f"POST {self.base_url}/embeddings", "OpenAI embeddings", bearer)]
        if self.kind == "rerank":
            return [(f"POST {self.base_url}/rerank", "Rerank (vLLM / Jina / Cohere)", bearer)]
        return [
            (f"POST {self.chat_url}", "OpenAI chat completions", bearer),
            (f"POST {self.v2_url}", "V2 inference path (OpenAI bodies)", bearer),
            (f"POST {self.v1_url}", "V1 inference path (no model in the body)", "X-Apig-AppCode"),
            (f"POST {self.base_url}/responses", "OpenAI Responses", bearer),
            (f"POST {self.base_url}/completions", "OpenAI completions (legacy)", bearer),
            (f"POST {self.base_url}/messages", "Anthropic Messages", "x-api-key (or Authorization: Bearer)"),
            (f"POST {self.dashscope_url}", "DashScope text generation", bearer),
        ]


@dataclass(frozen=True)
class RenderedExample:
    example: Example
    source: str

    @property
    def id(self) -> str:
        return self.example.id


@cache
def _engine() -> Engine:
    # autoescape off: these are source files, not HTML. Values are escaped per language instead.
    return Engine(dirs=[str(Path(settings.BASE_DIR) / "templates" / "deployments" / "examples")], autoescape=False)


def _body(target: CallTarget, *, stream: bool = False, with_model: bool = True) -> dict:
    body: dict = {"model": target.model_id} if with_model else {}
    body["messages"] = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}]
    if stream:
        body.update({"stream": True, "stream_options": {"include_usage": True}})
    return body


def body_json(body: dict, *, ensure_ascii: bool) -> str:
    """JSON laid out for reading: one top-level field per line, one message per line."""

    def dumps(value) -> str:
        return json.dumps(value, ensure_ascii=ensure_ascii, separators=(", ", ": "))

    lines = []
    for name, value in body.items():
        if isinstance(value, list) and value:
            inner = ",\n".join(f"    {dumps(item)}" for item in value)
            lines.append(f"  {dumps(name)}: [\n{inner}\n  ]")
        else:
            lines.append(f"  {dumps(name)}: {dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}"


def example_context(example: Example, target: CallTarget) -> dict:
    lit = LITERALS[example.language]
    from_env = target.api_key is None
    key = KEY_FROM_ENV.get(example.language, "") if from_env else lit(target.api_key)
    ctx = {
        "from_env": from_env,
        "env": API_KEY_ENV,
        "key": key,
        "base_url": lit(target.base_url),
        "public_url": lit(target.public_url),
        "dashscope_base": lit(target.public_url + "/api/v1"),
        "chat_url": lit(target.chat_url),
        "model": lit(target.model_id),
        "system_prompt": lit(SYSTEM_PROMPT),
        "user_prompt": lit(USER_PROMPT),
        "embed_text": lit(EMBED_TEXTS[0]),
        "embed_text_2": lit(EMBED_TEXTS[1]),
    }
    if example.language == "shell":
        # "$VAR" must stay expandable, so only the literal key case is single-quoted.
        ctx["bearer"] = f'"Authorization: Bearer ${API_KEY_ENV}"' if from_env else sh_str(f"Authorization: Bearer {target.api_key}")
        ctx["appcode"] = f'"X-Apig-AppCode: ${API_KEY_ENV}"' if from_env else sh_str(f"X-Apig-AppCode: {target.api_key}")
        ctx["v1_url"], ctx["v2_url"] = sh_str(target.v1_url), sh_str(target.v2_url)
        ctx["body"] = sh_str(body_json(_body(target), ensure_ascii=False))
        ctx["stream_body"] = sh_str(body_json(_body(target, stream=True), ensure_ascii=False))
        ctx["v1_body"] = sh_str(body_json(_body(target, with_model=False), ensure_ascii=False))
        ctx["key_value"] = f'"${API_KEY_ENV}"' if from_env else sh_str(target.api_key)
        ctx["x_api_key"] = f'"x-api-key: ${API_KEY_ENV}"' if from_env else sh_str(f"x-api-key: {target.api_key}")
        for name, path, body in _shell_calls(target):
            ctx[f"{name}_url"] = sh_str(path)
            ctx[f"{name}_body"] = sh_str(body_json(body, ensure_ascii=False))
    elif example.language == "java":
        ctx["body"] = java_text_block(body_json(_body(target), ensure_ascii=True), indent=12)
    elif example.language == "csharp":
        # Continuation lines are indented like the code around them; JSON ignores the spaces.
        ctx["body"] = cs_verbatim(body_json(_body(target), ensure_ascii=True).replace("\n", "\n        "))
    return ctx


def render_example(example: Example, target: CallTarget) -> str:
    source = _engine().get_template(example.template).render(Context(example_context(example, target), autoescape=False))
    return source.rstrip("\n") + "\n"


def _shell_calls(target: CallTarget) -> list[tuple[str, str, dict]]:
    """(context name, URL, body) for the curl examples of the other APIs."""
    model = target.model_id
    return [
        ("embeddings", f"{target.base_url}/embeddings", {"model": model, "input": list(EMBED_TEXTS), "encoding_format": "float"}),
        ("rerank", f"{target.base_url}/rerank", {"model": model, "query": RERANK_QUERY, "documents": list(EMBED_TEXTS), "top_n": 1}),
        ("completions", f"{target.base_url}/completions", {"model": model, "prompt": USER_PROMPT, "max_tokens": 150}),
        (
            "responses",
            f"{target.base_url}/responses",
            {"model": model, "instructions": SYSTEM_PROMPT, "input": USER_PROMPT, "max_output_tokens": 150},
        ),
        (
            "messages",
            f"{target.base_url}/messages",
            {"model": model, "max_tokens": 150, "system": SYSTEM_PROMPT, "messages": [{"role": "user", "content": USER_PROMPT}]},
        ),
        (
            "dashscope",
            target.dashscope_url,
            {
                "model": model,
                "input": {"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": USER_PROMPT}]},
                "parameters": {"result_format": "message", "incremental_output": True},
            },
        ),
    ]


def render_examples(target: CallTarget, *, group: str = "examples") -> list[RenderedExample]:
    return [RenderedExample(e, render_example(e, target)) for e in EXAMPLES if e.group == group and target.kind in e.kinds]


def target_for(*, deployment, workspace, api_key: str | None = None) -> CallTarget:
    """The call target of `deployment` as seen from `workspace` (whose keys call it: its id is the V1 project_id)."""
    return CallTarget(
        public_base_url=settings.PUBLIC_BASE_URL,
        model_id=deployment.model_id,
        project_id=str(workspace.public_id),
        deployment_id=str(deployment.public_id),
        api_key=api_key,
        kind=deployment.kind,
    )
