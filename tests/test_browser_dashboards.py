from __future__ import annotations

import csv
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from tests.conftest import World
from usage.services import usage_rollup

from .usage_factory import csv_sections, event, make_deployment, make_key

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _number(text: str) -> int:
    return int(text.replace(",", ""))


def _csv_sections(path: Path) -> dict[str, list[list[str]]]:
    with path.open(newline="") as f:
        return csv_sections(csv.reader(f))


def test_usage_filters_sort_and_csv_then_billing_month_split(page, sign_in, screenshot, tmp_path):
    world = World()
    now = timezone.now()
    key, other_key, sub_key = make_key(world.org, "backend"), make_key(world.org, "batch"), make_key(world.sub, "research")
    key.tpm_limit, key.yearly_token_limit = 60_000, 2_000_000
    key.save(update_fields=["tpm_limit", "yearly_token_limit"])
    chat = make_deployment(world.org, "chat", price=("0.50", "1.50"), at=now - timedelta(days=90))

    def at(day: int, minutes: int) -> datetime:
        """`minutes` before now, `day` days ago, but never before that (UTC) day began: a run just
        after midnight would otherwise move some of "today's" events into yesterday."""
        moment = now - timedelta(days=day, minutes=minutes)
        day_start = datetime.combine((now - timedelta(days=day)).date(), time.min, tzinfo=UTC)
        return max(moment, day_start + timedelta(seconds=minutes))

    for day in range(8):
        for i in range(day + 2):
            event(world.org, at(day, i), key=key, deployment=chat, prompt=20_000 + 500 * i, completion=3_000 * i)
        event(world.org, at(day, 3), key=other_key, deployment=chat, prompt=4_000, completion=1_000)
        event(world.sub, at(day, 5), key=sub_key, deployment=chat, prompt=9_000, completion=12_000)
    # A month before any of the last 8 days' events (on December 1st, October: November holds some of them).
    last_month = ((now - timedelta(days=8)).date().replace(day=1) - timedelta(days=1)).replace(day=10)
    at = now.replace(year=last_month.year, month=last_month.month, day=10, hour=12)
    event(world.org, at, key=key, deployment=chat, prompt=1_000_000, completion=200_000)
    event(world.sub, at, key=sub_key, deployment=chat, prompt=300_000, completion=700_000)
    usage_rollup(now=now)
    today = now.date()

    sign_in("olivia")
    page.goto("/w/acme/usage/")
    page.wait_for_selector("[data-testid=by-key]")
    page.evaluate("window.stillTheSamePage = true")
    in_window = last_month >= today - timedelta(days=29)
    assert _number(page.locator("[data-total=requests]").inner_text()) == sum(d + 4 for d in range(8)) + 2 * in_window
    assert page.locator("figure.chart").first.locator("g.chart-col").count() == 30
    assert page.locator("figure[data-metric=tokens] .legend-item").all_inner_texts() == ["Prompt", "Completion"]
    expect(page.locator("[data-testid=key-limits] tr[data-key] meter").first).to_be_visible()
    screenshot(page, "1-usage-30-days")

    # The range and a key filter, each applied by htmx: totals, charts and tables follow, the URL too.
    page.fill("#id_start", (today - timedelta(days=1)).isoformat())
    page.locator("#id_start").dispatch_event("change")
    expect(page.locator("[data-total=requests]")).to_have_text(str((2 + 3) + 2 * 2))
    assert "start=" in page.url
    assert page.locator("figure.chart").first.locator("g.chart-col").count() == 2
    page.select_option("#id_key", label="backend")
    expect(page.locator("[data-total=requests]")).to_have_text("5")
    assert f"key={key.public_id}" in page.url and "start=" in page.url
    assert page.locator("[data-testid=by-key] tbody tr").count() == 1
    screenshot(page, "2-usage-2-days-one-key")

    # Clear the key, then sort the workspaces by requests (fewest first): the order flips, the URL says so.
    page.click("[data-testid=clear-filters]")
    expect(page.locator("[data-testid=by-workspace] tbody tr")).to_have_count(2)
    assert page.locator("[data-testid=by-workspace] tbody tr").first.locator("td").first.inner_text() == "Acme"
    page.locator("[data-testid=by-workspace] th a", has_text="Requests").click()
    expect(page.locator("[data-testid=by-workspace] th[aria-sort=descending]")).to_contain_text("Requests")
    page.locator("[data-testid=by-workspace] th a", has_text="Requests").click()
    expect(page.locator("[data-testid=by-workspace] th[aria-sort=ascending]")).to_contain_text("↑")
    assert page.locator("[data-testid=by-workspace] tbody tr").first.locator("td").first.inner_text() == "Research"
    assert "sort=requests" in page.url and "start=" in page.url
    assert page.evaluate("window.stillTheSamePage") is True  # no full reload so far
    screenshot(page, "3-usage-sorted")

    # The CSV is what is on screen: same totals, same rows in the same order.
    with page.expect_download() as download:
        page.click("[data-testid=usage-csv]")
    path = tmp_path / "usage.csv"
    download.value.save_as(path)
    sections = _csv_sections(path)
    total = sections["day"][-1]
    assert total[0] == "total"
    assert _number(total[1]) == _number(page.locator("[data-total=requests]").inner_text())
    assert _number(total[6]) == _number(page.locator("[data-total=tokens]").inner_text())
    assert Decimal(total[8]) == Decimal(page.locator("[data-total=cost]").inner_text().split()[0])
    assert [r[0] for r in sections["workspace"][1:-1]] == page.locator(
        "[data-testid=by-workspace] tbody tr td:first-child"
    ).all_inner_texts()
    on_screen_costs = [Decimal(c) for c in page.locator("[data-testid=by-workspace] tbody td[data-cost]").all_inner_texts()]
    assert [Decimal(r[9]) for r in sections["workspace"][1:-1]] == on_screen_costs
    # Cents from 0.10 up add up to the total exactly; smaller amounts show the decimals they need
    # (0.045 + 0.076 against 0.12), so they add up to it within a cent.
    if all(c >= Decimal("0.1") for c in on_screen_costs):
        assert sum(on_screen_costs) == Decimal(total[8])
    else:
        assert abs(sum(on_screen_costs) - Decimal(total[8])) < Decimal("0.01")

    # The last 48 hours, per hour: 48 columns, no date inputs.
    page.select_option("#id_range", "48h")
    expect(page.locator("[data-testid=usage-range]")).to_contain_text("Last 48 hours")
    assert page.locator("figure.chart").first.locator("g.chart-col").count() == 48
    assert page.locator("#id_start").count() == 0 and "range=48h" in page.url
    screenshot(page, "4-usage-48-hours")

    # The deployment's Usage tab loads its own numbers.
    page.goto(f"/w/acme/deployments/{chat.public_id}/?tab=usage")
    expect(page.locator("[data-testid=deployment-usage] [data-total=requests]")).to_be_visible()
    screenshot(page, "5-deployment-usage-tab")

    page.click("text=Billing")
    page.wait_for_selector("[data-testid=statement]")
    page.fill("#id_month", f"{last_month:%Y-%m}")
    page.click("[data-testid=month-picker] button[type=submit]")
    page.wait_for_url(f"**month={last_month:%Y-%m}&endpoint=")  # the API filter rides along (All APIs)
    expect(page.locator("[data-testid=statement-total]")).not_to_have_text("0.00 USD")
    own, sub = page.locator("[data-testid=section-acme]"), page.locator("[data-testid=section-acme-research]")
    expect(own.locator("[data-testid=line-item]")).to_have_count(1)
    expect(sub.locator("[data-testid=line-item]")).to_have_count(1)
    # 1 M × 0.50 + 0.2 M × 1.50 = 0.80, and 0.3 M × 0.50 + 0.7 M × 1.50 = 1.20
    assert own.locator("[data-testid=subtotal]").inner_text() == "0.80"
    assert sub.locator("[data-testid=subtotal]").inner_text() == "1.20"
    assert page.locator("[data-testid=statement-total]").inner_text().startswith("2.00")
    expect(own.locator("[data-testid=line-item]")).to_contain_text("0.50 in · 1.50 out USD")
    screenshot(page, "6-billing-last-month")
