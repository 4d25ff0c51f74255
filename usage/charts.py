"""Server-rendered SVG bar charts: geometry computed here, drawn by templates/usage/bar_chart.html."""

from __future__ import annotations

from decimal import Decimal

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 26


def _fmt(value, unit: str) -> str:
    if unit == "cost":
        return f"{Decimal(value):,.2f}"
    return f"{int(value):,}"


def _num(value: float) -> str:
    # Coordinates as text: a float in a template goes through number localisation, ≈ 4,400 calls
    # for a year of bars (docs/BENCHMARKS.md, "Dashboards").
    return f"{value:.2f}".rstrip("0").rstrip(".")


def bar_chart(days: list[dict], metric: str, *, title: str, unit: str, value_key: str | None = None) -> dict:
    key = value_key or metric
    values = [d[key] for d in days]
    top = max(values, default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(len(days), 1)
    bars = []
    for i, (d, v) in enumerate(zip(days, values, strict=True)):
        h = float(v) / float(top) * plot_h
        bars.append({"x": _num(LEFT + i * step + step * 0.12), "y": _num(TOP + plot_h - h), "w": _num(step * 0.76),
                     "h": _num(h), "label": f"{d['day']:%b %-d}: {_fmt(v, metric)} {unit}"})
    ticks = []
    for idx in sorted({0, len(days) // 2, len(days) - 1}) if days else []:
        ticks.append({"x": _num(LEFT + idx * step + step / 2), "label": f"{days[idx]['day']:%b %-d}"})
    return {"title": title, "unit": unit, "metric": metric, "bars": bars, "ticks": ticks, "width": WIDTH, "height": HEIGHT,
            "left": LEFT, "top": TOP, "bottom_y": HEIGHT - BOTTOM, "right_x": WIDTH - RIGHT, "mid_y": TOP + plot_h / 2,
            "max_label": _fmt(top if max(values, default=0) else 0, metric), "mid_label": _fmt(Decimal(str(top)) / 2, metric)
            if metric == "cost" else f"{int(top) // 2:,}"}
