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
def _keyed(secret: str):
    """An HMAC already keyed for this secret; each seal copies it (no key setup per event)."""
    key = hmac.new(secret.encode(), b"gatehouse usage event seal v1", hashlib.sha256).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(secret: str, message: bytes) -> str:
    mac = _keyed(secret).copy()
    mac.update(message)
    return mac.hexdigest()[:32]


def _canonical(v: Mapping) -> bytes:
    """The sealed columns (SEALED), in order, in a form the database gives back unchanged."""
    ip, ttft = v["client_ip"], v["ttft_ms"]
    return "\x1f".join(
        (
            v["request_id"],
            v["created_at"].astimezone(UTC).isoformat(),
            str(v["workspace_id"]),
            v["model"],
            v["endpoint"],
            str(v["prompt_tokens"]),
            str(v["completion_tokens"]),
            str(v["total_tokens"]),
            "1" if v["estimated"] else "0",
            str(v["status_code"]),
            v["error_code"],
            "1" if v["aborted"] else "0",
            "1" if v["streamed"] else "0",
            "1" if v["is_test_call"] else "0",
            str(v["latency_ms"]),
            "" if ttft is None else str(ttft),
            ipaddress.ip_address(ip).compressed if ip else "",
            # The columns' scales: 2 and 2.000000 are the same price.
            f"{v['input_price_per_million']:.6f}",
            f"{v['output_price_per_million']:.6f}",
            v["currency"],
            f"{v['cost']:.9f}",
        )
    ).encode()


def event_seal(values: Mapping) -> str:
    """The seal of an event given as a dict of column values (gateway.metering.event_row's row)."""
    return _mac(settings.SECRET_KEY, _canonical(values))


def seal_matches(values: Mapping, seal: str) -> bool:
    message = _canonical(values)
    for secret in (settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", ())):
        if hmac.compare_digest(_mac(secret, message), seal):
            return True
    return False
