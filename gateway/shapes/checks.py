"""Small body checks shared by the shapes (the OpenAI error body names the parameter)."""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.validation import REFUSED_FIELDS


def integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_object(body: object) -> dict:
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    for name in REFUSED_FIELDS.intersection(body):
        raise bad_request(f"The field `{name}` is not accepted by this gateway.", param=name, code="unsupported_parameter")
    return body


def model(body: dict, required: bool = True) -> str | None:
    value = body.get("model")
    if required or value is not None:
        if not isinstance(value, str) or not value.strip():
            raise bad_request("You must provide a model parameter.", param="model", code="missing_required_parameter")
    return value


def positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is not None and not (integer(value) and value > 0):
        raise bad_request(f"`{name}` must be a positive integer.", param=name)
    return value


def boolean(body: dict, name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad_request(f"`{name}` must be a boolean.", param=name)
    return bool(value)


def text_or_tokens(value, name: str) -> int:
    """A string, an array of strings, an array of token ids or an array of token arrays (the
    OpenAI `input` / `prompt` forms); returns a token estimate (about 3 characters a token)."""
    if isinstance(value, str):
        return len(value) // 3 + 1
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return sum(len(v) // 3 + 1 for v in value)
        if all(integer(v) for v in value):
            return len(value)
        if all(isinstance(v, list) and v and all(integer(t) for t in v) for v in value):
            return sum(len(v) for v in value)
    raise bad_request(
        f"`{name}` must be a string, an array of strings, an array of token ids or an array of token-id arrays (non-empty).",
        param=name,
    )
