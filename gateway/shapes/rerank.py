"""Rerank (`POST /v1/rerank`, the vLLM / Jina / Cohere shape) → the upstream's /v1/rerank.

`query` and `documents` (strings, or objects with `text`), optional `top_n` and
`return_documents`; the answer passes through. Usage: `usage.prompt_tokens` or
`usage.total_tokens` (vLLM, Jina), else Cohere's `meta.billed_units.input_tokens`; all input.
"""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.shapes import Call, Shape, chat
from gateway.shapes.checks import boolean, json_object, model, positive_int
from gateway.tokenizer import count_texts_async

MAX_DOCUMENTS = 1000


def parse(payload: object, model_required: bool) -> Call:
    body = json_object(payload)
    name = model(body)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise bad_request("`query` must be a non-empty string.", param="query", code="missing_required_parameter")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents or len(documents) > MAX_DOCUMENTS:
        raise bad_request(f"`documents` must be an array of 1 to {MAX_DOCUMENTS} documents.", param="documents")
    chars = len(query) * len(documents)
    for i, document in enumerate(documents):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str):
            raise bad_request(f"documents[{i}] must be a string or an object with a string `text`.", param=f"documents.[{i}]")
        chars += len(text)
    positive_int(body, "top_n")
    boolean(body, "return_documents")
    if body.get("stream"):
        raise bad_request("Rerank cannot be streamed.", param="stream")
    return Call(body=body, model=name, prompt_estimate=chars // 3 + len(documents), completion_budget=0)


def usage(data: dict) -> tuple[int, int] | None:
    block = data.get("usage")
    if isinstance(block, dict):
        tokens = block.get("prompt_tokens", block.get("total_tokens"))
        if isinstance(tokens, int):
            return tokens, 0
    billed = (data.get("meta") or {}).get("billed_units") if isinstance(data.get("meta"), dict) else None
    if isinstance(billed, dict) and isinstance(billed.get("input_tokens"), int):
        return billed["input_tokens"], 0
    return None


def estimate_completion(data: dict) -> int:
    return 0


def relay(call: Call, route, request_id: str):
    raise AssertionError("rerank is never streamed")


async def count(call: Call, counter) -> int:
    """With the route's tokenizer: a reranker reads the query beside each document (vLLM scores
    query-document pairs), plus a separator per pair."""
    documents = call.body["documents"]
    texts = [document.get("text") if isinstance(document, dict) else document for document in documents]
    query = await count_texts_async([call.body["query"]], 0, counter)
    return query * len(texts) + await count_texts_async(texts, len(texts), counter)


SHAPE = Shape(
    endpoint="rerank",
    upstream_path="/rerank",
    credential=chat.credential,
    parse=parse,
    respond=chat.respond,
    usage=usage,
    estimate_completion=estimate_completion,
    relay=relay,
    error_body=chat.error_body,
    count=count,
    cap_param=None,
    model_kind="rerank",
)
