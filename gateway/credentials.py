"""Credential parsing: the key from a request header, format and checksum checked with no I/O."""

from __future__ import annotations

from gateway import errors
from keys import tokens

MAX_CREDENTIAL_LENGTH = 200


def parse_bearer(raw: bytes | None, header: str) -> str:
    """The key from an Authorization or X-Apig-AppCode header value; GatewayError(401) otherwise.

    Format and checksum are checked here, before any lookup: a malformed credential never
    reaches the database, the cache or Redis.
    """
    if not raw:
        raise errors.missing_key(header)
    if len(raw) > MAX_CREDENTIAL_LENGTH:
        raise errors.invalid_key()
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise errors.invalid_key() from None
    if header == "Authorization":
        scheme, _, value = value.partition(" ")
        if scheme.lower() != "bearer":
            raise errors.invalid_key()
        value = value.strip()
    if not tokens.is_well_formed(value):
        raise errors.invalid_key()
    return value
