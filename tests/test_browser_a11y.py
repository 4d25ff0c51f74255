"""Every main page of the console, in both themes at desktop and phone widths, checked by axe-core.

axe-core comes from the npm registry (pinned, installed once per run like the Node.js examples'
`openai`) and is injected by Playwright as an init script, which the page's CSP does not govern.
Each page is saved as a screenshot per theme and width (artifacts/screenshots/) to be looked at.
"""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import RequestFactory
from django.utils import timezone
from django.views import defaults
from playwright.sync_api import expect

from console.audit import Actor
from console.models import Theme, User
from keys.router_providers import router_provider_create, router_provider_grant
from keys.services import api_key_create
from tests.conftest import ARTIFACTS, World
from tests.factories import make_deployment
from usage.services import budget_set, usage_rollup

from .usage_factory import event

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

AXE = "axe-core@4.14.1"  # pinned; the check's verdicts change between releases
AXE_CACHE = Path(__file__).resolve().parent.parent / "var" / "test" / "node-axe-core"
# WCAG 2.0/2.1/2.2 A and AA rules (color-contrast, target-size among them) and axe's best practices
# (landmarks, unique names). Impact "serious" or "critical" fails.
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
FAILING_IMPACTS = {"serious", "critical"}
LIGHT_BG, DARK_BG, DARK_PANEL = "rgb(246, 247, 249)", "rgb(11, 16, 24)", "rgb(18, 25, 38)"  # --bg, --panel in app.css
# Panels that htmx loads after the page (hx-trigger="load") are checked too: wait until each request
# has settled (htmx:load, where app.js sets up new content, runs in the settle step, after afterRequest).
HTMX_BUSY = """
window.htmxPending = new Set();
document.addEventListener("htmx:beforeRequest", (e) => window.htmxPending.add(e.detail.xhr));
document.addEventListener("htmx:afterSettle", (e) => window.htmxPending.delete(e.detail.xhr));
document.addEventListener("htmx:afterRequest", (e) => { if (!e.detail.successful) window.htmxPending.delete(e.detail.xhr); });
"""
# The innermost elements that stick out of the window (to say where an overflow comes from).
WIDEST = """() => Array.from(document.querySelectorAll("body *"))
    .filter((el) => el.getBoundingClientRect().right > document.documentElement.clientWidth + 1 && el.children.length === 0)
    .slice(0, 5).map((el) => el.tagName.toLowerCase() + (el.className ? "." + String(el.className).split(" ").join(".") : "") + " " + (el.textContent || "").trim().slice(0, 40))"""
VIEWPORTS = {"desktop": {"width": 1440, "height": 900}, "phone": {"width": 390, "height": 844}}


@pytest.fixture(scope="session")
def axe_script() -> Path:
    """`npm install axe-core` once per run, from the npm registry, into a cache under var/test."""
    script = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(AXE_CACHE), AXE], check=True, timeout=300)
    return script


def _axe_violations(page) -> list[dict]:
    return page.evaluate(
        """async (tags) => {
            const result = await axe.run(document, {runOnly: {type: "tag", values: tags}, resultTypes: ["violations"]});
            return result.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => ({target: n.target.join(" "), summary: n.failureSummary})),
            }));
        }""",
        AXE_TAGS,
    )


def _chart_contrasts(page) -> list[dict]:
    """Contrast of each chart's bars and labels against the chart's background (axe does not look
    inside SVG graphics): WCAG 1.4.11 asks 3:1 of the bars, 1.4.3 asks 4.5:1 of the labels' text."""
    return page.evaluate(
        """() => {
            const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
            const lum = (c) => {
                const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                return 0.2126 * r + 0.7152 * g + 0.0722 * b;
            };
            const ratio = (a, b) => { const [hi, lo] = [lum(a), lum(b)].sort((x, y) => y - x); return (hi + 0.05) / (lo + 0.05); };
            const out = [];
            document.querySelectorAll("figure.chart").forEach((figure) => {
                const background = getComputedStyle(figure).backgroundColor;
                const seen = new Set();
                figure.querySelectorAll(".chart-bar, .chart-label").forEach((el) => {
                    const kind = el.classList.contains("chart-label") ? "label" : el.getAttribute("class");
                    if (seen.has(kind)) return;
                    seen.add(kind);
                    const colour = getComputedStyle(el).fill;
                    out.push({chart: figure.dataset.metric, kind, colour, ratio: ratio(colour, background)});
                });
            });
            return out;
        }"""
    )


