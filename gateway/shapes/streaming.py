"""A relay base for shapes that translate the upstream's chat-completions stream into another
API's events: SseRelay's framing, usage capture and delivered-text counting, with the client's
bytes produced by `translate(chunk)` instead of passed through."""

from __future__ import annotations

import orjson

from gateway.proxy import SseRelay


class TranslatingRelay(SseRelay):
    def __init__(self, *, client_model: str, upstream_model: str):
        super().__init__(client_model=client_model, upstream_model=upstream_model, client_wants_usage=False)
        self.finish_reason: str | None = None

    def _event(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data:"):
            return None
        data = event[5:].strip()
        if data == b"[DONE]":
            self.state.saw_done = True
            return None
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(chunk, dict):
            return None
        if chunk.get("usage"):
            self.state.usage = chunk["usage"]
        out = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # one output: n > 1 is not offered by the translated APIs
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if content:
                    self.state.delivered_chars += len(content)
                    self.state.delivered_chunks += 1
                    out.append(self.text(content))
                for call in delta.get("tool_calls") or ():
                    if isinstance(call, dict) and isinstance(call.get("function"), dict):
                        function = call["function"]
                        self.state.delivered_chars += len(function.get("arguments") or "") + len(function.get("name") or "")
                        self.state.delivered_chunks += 1
                        out.append(
                            self.tool_call(call.get("index", 0), call.get("id"), function.get("name"), function.get("arguments") or "")
                        )
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out) or None

    # ---- what a subclass writes --------------------------------------------------------------
    def text(self, delta: str) -> bytes:
        raise NotImplementedError

    def tool_call(self, index: int, call_id: str | None, name: str | None, arguments: str) -> bytes:
        raise NotImplementedError

    def closing(self, error, usage: tuple[int, int] = (0, 0)) -> bytes:
        raise NotImplementedError
