"""Encryption at rest for secrets we must be able to read back (upstream and BYOK provider keys).

Fernet (AES-128-CBC + HMAC-SHA256) from `cryptography`. The key comes from ENCRYPTION_KEY, or
is derived from SECRET_KEY with HKDF so a small install needs one secret fewer.
"""

from __future__ import annotations

import base64
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings


@cache
def _fernet() -> Fernet:
    material = (settings.ENCRYPTION_KEY or settings.SECRET_KEY).encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"gatehouse-at-rest", info=b"fernet").derive(material)
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("stored secret cannot be decrypted with the configured ENCRYPTION_KEY/SECRET_KEY") from None
