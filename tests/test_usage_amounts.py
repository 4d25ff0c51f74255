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


@pytest.mark.parametrize(
    "peak, ticks",
    [
        (1, ["0", "1"]),
        (3, ["0", "1", "2", "3"]),
        (10, ["0", "5", "10"]),
        (100, ["0", "25", "50", "75", "100"]),
        (4000, ["0", "1k", "2k", "3k", "4k"]),
    ],
)
def test_count_axes_tick_on_whole_numbers(peak, ticks):
    """A day with one request read 0, 0.2, 0.4 … 1 on its y axis, ten read 2.5 and 7.5: counts
    (requests, tokens) now tick on whole numbers."""
    from datetime import datetime

    from usage.charts import Series, bar_chart

    periods = [{"local": datetime(2026, 12, 3), "n": peak}]
    chart = bar_chart(periods, [Series("n", "Requests", "chart-s1")], title="Requests per day", unit="requests", hourly=False)
    assert [t["label"] for t in chart["y_ticks"]] == ticks
