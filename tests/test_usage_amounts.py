"""Amounts on cards, tables, charts and CSVs: small ones keep two significant digits."""

from __future__ import annotations

from decimal import Decimal

import pytest

from usage.amounts import amount_text
from usage.charts import _value_text


@pytest.mark.parametrize(
    "exact, shown",
    [
        ("0.0016", "0.0016"),  # read 0.00 before
        ("0.00159", "0.0016"),
        ("12.5", "12.50"),
        ("0.000012", "0.000012"),
        ("0.0000123", "0.000012"),
        ("0.012", "0.012"),
        ("0.0999", "0.10"),  # rounds up into cents
        ("0.15", "0.15"),
        ("1234.567", "1234.57"),
        ("0", "0.00"),
        ("0.0000001", "0.000000"),  # below six decimals: the cap
    ],
)
def test_small_amounts_keep_two_significant_digits_up_to_six_decimals(exact, shown):
    assert amount_text(Decimal(exact)) == shown


def test_allocated_cents_are_shown_from_ten_cents_up_and_the_exact_amount_below():
    assert amount_text(Decimal("3.333"), Decimal("3.34")) == "3.34"  # a column of cents still adds up
    assert amount_text(Decimal("0.004"), Decimal("0.01")) == "0.0040"  # not the cent allocated to it


def test_chart_hover_text_uses_the_same_rule():
    assert _value_text(Decimal("0.0016"), money=True) == "0.0016"
    assert _value_text(12, money=False) == "12"
