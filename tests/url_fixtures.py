"""URL parameter values for the URLconf walk in test_urls.py, one entry per parameter name."""

from __future__ import annotations


def extra_values(world) -> dict:
    return {}
