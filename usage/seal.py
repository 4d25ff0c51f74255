"""The seal on a usage event: an HMAC of what it bills, stamped when it is written.

Usage events are append-only (a PostgreSQL trigger refuses UPDATE and DELETE), but a database
superuser, a restore from a doctored dump or the SQLite embedded default can still change one.
Reconciliation re-computes the seal of the events of a day whose rollups no longer match and
reports those whose seal fails, instead of recomputing the bill from the changed values.

The key is derived from SECRET_KEY (SECRET_KEY_FALLBACKS are tried too, so rotating the key does
not flag old events). api_key and deployment are not sealed: deleting a key or deployment sets
them to NULL (on_delete=SET_NULL), which must not look like tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from datetime import UTC
from functools import cache

from django.conf import settings

SEALED = (
    "request_id",
    "created_at",
    "workspace_id",
    "model",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated",
    "status_code",
    "error_code",
    "aborted",
    "streamed",
    "is_test_call",
    "latency_ms",
    "ttft_ms",
    "client_ip",
    "input_price_per_million",
    "output_price_per_million",
    "currency",
    "cost",
)


@cache
def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), b"gatehouse usage event seal v1", hashlib.sha256).digest()


def _canonical(values: Mapping) -> bytes:
    parts = []
    for name in SEALED:
        value = values[name]
        if name == "created_at":
            value = value.astimezone(UTC).isoformat()
        elif name == "client_ip" and value:
            value = ipaddress.ip_address(value).compressed
        elif name in ("input_price_per_million", "output_price_per_million"):
            value = f"{value:.6f}"  # the column's scale: 2 and 2.000000 are the same price
        elif name == "cost":
            value = f"{value:.9f}"
        elif isinstance(value, bool):
            value = int(value)
        parts.append("" if value is None else str(value))
    return "\x1f".join(parts).encode()


def event_seal(values: Mapping) -> str:
    """The seal of an event given as a dict of column values (gateway.metering.event_row's row)."""
    return hmac.new(_key(settings.SECRET_KEY), _canonical(values), hashlib.sha256).hexdigest()[:32]


def seal_matches(values: Mapping, seal: str) -> bool:
    message = _canonical(values)
    for secret in (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())):
        expected = hmac.new(_key(secret), message, hashlib.sha256).hexdigest()[:32]
        if hmac.compare_digest(expected, seal):
            return True
    return False
