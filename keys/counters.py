"""Where the gateway keeps a key's live limit counters in Redis, and how the console reads them.

The gateway (gateway/limits.py) writes these keys from its admission script; the usage pages only
read them. Both import the names from here, so a renamed key cannot silently show zero.

TPM is a hash of per-second buckets (field: unix second, value: tokens reserved or settled in that
second); the window is the last TPM_WINDOW_SECONDS seconds, the oldest being now - 59, as the
admission script counts it. The yearly counter is one integer per key and calendar year in the
key's workspace time zone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

TPM_WINDOW_SECONDS = 60


def tpm_counter_key(public_id: str) -> str:
    return f"gatehouse:tpm:{public_id}"


def yearly_counter_key(public_id: str, year: int) -> str:
    return f"gatehouse:yearly:{public_id}:{year}"


def tpm_window_sum(buckets: dict, now: int) -> int:
    """Tokens in the sliding window ending at `now` (a unix second), from a TPM hash's contents."""
    oldest = now - (TPM_WINDOW_SECONDS - 1)
    return sum(int(amount) for second, amount in buckets.items() if int(second) >= oldest)


def tpm_used_this_minute(redis, public_ids: Iterable[str], *, now: int | None = None) -> dict[str, int]:
    """Tokens each key has used in the current TPM window, one round trip (synchronous client).

    Raises whatever the client raises when Redis is unreachable: the caller decides what to show.
    """
    ids = list(public_ids)
    if not ids:
        return {}
    now = int(time.time()) if now is None else now
    pipe = redis.pipeline(transaction=False)
    for public_id in ids:
        pipe.hgetall(tpm_counter_key(public_id))
    return {public_id: tpm_window_sum(buckets, now) for public_id, buckets in zip(ids, pipe.execute(), strict=True)}