def _a_busy_workspace() -> tuple[World, dict[str, str]]:
    """The fixture world with something on every page: a deployment with a week of usage, a key,
    a budget, a router provider granted to Acme; and the addresses of the pages to check."""
    world = World()
    world.owner.is_staff = True  # an installation admin too: the router providers page
    world.owner.save(update_fields=["is_staff"])
    actor = Actor.system("tests")
    now = timezone.now()
    deployment = make_deployment(world.org, name="Support bot", base_url="http://127.0.0.1:9/v1")
    key, _ = api_key_create(workspace=world.org, actor=actor, name="backend", deployments=[deployment], tpm_limit=60_000)
    for day in range(7):
        for i in range(day + 1):
            event(
                world.org,
                now - timedelta(days=day, minutes=i),
                key=key,
                deployment=deployment,
                prompt=20_000 + 800 * i,
                completion=3_000 * i,
            )
    event(world.org, now - timedelta(hours=2), key=key, deployment=deployment, status=429)
    usage_rollup(now=now)
    budget_set(workspace=world.org, amount=Decimal("5"), currency="USD", block_requests=False, actor=actor)
    provider = router_provider_create(
        actor=actor, name="OpenRouter", slug="openrouter", base_url="https://openrouter.example/api/v1", api_key="sk-or-v1-a11y-0123456789"
    )
    router_provider_grant(provider=provider, workspace=world.org, actor=actor)
    d, k = f"/w/acme/deployments/{deployment.public_id}/", f"/w/acme/secrets/{key.public_id}/"
    pages = {
        "overview": "/w/acme/",
        "deployments": "/w/acme/deployments/",
        "deployment": d,
        "deployment-api": f"{d}?tab=api",
        "deployment-examples": f"{d}?tab=examples",
        "deployment-test": f"{d}?tab=test",
        "deployment-usage": f"{d}?tab=usage",
        "deployment-edit": f"{d}edit/",
        "grants": "/w/acme/deployments/grants/",
        "secrets": "/w/acme/secrets/",
        "key": k,
        "key-form": "/w/acme/secrets/new/",
        "key-edit": f"{k}edit/",
        "byok": "/w/acme/secrets/byok/",
        "byok-form": "/w/acme/secrets/byok/new/",
        "deployment-form": "/w/acme/deployments/new/",
        "sub-workspace": "/w/acme-research/",
        "sub-workspace-form": "/w/acme/sub-workspaces/new/",
        "usage": "/w/acme/usage/",
        "billing": "/w/acme/billing/",
        "budget": "/w/acme/billing/budget/",
        "members": "/w/acme/members/",
        "audit": "/w/acme/audit/",
        "audit-filtered": "/w/acme/audit/?q=a&start=2020-01-01",
        "api-reference": "/w/acme/api-reference/",
        "settings": "/w/acme/settings/",
        "router-providers": "/installation/router-providers/",
        "router-provider": "/installation/router-providers/openrouter/",
        "password": "/accounts/password/change/",
        "two-factor": "/accounts/2fa/",
        "404": "/w/acme/secrets/00000000-0000-4000-8000-000000000000/",
    }
    return world, pages


