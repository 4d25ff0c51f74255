"""The Gatehouse demo model: a small, standalone OpenAI-compatible upstream.

Run it as its own process (it imports nothing from Django):

    python -m deployments.demo_model --port 8301 [--api-key SECRET] [--latency-ms 0] [--chunk-delay-ms 0]

Endpoints: POST /v1/chat/completions and /v1/completions (streaming and not), POST
/v1/embeddings (deterministic unit vectors; `dimensions`, `encoding_format` float or base64),
POST /v1/rerank (scores by shared words), POST /v1/responses (text only, streaming and not:
an upstream that serves the Responses API itself), GET /v1/models, GET /healthz and GET /_demo/stats
(request counters the tests read to prove cancellation).

Answers are deterministic: the same messages give the same reply. Token counts are honest for
its own tokenizer: a token is a run of word characters or one punctuation character
(`count_tokens`), prompt tokens count every message's text, completion tokens count the reply.
With `stream_options.include_usage` the stream ends with a usage chunk (empty `choices`).
When `tools` are given (and `tool_choice` is not "none") it replies with a call of the first tool,
arguments filled from the tool's JSON schema; once the last message is a tool result it answers
in text from that result.

Behaviour can be steered per request, for tests and benchmarks, in two ways:
- options appended to the model name with `+`: `demo+latency_ms=200+fail=500`;
- `metadata` keys prefixed `demo_`: `{"metadata": {"demo_fail": "500"}}`.
Options: latency_ms (delay before the response), chunk_delay_ms (between streamed chunks),
fail (answer with this HTTP status and an OpenAI error body), reply_tokens (reply of exactly
this many tokens), no_usage=1 (never report usage), hang=1 (accept and never answer),
stop_after=N (end a stream after N chunks without usage or [DONE], as a crashed upstream would).
CLI flags set the defaults for latency_ms and chunk_delay_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import math
import os
import re
import struct
import time
from collections import Counter

import uvicorn

TOKEN_RE = re.compile(r"\w+|[^\w\s]")
SERVED_MODELS = ["gatehouse-demo"]
FILLER = (
    "Gatehouse keeps keys, limits and bills in one place while the demo model answers every "
    "question with the same calm and deterministic sentence so that tests can count tokens exactly ."
).split()

stats: Counter[str] = Counter()


def count_tokens(text: str) -> int:
    return len(TOKEN_RE.findall(text))


def message_text(message: dict) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def parse_options(model: str, metadata: object, defaults: dict[str, int]) -> dict[str, int]:
    options = dict(defaults)
    pairs = [part.split("=", 1) for part in model.split("+")[1:] if "=" in part]
    if isinstance(metadata, dict):
        pairs += [(k[5:], v) for k, v in metadata.items() if isinstance(k, str) and k.startswith("demo_")]
    for name, value in pairs:
        try:
            options[name] = int(value)
        except (TypeError, ValueError):
            continue
    return options


def reply_tokens(messages: list, options: dict[str, int], max_tokens: int | None) -> tuple[list[str], str]:
    """The reply as a list of token strings (each with its leading space) and the finish reason."""
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if "reply_tokens" in options:
        words = [FILLER[i % len(FILLER)] for i in range(max(options["reply_tokens"], 0))]
    elif last.get("role") == "tool":
        # A tool result came back: answer from it, as a model would after calling a tool.
        words = ["The", "tool", "returned", ":", *TOKEN_RE.findall(message_text(last))[:24]]
    else:
        last_user = next((message_text(m) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
        echoed = TOKEN_RE.findall(last_user)[:24]
        words = ["Hello", "!", "I", "am", "the", "Gatehouse", "demo", "model", ".", "You", "said", ":", *echoed]
    finish = "stop"
    if max_tokens is not None and len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    return [(w if i == 0 or not re.match(r"\w", w) else " " + w) for i, w in enumerate(words)], finish


def tool_arguments(schema: object) -> dict:
    props = schema.get("properties", {}) if isinstance(schema, dict) else {}
    values = {"string": "Paris", "number": 1, "integer": 1, "boolean": True, "array": [], "object": {}}
    return {name: values.get(spec.get("type") if isinstance(spec, dict) else None, "Paris") for name, spec in props.items()}


async def client_left_within(receive, seconds: float) -> bool:
    """Wait `seconds`, or less if the client disconnects (the request body is already read)."""
    try:
        async with asyncio.timeout(seconds):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return False
    return True


class DemoModel:
    def __init__(self, *, api_key: str | None = None, latency_ms: int = 0, chunk_delay_ms: int = 0):
        self.api_key = api_key
        self.defaults = {"latency_ms": latency_ms, "chunk_delay_ms": chunk_delay_ms}
        self.counter = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/healthz":
            return await self.json(send, 200, {"ok": True})
        if path == "/_demo/stats":
            if method == "DELETE":  # a test starting a new phase: counters from zero (in-flight stays true)
                inflight = stats["inflight"]
                stats.clear()
                stats["inflight"] = inflight
            return await self.json(send, 200, dict(stats))
        if self.api_key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if auth != f"Bearer {self.api_key}":
                return await self.error(send, 401, "Incorrect API key provided to the demo model.", "invalid_api_key")
        if path == "/v1/models" and method == "GET":
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "gatehouse"} for m in SERVED_MODELS]
            return await self.json(send, 200, {"object": "list", "data": data})
        handler = {
            "/v1/chat/completions": self.chat,
            "/v1/completions": self.completions,
            "/v1/embeddings": self.embeddings,
            "/v1/rerank": self.rerank,
            "/v1/responses": self.responses,
        }.get(path)
        if handler is not None and method == "POST":
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            return await handler(json.loads(body or b"{}"), receive, send)
        return await self.error(send, 404, f"No route for {method} {path}.", "unknown_url")

    async def chat(self, request: dict, receive, send) -> None:
        # The server counts its own concurrency, so a test can prove a gateway never exceeded a cap.
        stats["inflight"] += 1
        stats["max_inflight"] = max(stats["max_inflight"], stats["inflight"])
        try:
            await self._chat(request, receive, send)
        finally:
            stats["inflight"] -= 1

    async def _chat(self, request: dict, receive, send) -> None:
        stats["requests"] += 1
        model = str(request.get("model") or SERVED_MODELS[0])
        options = parse_options(model, request.get("metadata"), self.defaults)
        if options.get("latency_ms") and await client_left_within(receive, options["latency_ms"] / 1000):
            stats["cancelled"] += 1  # the caller (the gateway) hung up while we were "thinking"
            return
        if options.get("hang"):
            await asyncio.sleep(3600)
        if options.get("fail"):
            stats["failed"] += 1
            return await self.error(send, options["fail"], "The demo model was asked to fail.", "demo_failure")
        messages = request.get("messages") or []
        if not isinstance(messages, list):
            return await self.error(send, 400, "messages must be a list", "invalid_messages")
        prompt_tokens = sum(count_tokens(message_text(m)) for m in messages if isinstance(m, dict))
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        tools = request.get("tools") or []
        self.counter += 1
        completion_id = f"chatcmpl-demo{self.counter}"
        created = int(time.time())
        answered_tool = bool(messages) and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"
        if tools and request.get("tool_choice") != "none" and not answered_tool:
            function = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
            arguments = json.dumps(tool_arguments(function.get("parameters")))
            call = {
                "id": f"call_demo{self.counter}",
                "type": "function",
                "function": {"name": function.get("name", "tool"), "arguments": arguments},
            }
            tokens, finish = [], "tool_calls"
            completion_tokens = count_tokens(function.get("name", "")) + count_tokens(arguments)
        else:
            call = None
            tokens, finish = reply_tokens(messages, options, max_tokens)
            completion_tokens = len(tokens)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        if options.get("no_usage"):
            usage = None

        if not request.get("stream"):
            message = {"role": "assistant", "content": None if call else "".join(tokens)}
            if call:
                message["tool_calls"] = [call]
            body = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
                "usage": usage,
                "system_fingerprint": None,
            }
            stats["completed"] += 1
            return await self.json(send, 200, body)

        include_usage = bool((request.get("stream_options") or {}).get("include_usage")) and usage is not None
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
            }
        )
        disconnected = asyncio.Event()

        async def watch():
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
            deltas: list[dict] = [{"role": "assistant", "content": ""}]
            if call:
                deltas.append({"tool_calls": [{"index": 0, **call}]})
            deltas += [{"content": token} for token in tokens]
            for i, delta in enumerate(deltas):
                if options.get("stop_after") and i >= options["stop_after"]:
                    # An upstream that dies mid-answer: the stream just ends, no usage, no [DONE].
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                if disconnected.is_set():
                    stats["cancelled"] += 1
                    return
                chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}], "usage": None}
                await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True})
                if options.get("chunk_delay_ms") and i:
                    try:
                        await asyncio.wait_for(disconnected.wait(), options["chunk_delay_ms"] / 1000)
                    except TimeoutError:
                        pass
            if disconnected.is_set():
                stats["cancelled"] += 1
                return
            last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish, "logprobs": None}], "usage": None}
            body = b"data: " + json.dumps(last).encode() + b"\n\n"
            if include_usage:
                body += b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n"
            await send({"type": "http.response.body", "body": body + b"data: [DONE]\n\n", "more_body": False})
            stats["completed"] += 1
        finally:
            watcher.cancel()

    async def completions(self, request: dict, receive, send) -> None:
        """/v1/completions: the chat answer to the prompt as a user message, in the completions shape."""
        prompt = request.get("prompt")
        if isinstance(prompt, list):
            prompt = " ".join(p if isinstance(p, str) else " ".join(map(str, p)) if isinstance(p, list) else str(p) for p in prompt)
        chat = {**request, "messages": [{"role": "user", "content": str(prompt or "")}]}
        chat.pop("prompt", None)
        captured: list[dict] = []

        async def capture(message: dict) -> None:
            captured.append(message)

        await self.chat(chat, receive, capture)
        start = captured[0]
        if not request.get("stream") or start["status"] != 200:
            body = b"".join(m.get("body", b"") for m in captured[1:])
            if start["status"] == 200:
                data = json.loads(body)
                choice = data["choices"][0]
                data = {
                    **data,
                    "id": data["id"].replace("chatcmpl", "cmpl"),
                    "object": "text_completion",
                    "choices": [
                        {"index": 0, "text": choice["message"]["content"] or "", "finish_reason": choice["finish_reason"], "logprobs": None}
                    ],
                }
                body = json.dumps(data).encode()
            headers = [(k, v) for k, v in start["headers"] if k != b"content-length"] + [(b"content-length", str(len(body)).encode())]
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await send(start)
        for message in captured[1:]:
            out = []
            for event in message.get("body", b"").split(b"\n\n"):
                if not event.startswith(b"data: {"):
                    if event:
                        out.append(event)
                    continue
                chunk = json.loads(event[6:])
                chunk["object"] = "text_completion"
                chunk["choices"] = [
                    {"index": c["index"], "text": c["delta"].get("content") or "", "finish_reason": c["finish_reason"], "logprobs": None}
                    for c in chunk["choices"]
                ]
                out.append(b"data: " + json.dumps(chunk).encode())
            await send({**message, "body": b"".join(e + b"\n\n" for e in out)})

    async def responses(self, request: dict, receive, send) -> None:
        """A minimal Responses API: the chat answer to the input, as a Response object or its event stream."""
        items = request.get("input")
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else []
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and item.get("role"):
                content = item.get("content")
                text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content or () if isinstance(p, dict))
                messages.append({"role": item["role"], "content": text})
        if request.get("instructions"):
            messages.insert(0, {"role": "system", "content": request["instructions"]})
        chat = {
            "model": request.get("model"),
            "messages": messages,
            "max_tokens": request.get("max_output_tokens"),
            "metadata": request.get("metadata"),
        }
        captured: list[dict] = []

        async def capture(message: dict) -> None:
            captured.append(message)

        await self.chat(chat, receive, capture)
        if captured[0]["status"] != 200:
            for message in captured:
                await send(message)
            return
        answer = json.loads(b"".join(m.get("body", b"") for m in captured[1:]))
        text, usage = answer["choices"][0]["message"]["content"] or "", answer["usage"]
        rid = answer["id"].replace("chatcmpl-", "resp_")
        item = {
            "type": "message",
            "id": rid.replace("resp_", "msg_"),
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
        response = {
            "id": rid,
            "object": "response",
            "created_at": answer["created"],
            "status": "completed",
            "model": answer["model"],
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": usage["prompt_tokens"],
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": usage["completion_tokens"],
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": usage["total_tokens"],
            },
        }
        if not request.get("stream"):
            return await self.json(send, 200, response)
        events = [("response.created", {"response": {**response, "status": "in_progress", "output": [], "usage": None}})]
        events.append(("response.output_item.added", {"output_index": 0, "item": {**item, "status": "in_progress", "content": []}}))
        part = {"type": "output_text", "text": "", "annotations": []}
        events.append(("response.content_part.added", {"item_id": item["id"], "output_index": 0, "content_index": 0, "part": part}))
        for token in re.findall(r"\s*(?:\w+|[^\w\s])", text):
            events.append(("response.output_text.delta", {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": token}))
        events.append(("response.output_text.done", {"item_id": item["id"], "output_index": 0, "content_index": 0, "text": text}))
        events.append(("response.output_item.done", {"output_index": 0, "item": item}))
        events.append(("response.completed", {"response": response}))
        body = b"".join(
            b"event: " + kind.encode() + b"\ndata: " + json.dumps({"type": kind, **payload, "sequence_number": i}).encode() + b"\n\n"
            for i, (kind, payload) in enumerate(events)
        )
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": body})

    async def embeddings(self, request: dict, receive, send) -> None:
        """Deterministic unit vectors (from a hash of each input), `dimensions` long (default 16)."""
        stats["requests"] += 1
        model = str(request.get("model") or SERVED_MODELS[0])
        options = parse_options(model, request.get("metadata"), self.defaults)
        if options.get("fail"):
            return await self.error(send, options["fail"], "The demo model was asked to fail.", "demo_failure")
        inputs = request.get("input")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            return await self.error(send, 400, "input must be a string or a non-empty list", "invalid_input")
        dims = request.get("dimensions") or 16
        data, tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += count_tokens(item) if isinstance(item, str) else len(item)
            seed = hashlib.sha256(text.encode()).digest()
            raw = [((seed[j % 32] ^ (j * 31 % 251)) - 127.5) for j in range(dims)]
            norm = math.sqrt(sum(v * v for v in raw)) or 1.0
            vector = [v / norm for v in raw]
            if request.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            else:
                embedding = vector
            data.append({"object": "embedding", "index": i, "embedding": embedding})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        stats["completed"] += 1
        return await self.json(send, 200, {"object": "list", "data": data, "model": model, "usage": usage})

    async def rerank(self, request: dict, receive, send) -> None:
        """Scores each document by the share of the query's words it contains (vLLM's response shape)."""
        stats["requests"] += 1
        model = str(request.get("model") or SERVED_MODELS[0])
        query = str(request.get("query") or "")
        documents = request.get("documents") or []
        query_words = {w.lower() for w in TOKEN_RE.findall(query)}
        results, tokens = [], 0
        for i, document in enumerate(documents):
            text = document.get("text", "") if isinstance(document, dict) else str(document)
            words = {w.lower() for w in TOKEN_RE.findall(text)}
            tokens += count_tokens(query) + count_tokens(text)
            score = len(query_words & words) / (len(query_words) or 1)
            result = {"index": i, "relevance_score": round(score, 6)}
            if request.get("return_documents", True):
                result["document"] = {"text": text}
            results.append(result)
        results.sort(key=lambda r: (-r["relevance_score"], r["index"]))
        if request.get("top_n"):
            results = results[: request["top_n"]]
        stats["completed"] += 1
        body = {"id": f"rerank-demo{stats['requests']}", "model": model, "usage": {"total_tokens": tokens}, "results": results}
        return await self.json(send, 200, body)

    @staticmethod
    async def json(send, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def error(self, send, status: int, message: str, code: str) -> None:
        error_type = "invalid_request_error" if status < 500 else "server_error"
        await self.json(send, status, {"error": {"message": message, "type": error_type, "param": None, "code": code}})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Gatehouse demo model: a deterministic OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_MODEL_PORT", "8001")))
    parser.add_argument("--api-key", default=os.environ.get("DEMO_MODEL_API_KEY") or None, help="require this Bearer key")
    parser.add_argument("--latency-ms", type=int, default=0, help="default delay before answering")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="default delay between streamed chunks")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    app = DemoModel(api_key=args.api_key, latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms)
    if args.workers > 1:
        # uvicorn needs an import string to fork workers; the factory reads the same flags from the environment.
        os.environ.update(
            DEMO_MODEL_API_KEY=args.api_key or "",
            DEMO_MODEL_LATENCY_MS=str(args.latency_ms),
            DEMO_MODEL_CHUNK_DELAY_MS=str(args.chunk_delay_ms),
        )
        uvicorn.run(
            "deployments.demo_model:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level="warning",
            access_log=False,
            loop="uvloop",
            http="httptools",
        )
    else:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools")


def app_from_env() -> DemoModel:
    return DemoModel(
        api_key=os.environ.get("DEMO_MODEL_API_KEY") or None,
        latency_ms=int(os.environ.get("DEMO_MODEL_LATENCY_MS", "0")),
        chunk_delay_ms=int(os.environ.get("DEMO_MODEL_CHUNK_DELAY_MS", "0")),
    )


if __name__ == "__main__":
    main()
