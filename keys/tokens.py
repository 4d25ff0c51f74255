"""Application access key format: pure functions, no Django models, no I/O.

    gh_live_<40 base62 chars of randomness><6 base62 chars of CRC32>

- the typed prefix lets secret scanners find leaked keys (see README for the regex);
- 40 base62 characters carry 238 bits from `secrets`;
- the CRC32 suffix lets the gateway reject a mistyped or made-up key without any lookup.

Only HMAC-SHA256(API_KEY_PEPPER, key) is stored; compare digests with hmac.compare_digest.
"""

from __future__ import annotations

import hmac
import re
import secrets
import zlib
from hashlib import sha256

PREFIX = "gh_live_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 40
CHECKSUM_LENGTH = 6
KEY_LENGTH = len(PREFIX) + BODY_LENGTH + CHECKSUM_LENGTH
KEY_REGEX = re.compile(rf"^{PREFIX}[0-9A-Za-z]{{{BODY_LENGTH}}}[0-9A-Za-z]{{{CHECKSUM_LENGTH}}}$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32((PREFIX + body).encode()), CHECKSUM_LENGTH)


def generate() -> str:
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    return PREFIX + body + _checksum(body)


def is_well_formed(key: str) -> bool:
    """Format and checksum only: cheap, constant-ish time, no lookup."""
    if len(key) != KEY_LENGTH or not KEY_REGEX.match(key):
        return False
    body, checksum = key[len(PREFIX) : -CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return hmac.compare_digest(checksum, _checksum(body))


def digest(key: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), sha256).hexdigest()


def display_hint(key: str) -> str:
    return f"{PREFIX}…{key[-4:]}"
