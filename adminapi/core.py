"""The admin API's frame: authentication by admin key, rate limit, one error shape, cursor
pagination and idempotent creates. The endpoints (adminapi/routes_*.py) only check access through
the console's access_* chokepoints and call the same services the console views call."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.http import Http404, HttpRequest
from django.utils import timezone
from ninja import Header, NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError
from ninja.errors import ValidationError as SchemaValidationError
from ninja.responses import Status
from ninja.security import HttpBearer

from adminapi.models import IdempotentRequest
from adminapi.services import AdminKeyPrincipal, AdminKeyRefused, admin_key_authenticate
from lib import ratelimit
from lib.net import client_ip


class ErrorDetail(Schema):
    code: str
    message: str
    fields: dict[str, list[str]] | None = None


class ErrorOut(Schema):
    """Every error: a stable `code` to branch on, a `message` for people, per-field messages for 422."""

    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, fields: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields, self.headers = status, code, message, fields, headers or {}


class AdminKeyAuth(HttpBearer):
    """Authorization: Bearer gh_admin_… and nothing else. Cookies are never read, so a browser
    session cannot call the API and CSRF does not apply."""

    openapi_description = "An admin key (gh_admin_…) created on the workspace's Settings → Admin API page."

    def __call__(self, request: HttpRequest):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthenticated", "Send an admin key as 'Authorization: Bearer gh_admin_…'. Cookies are not accepted.")
        return self.authenticate(request, token.strip())

    def authenticate(self, request: HttpRequest, token: str) -> AdminKeyPrincipal:
        try:
            principal = admin_key_authenticate(token, ip=client_ip(request))
        except AdminKeyRefused as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None
        allowed, retry_after = ratelimit.allow(f"adminapi:{principal.admin_key.pk}", settings.ADMIN_API_REQUESTS_PER_MINUTE)
        if not allowed:
            raise ApiError(
                429,
                "rate_limited",
                f"This admin key made more than {settings.ADMIN_API_REQUESTS_PER_MINUTE} requests this minute; retry after {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )
        return principal


class AdminNinjaAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation) -> str:
        # The handler's own name (list_workspaces, create_api_key): what generated clients call it.
        return operation.view_func.__name__


api = AdminNinjaAPI(
    title="Gatehouse admin API",
    version="1",
    description=(
        "Manage workspaces, members, deployments, grants, API keys, budgets, audit events and usage as code. "
        'Authenticate with an admin key; errors are `{"error": {"code", "message", "fields"}}`; lists are '
        "cursor-paginated (`limit`, `cursor` → `next_cursor`); creates accept an `Idempotency-Key` header."
    ),
    auth=AdminKeyAuth(),
    docs_url=None,
    openapi_url="/openapi.json",
    urls_namespace="adminapi",
)


def _error(request: HttpRequest, status: int, code: str, message: str, fields: dict | None = None, headers: dict | None = None):
    response = api.create_response(request, {"error": {"code": code, "message": message, "fields": fields}}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


@api.exception_handler(ApiError)
def _api_error(request, exc: ApiError):
    return _error(request, exc.status, exc.code, exc.message, exc.fields, exc.headers)


@api.exception_handler(Http404)
def _not_found(request, exc):
    # Outsiders and missing ids get the same answer (the chokepoints raise Http404 for both).
    return _error(request, 404, "not_found", "Not found.")


@api.exception_handler(PermissionDenied)
def _forbidden(request, exc):
    return _error(request, 403, "permission_denied", str(exc) or "This admin key's role may not do this.")


@api.exception_handler(ValidationError)
def _invalid(request, exc: ValidationError):
    if hasattr(exc, "error_dict"):
        fields = {("non_field" if name == "__all__" else name): messages for name, messages in exc.message_dict.items()}
        return _error(request, 422, "validation_failed", "The request was refused; nothing was changed.", fields)
    return _error(request, 422, "validation_failed", " ".join(exc.messages))


@api.exception_handler(SchemaValidationError)
def _schema_invalid(request, exc: SchemaValidationError):
    fields: dict[str, list[str]] = {}
    for error in exc.errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "payload")]
        fields.setdefault(".".join(loc) or "non_field", []).append(error.get("msg", "invalid"))
    return _error(request, 422, "invalid_request", "The request does not match the schema; nothing was changed.", fields)


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc):
    return _error(request, 401, "unauthenticated", "Send an admin key as 'Authorization: Bearer gh_admin_…'.")


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}
    return _error(request, exc.status_code, codes.get(exc.status_code, "error"), str(exc))


def principal(request: HttpRequest) -> AdminKeyPrincipal:
    return request.auth


# ---- cursor pagination -------------------------------------------------------------------------

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        raise ApiError(422, "invalid_cursor", "This cursor was not issued by this API (pass next_cursor back unchanged).") from None


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ApiError(422, "invalid_request", f"limit must be from 1 to {MAX_LIMIT}.", fields={"limit": ["out of range"]})
    return limit


def page_by_id(queryset, *, cursor: str | None, limit: int, descending: bool = False) -> tuple[list, str | None]:
    """Keyset pagination on the primary key: stable while rows are added, no offset scans."""
    limit = check_limit(limit)
    after = decode_cursor(cursor)
    if after is not None:
        if not isinstance(after, int):
            raise ApiError(422, "invalid_cursor", "This cursor was not issued by this API.")
        queryset = queryset.filter(**{"pk__lt" if descending else "pk__gt": after})
    rows = list(queryset.order_by("-pk" if descending else "pk")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1].pk) if more else None)


def page_list(items: list, *, cursor: str | None, limit: int) -> tuple[list, str | None]:
    """Pagination of a computed list (usage rows): the cursor is the position."""
    limit = check_limit(limit)
    start = decode_cursor(cursor) or 0
    if not isinstance(start, int) or start < 0:
        raise ApiError(422, "invalid_cursor", "This cursor was not issued by this API.")
    chunk = items[start : start + limit]
    return chunk, (encode_cursor(start + limit) if start + limit < len(items) else None)


# ---- idempotent creates ------------------------------------------------------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"
IDEMPOTENCY_TTL = timedelta(hours=24)
# Declared on every create, so the schema (and clients generated from it) carry the header.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        description="Any unique string (1–200 characters): a retry with the same key and body gets the first response back.",
    ),
]


def idempotent(request: HttpRequest, create: Callable[[], tuple[int, dict]], *, secret_fields: tuple[str, ...] = ()):
    """Run `create` once per Idempotency-Key: a retry with the same key and body gets the first
    response again (Idempotent-Replayed: true), with a different body a 409. The stored copy never
    holds a secret: `secret_fields` are null in a replay (the secret was shown once)."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return Status(*create())
    if not 1 <= len(key) <= 200:
        raise ApiError(422, "invalid_request", "The Idempotency-Key header must be 1–200 characters.")
    admin_key = principal(request).admin_key
    digest = hashlib.sha256(b"\0".join([request.method.encode(), request.path.encode(), request.body])).hexdigest()
    with transaction.atomic():
        # Kept for a day, like the retries they serve; older keys may be used again.
        IdempotentRequest.objects.filter(admin_key=admin_key, created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
        try:
            with transaction.atomic():
                record = IdempotentRequest.objects.create(
                    admin_key=admin_key, key=key, method=request.method, path=request.path[:500], request_digest=digest
                )
        except IntegrityError:
            record = IdempotentRequest.objects.select_for_update().get(admin_key=admin_key, key=key)
            if record.request_digest != digest:
                raise ApiError(
                    409, "idempotency_conflict", "This Idempotency-Key was used for a different request; use a new key."
                ) from None
            if record.status_code is None:
                raise ApiError(409, "idempotency_in_progress", "A request with this Idempotency-Key is still being processed.") from None
            response = api.create_response(request, record.response_body, status=record.status_code)
            response["Idempotent-Replayed"] = "true"
            return response
        # The create and its record commit together: a failed create leaves no record, so the
        # retry runs it again.
        status, body = create()
        body = json.loads(api.renderer.render(request, body, response_status=status))
        stored = {name: (None if name in secret_fields else value) for name, value in body.items()}
        IdempotentRequest.objects.filter(pk=record.pk).update(status_code=status, response_body=stored)
    return api.create_response(request, body, status=status)
