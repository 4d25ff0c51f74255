"""What a usage event's error code means, as a person reads it (the Usage page, a key's page)."""

from __future__ import annotations

# Error codes as a person reads them: what the gateway refused and why, or what failed.
ERROR_REASONS = {
    "ip_not_allowed": "Client IP not in the key's allowlist",
    "rate_limit_exceeded": "Tokens-per-minute limit reached",
    "insufficient_quota": "Yearly token limit reached",
    "budget_exhausted": "Monthly budget used up (requests blocked)",
    "invalid_value": "Invalid parameter",
    "invalid_json": "Body is not valid JSON",
    "unsupported_parameter": "Unsupported parameter",
    "model_not_found": "Model not in the key's scope",
    "unsupported_model": "Model does not serve this API",
    "missing_required_parameter": "Required parameter missing",
    "capacity_exceeded": "Every replica busy and the queue full",
    "upstream_forbidden": "Model server refused the upstream credential",
    "auth_unavailable": "Keys could not be checked (database down)",
    "request_too_large": "Request body too large",
    "key_expired": "Key expired",
    "key_revoked": "Key revoked",
    "workspace_archived": "Workspace archived",
    "secret_rotated": "Secret rotated away",
    "deployment_unavailable": "Deployment stopped or failed",
    "limiter_unavailable": "Limits could not be checked (Redis down)",
    "key_changed": "Key changed during the request",
    "upstream_error": "Model server error",
    "upstream_timeout": "Model server timed out",
    "upstream_unreachable": "Model server unreachable",
    "upstream_rate_limited": "Model server rate limited",
    "upstream_rejected": "Model server rejected the request",
    "upstream_incomplete": "Model server ended the stream early",
    "upstream_invalid": "Model server sent an invalid answer",
    "upstream_credential": "Upstream credential unreadable",
    "client_disconnected": "Client disconnected",
    "usage_unavailable": "Usage could not be recorded",
    "internal_error": "Gateway error",
}


def error_reason_text(code: str, status: int) -> str:
    return ERROR_REASONS.get(code) or (code.replace("_", " ").capitalize() if code else f"HTTP {status}")
