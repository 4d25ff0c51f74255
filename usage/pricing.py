"""The cost of a call: the one formula for every place that prices tokens (the gateway's usage
events, console test calls, the demo data), so a bill and a test call can never disagree."""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

MILLION = Decimal(1_000_000)
NANO = Decimal("0.000000001")  # what every cost column stores (decimal_places=9)


class PerMillionPrice(Protocol):
    input_per_million: Decimal
    output_per_million: Decimal


def token_cost(prompt_tokens: int, completion_tokens: int, price: PerMillionPrice | None) -> Decimal:
    """Prompt and completion tokens at a per-million price, rounded to the 9 places stored; no price costs 0."""
    if price is None:
        return Decimal(0)
    cost = (Decimal(prompt_tokens) * price.input_per_million + Decimal(completion_tokens) * price.output_per_million) / MILLION
    return cost.quantize(NANO)