@pytest.mark.parametrize("viewport", VIEWPORTS)
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_passes_axe_in_both_themes(page, sign_in, axe_script, scheme, viewport):
    """Signed in once per theme and width, walk the console's pages; zero serious or critical axe violations."""
    _, pages = _a_busy_workspace()
    page.set_viewport_size(VIEWPORTS[viewport])
    page.emulate_media(color_scheme=scheme)  # the people here keep the default theme, "system"
    page.context.add_init_script(path=str(axe_script))
    page.context.add_init_script(script=HTMX_BUSY)
    shots = ARTIFACTS / "screenshots" / "a11y"
    shots.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    charts: list[dict] = []
    background = DARK_BG if scheme == "dark" else LIGHT_BG

    def check(label: str) -> None:
        page.wait_for_load_state("load")
        page.wait_for_function("() => window.htmxPending.size === 0")
        if label not in {"sign-in", "500"}:  # the auth and 500 pages have their own backgrounds
            assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == background, label
        for v in _axe_violations(page):
            if v["impact"] in FAILING_IMPACTS:
                nodes = "; ".join(f"{n['target']}: {n['summary']}" for n in v["nodes"][:4])
                found.append(f"{label}: {v['id']} ({v['impact']}) {v['help']} -- {len(v['nodes'])} node(s): {nodes}")
        # Reflow (WCAG 1.4.10): the page itself never scrolls sideways; wide tables scroll in their box.
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        if overflow > 0:
            wide = page.evaluate(WIDEST)
            found.append(f"{label}: the page is {overflow}px wider than the window; sticking out: {wide}")
        charts.extend(_chart_contrasts(page))
        for c in _chart_contrasts(page):
            if c["ratio"] < (4.5 if c["kind"] == "label" else 3):
                found.append(f"{label}: chart {c['chart']} {c['kind']} {c['colour']} has contrast {c['ratio']:.2f} against its background")
        page.screenshot(path=str(shots / f"{label}-{scheme}-{viewport}.png"), full_page=True)

    page.goto("/accounts/login/")
    check("sign-in")
    sign_in("olivia")
    for label, path in pages.items():
        page.goto(path)
        check(label)
        if label == "overview" and viewport == "phone":  # the off-canvas menu, opened
            page.locator(".nav-button").click()
            expect(page.locator(".sidebar")).to_be_in_viewport()
            check("menu")
        if label == "key-form":  # the key, shown once
            page.fill("#id_name", "frontend")
            page.get_by_test_id("submit").click()  # no scope yet: the form answers with its errors
            expect(page.get_by_role("alert")).to_contain_text("Choose what this key may call")
            check("key-form-errors")
            page.get_by_role("checkbox", name=re.compile("Support bot")).check()
            page.get_by_test_id("submit").click()
            expect(page.get_by_test_id("new-key")).to_be_visible()
            check("key-created")

    # The 500 page is rendered without a request (tests/test_browser_error_pages.py does the same).
    html = defaults.server_error(RequestFactory().get("/")).content.decode()
    page.route("**/server-error-preview", lambda route: route.fulfill(status=500, body=html, content_type="text/html"))
    page.goto("/server-error-preview")
    check("500")
    page.context.clear_cookies()
    sign_in("vera")  # a viewer: settings answer 403
    page.goto("/w/acme/settings/")
    check("403")

    assert not found, "\n".join(found)
    assert {"label", "chart-bar chart-s1", "chart-bar chart-s2"} <= {c["kind"] for c in charts}  # the charts were measured


def _choose_theme(page, label: str) -> None:
    """Click the toggle's button; htmx saves the choice in the background (204, no swap)."""
    with page.expect_response(lambda r: r.url.endswith("/accounts/theme/")) as saved:
        page.get_by_role("group", name="Theme").get_by_role("button", name=label).click()
    assert saved.value.status == 204


def test_theme_toggle_is_remembered_and_painted_by_the_server(page, sign_in):
    world = World()
    page.emulate_media(color_scheme="light")
    sign_in("olivia")
    html = page.locator("html")
    expect(html).to_have_attribute("data-theme", "system")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == LIGHT_BG

    _choose_theme(page, "Dark")
    expect(html).to_have_attribute("data-theme", "dark")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == DARK_BG
    expect(page.get_by_role("button", name="Dark")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_role("button", name="System")).to_have_attribute("aria-pressed", "false")
    world.owner.refresh_from_db()
    assert world.owner.theme == Theme.DARK

    # The next page arrives dark from the server: its first paint is dark, no script involved.
    response = page.goto("/w/acme/usage/")
    assert 'data-theme="dark"' in response.text()
    assert page.evaluate("getComputedStyle(document.querySelector('.topbar')).backgroundColor") == DARK_PANEL

    # "System" follows the browser again, whichever way it leans.
    _choose_theme(page, "System")
    page.emulate_media(color_scheme="dark")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == DARK_BG
    page.emulate_media(color_scheme="light")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == LIGHT_BG

    # "Light" holds against a browser that prefers dark, after a reload too.
    page.emulate_media(color_scheme="dark")
    _choose_theme(page, "Light")
    page.reload()
    expect(html).to_have_attribute("data-theme", "light")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == LIGHT_BG
    world.owner.refresh_from_db()
    assert world.owner.theme == Theme.LIGHT
    assert User.objects.get(pk=world.admin.pk).theme == Theme.SYSTEM  # a choice is one person's own
