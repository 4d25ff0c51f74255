"""Application access key format: pure functions, no Django models, no I/O.

    gh_live_<40 base62 chars of randomness><6 base62 chars of CRC32>

- the typed prefix lets secret scanners find leaked keys (see README for the regex);
- 40 base62 characters carry 238 bits from `secrets`;
- the CRC32 suffix lets the gateway reject a mistyped or made-up key without any lookup.

Admin keys (adminapi/) use the same format and digest with their own prefix, `gh_admin_`, so a
scanner tells them apart and neither kind passes the other's format check (the gateway refuses an
admin key before any lookup; the admin API refuses an application key the same way).

Only HMAC-SHA256(API_KEY_PEPPER, key) is stored; compare digests with hmac.compare_digest.
"""

from __future__ import annotations

import hmac
import re
import secrets
import zlib
from hashlib import sha256

PREFIX = "gh_live_"
ADMIN_PREFIX = "gh_admin_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
_BODY_REGEX = re.compile(rf"^[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str, prefix: str = PREFIX) -> str:
    return _base62(zlib.crc32((prefix + body).encode()), CHECKSUM_LENGTH)


def generate(prefix: str = PREFIX) -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return prefix + body + _checksum(body, prefix)


def is_well_formed(key: str, prefix: str = PREFIX) -> bool:
    """Format and checksum only: cheap, constant-ish time, no lookup."""
    if len(key) != len(prefix) + BODY_LENGTH + CHECKSUM_LENGTH or not key.startswith(prefix):
        return False
    rest = key[len(prefix) :]
    if not _BODY_REGEX.match(rest):
        return False
    body, checksum = rest[:-CHECKSUM_LENGTH], rest[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(checksum, _checksum(body, prefix))


def digest(key: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), sha256).hexdigest()


def display_hint(key: str, prefix: str = PREFIX) -> str:
    return f"{prefix}…{key[-4:]}"
