"""How amounts of money are written on cards, tables and CSVs (bills and statements stay in cents).

A small amount gets as many decimals as it needs for two significant digits, up to six
(0.0016, 0.000012), instead of reading 0.00; from 0.10 up it is written in cents (12.50). Where a
table's rows were allocated cents so that they add up to its total (usage.selectors), the
allocated cents are what is written for those amounts, so a column of cents still adds up.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")
SMALL = Decimal("0.1")  # below this, cents show fewer than two significant digits
MAX_PLACES = 6


def amount_text(exact: Decimal | int | None, cents: Decimal | None = None) -> str:
    """`exact` written for a person: cents from 0.10 up (the allocated `cents` when given),
    otherwise two significant digits (at most six decimals). Zero is "0.00"."""
    value = Decimal(exact or 0)
    if abs(value) >= SMALL or value == 0:
        shown = cents if cents is not None else value.quantize(CENT, rounding=ROUND_HALF_UP)
        return f"{shown:.2f}"
    # adjusted() is the exponent of the first significant digit: 0.0016 → -3, so 4 places.
    places = min(MAX_PLACES, max(2, 1 - value.adjusted()))
    rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if abs(rounded) >= SMALL:  # 0.0999 rounds up to 0.10, which cents already write with two digits
        return f"{rounded:.2f}"
    return f"{rounded:f}"
