"""Server-rendered SVG bar charts: geometry computed here, drawn by templates/usage/bar_chart.html.

A chart is one column per period (day or hour), optionally stacked from several series (prompt and
completion tokens), a y axis with round ticks labelled in the chart's unit, and x ticks on round
days or on every sixth hour of the workspace's time zone. Each column carries a <title>, so hovering
anywhere over it reads the exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from html import escape

from django.utils.safestring import mark_safe

from usage.amounts import amount_text

# viewBox sizes chosen so a half-width chart (and a full-width one) is drawn at about 0.85 scale
# on a laptop screen: the 12-unit labels stay readable.
WIDTH, WIDE_WIDTH, HEIGHT = 540, 1100, 210
LEFT, RIGHT, TOP, BOTTOM = 52, 24, 12, 30
Y_TICKS = 4


@dataclass(frozen=True)
class Series:
    key: str
    label: str
    css: str  # a class that sets the fill (chart-s1, chart-s2)


def _nice_step(raw: float, *, whole: bool = False) -> float:
    """1, 2, 2.5 or 5 × a power of ten, at least raw; with `whole` (counts: requests, tokens) a
    whole number, so an axis never reads 0.2 requests or 7.5 tokens."""
    if raw <= 0:
        return 1
    power = 10 ** math.floor(math.log10(raw))
    steps = (m * power for m in (1, 2, 2.5, 5, 10))
    return next(step for step in steps if step >= raw * (1 - 1e-9) and (not whole or (step >= 1 and step == int(step))))


def _axis_label(value: float, step: float, money: bool) -> str:
    if money:
        places = max(2, min(6, -Decimal(repr(step)).normalize().as_tuple().exponent))
        return f"{value:,.{places}f}" if value else "0"
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            scaled = value / size
            return f"{scaled:,.{0 if scaled == int(scaled) else 1}f}{suffix}"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _value_text(value, money: bool) -> str:
    return amount_text(Decimal(value)) if money else f"{int(value):,}"


def _period_text(period: dict, hourly: bool) -> str:
    local = period["local"]
    return f"{local:%b %-d, %H:%M}" if hourly else f"{local:%a %b %-d}"


def _x_ticks(periods: list[dict], hourly: bool, most: int) -> list[tuple[int, str]]:
    if hourly:
        return [
            (i, f"{p['local']:%b %-d}" if p["local"].hour == 0 else f"{p['local']:%H:%M}")
            for i, p in enumerate(periods)
            if p["local"].hour % 6 == 0
        ]
    every = max(1, math.ceil(len(periods) / most))
    # Count back from the last day, so the most recent one is always labelled.
    last = len(periods) - 1
    return [(i, f"{p['local']:%b %-d}") for i, p in enumerate(periods) if (last - i) % every == 0]


def bar_chart(
    periods: list[dict],
    series: list[Series],
    *,
    title: str,
    unit: str,
    hourly: bool,
    money: bool = False,
    value_keys: dict[str, str] | None = None,
    wide: bool = False,
    labels: list[str] | None = None,
) -> dict:
    """Geometry for one chart. `value_keys` maps a series to the key its hover text reads (cost in
    cents); `labels` are the periods' hover labels when the caller already made them."""
    value_keys = value_keys or {}
    labels = labels or [_period_text(p, hourly) for p in periods]
    totals = [sum(float(p[s.key]) for s in series) for p in periods]
    peak = max(totals, default=0)
    step = _nice_step(peak / Y_TICKS, whole=not money) if peak else 1
    top = step * max(1, math.ceil(peak / step - 1e-9)) if peak else step * Y_TICKS
    width = WIDE_WIDTH if wide else WIDTH
    tick_values = [step * k for k in range(round(top / step) + 1)]
    tick_labels = [_axis_label(value, step, money) for value in tick_values]
    # Room for the longest y label (small amounts read 0.000015): ~7 units a character at 12 units.
    left = max(LEFT, 10 + 7 * max(len(label) for label in tick_labels))
    plot_w, plot_h, bottom = width - left - RIGHT, HEIGHT - TOP - BOTTOM, HEIGHT - BOTTOM
    slot = plot_w / max(len(periods), 1)
    scale = plot_h / top

    columns, svg = [], []
    money_keys = [value_keys.get(s.key, s.key) for s in series]
    total_key = value_keys.get("total")
    names = [s.label.lower() for s in series]
    bar_offset, bar_w = slot * 0.14, f"{max(slot * 0.72, 1):.2f}"
    hit = f'y="{TOP}" width="{slot:.2f}" height="{plot_h}"/>'
    for i, (p, total, label) in enumerate(zip(periods, totals, labels, strict=True)):
        x = left + i * slot
        y = float(bottom)
        segments = []
        for s in series:
            h = float(p[s.key]) * scale
            y -= h
            segments.append({"css": s.css, "y": round(y, 2), "h": round(h, 2)})
        amount = _value_text(p[total_key] if total_key else total, money)
        if len(series) > 1:
            parts = " + ".join(f"{_value_text(p[k], money)} {n}" for k, n in zip(money_keys, names, strict=True))
            text = f"{label}: {parts} = {amount} {unit}"
        else:
            text = f"{label}: {amount} {unit}"
        columns.append({"x": round(x, 2), "segments": segments, "title": text})
        # The bars' markup is built here rather than in bar_chart.html: a year is ~1,100 columns,
        # and template loops over them cost more than every query of the page together.
        bar_x = f"{x + bar_offset:.2f}"
        svg.append(f'<g class="chart-col"><title>{escape(text)}</title><rect class="chart-hit" x="{x:.2f}" {hit}')
        svg.extend(
            f'<rect class="chart-bar {seg["css"]}" x="{bar_x}" y="{seg["y"]}" width="{bar_w}" height="{seg["h"]}"/>'
            for seg in segments
            if seg["h"]
        )
        svg.append("</g>")

    y_ticks = [{"y": round(bottom - value * scale, 2), "label": label} for value, label in zip(tick_values, tick_labels, strict=True)]
    x_ticks = [{"x": round(left + i * slot + slot / 2, 2), "label": label} for i, label in _x_ticks(periods, hourly, 14 if wide else 7)]
    return {
        "title": title,
        "unit": unit,
        "series": series if len(series) > 1 else [],
        "columns": columns,
        "y_ticks": y_ticks,
        "columns_svg": mark_safe("".join(svg)),  # noqa: S308 - titles escaped, the rest numbers
        "x_ticks": x_ticks,
        "width": width,
        "height": HEIGHT,
        "left": left,
        "top": TOP,
        "bottom_y": bottom,
        "plot_h": plot_h,
        "right_x": width - RIGHT,
        "wide": wide,
        "metric": series[0].key if len(series) == 1 else "tokens",
    }


def usage_charts(report) -> list[dict]:
    """Requests, tokens (prompt and completion stacked) and cost, per day or per hour."""
    per = "hour" if report.hourly else "day"
    hourly = report.hourly
    labels = [_period_text(p, hourly) for p in report.periods]  # shared by the three charts
    return [
        bar_chart(
            report.periods,
            [Series("prompt_tokens", "Prompt", "chart-s1"), Series("completion_tokens", "Completion", "chart-s2")],
            title=f"Tokens per {per}",
            unit="tokens",
            hourly=hourly,
            wide=True,
            labels=labels,
        ),
        bar_chart(
            report.periods,
            [Series("requests", "Requests", "chart-s1")],
            title=f"Requests per {per}",
            unit="requests",
            hourly=hourly,
            labels=labels,
        ),
        bar_chart(
            report.periods,
            [Series("cost", "Cost", "chart-s1")],
            title=f"Cost per {per}",
            unit=report.currency,
            hourly=hourly,
            money=True,
            value_keys={"cost": "cost_cents", "total": "cost_cents"},
            labels=labels,
        ),
    ]
