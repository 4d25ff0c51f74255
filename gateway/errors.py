"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the status codes the
official SDKs map to exception classes (400 BadRequest, 401 Authentication, 403 PermissionDenied,
404 NotFound, 413, 429 RateLimit, 5xx InternalServer)."""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.type, self.param = status, message, code, type, param
        self.headers = headers or []

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}})


def invalid_key() -> GatewayError:
    # One answer for unknown, malformed, expired and revoked keys: no hint whether a key exists.
    return GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")


def too_many_auth_failures(retry_after: int) -> GatewayError:
    return GatewayError(
        429,
        f"Too many requests with unknown API keys from this address; retry after {retry_after} s.",
        code="too_many_auth_failures",
        type="rate_limit_error",
        headers=[(b"retry-after", str(retry_after).encode())],
    )


def missing_key(header: str) -> GatewayError:
    return GatewayError(401, f"No API key provided. Send it in the {header} header.", code="missing_api_key")


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, code=code, param=param)


def model_not_found(model: str) -> GatewayError:
    # The same answer for a model that does not exist and one the key may not call.
    shown = model if len(model) <= 200 else model[:200] + "…"
    return GatewayError(404, f"The model `{shown}` does not exist or you do not have access to it.", code="model_not_found", param="model")


def _needs(prompt: int, floor: int, choices: int, asked: int | None) -> str:
    completion = f"{floor} completion tokens" + (f" × {choices} choices" if choices > 1 else "")
    wanted = f"; it asked for up to {asked} completion tokens" if asked is not None else ""
    return f"at least {prompt + floor * choices} ({prompt} prompt tokens + {completion}{wanted})"


def tpm_exceeded(retry_after: int, limit: int, *, remaining: int, prompt: int, floor: int, choices: int, asked: int | None) -> GatewayError:
    needs = _needs(prompt, floor, choices, asked)
    if prompt + floor * choices > limit:
        message = f"This request needs {needs}, more than this key's limit of {limit} tokens per minute; shorten the prompt."
    else:
        message = (
            f"Rate limit reached: this key may use {limit} tokens per minute and {remaining} remain in the current window "
            f"(tokens of requests in flight count until they finish); this request needs {needs}. Retry after {retry_after} s."
        )
    return GatewayError(
        429, message, code="rate_limit_exceeded", type="rate_limit_error", headers=[(b"retry-after", str(retry_after).encode())]
    )


def quota_exceeded(limit: int, *, remaining: int, prompt: int, floor: int, choices: int, asked: int | None) -> GatewayError:
    return GatewayError(
        429,
        f"This key's yearly token limit is {limit} tokens and {remaining} remain this year (tokens of requests in flight "
        f"count until they finish); this request needs {_needs(prompt, floor, choices, asked)}.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def workspace_archived() -> GatewayError:
    # Only a caller holding a working key gets this far, so naming the reason reveals nothing.
    return GatewayError(
        403,
        "This key belongs to an archived workspace; its keys are refused until an admin unarchives it.",
        code="workspace_archived",
        type="permission_error",
    )


def budget_exhausted() -> GatewayError:
    return GatewayError(
        429,
        "This workspace has used its monthly budget; requests are refused until the budget is raised or the month ends.",
        code="insufficient_quota",
        type="insufficient_quota",
    )


def limiter_unavailable() -> GatewayError:
    return GatewayError(
        503,
        "Quota checks are unavailable (Redis cannot be reached); refusing requests until it is back.",
        code="limiter_unavailable",
        type="server_error",
    )


def usage_unrecorded() -> GatewayError:
    return GatewayError(
        503, "The usage record for this request could not be written; it was not completed.", code="usage_unavailable", type="server_error"
    )
