"""Navigation in the console's HTML: no dead ends, one breadcrumb, one date format."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

HREF = re.compile(r'href="(/w/[^"?#]*)')


def links_on(client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200, url
    return set(HREF.findall(response.content.decode()))


@pytest.mark.parametrize("page", ["workspace_overview", "members_page", "secrets_page", "deployments_page", "usage_page", "audit_page"])
def test_sub_workspace_member_is_never_linked_to_the_parent_they_cannot_open(client_for, world, page):
    client = client_for(world.sub_member)
    assert client.get("/w/acme/").status_code == 404
    links = links_on(client, reverse(page, kwargs={"ws": "acme-research"}))
    assert "/w/acme/" not in links
    body = client.get(reverse(page, kwargs={"ws": "acme-research"})).content.decode()
    assert "Acme" in body  # still named, as plain text
    for href in sorted(links):
        assert client.get(href).status_code != 404, href


def test_owner_still_gets_the_link_to_the_parent(client_for, world):
    client = client_for(world.owner)
    assert "/w/acme/" in links_on(client, "/w/acme-research/")
    body = client.get("/w/acme-research/").content.decode()
    assert 'Sub-workspace of <a href="/w/acme/">Acme</a>' in body


ISO_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
OTHER_DATES = re.compile(r"\b(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d{1,2} [A-Z][a-z]{2}\b|\b[A-Z][a-z]{2} \d{1,2}, \d{4}\b")
WHEN = re.compile(r"\b\d{1,2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2} [A-Z]{2,5}\b")


def visible_text(html: str) -> str:
    html = re.sub(r"<(script|style|pre)\b.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_pages_write_dates_one_way(client_for, world):
    from datetime import timedelta

    from django.utils import timezone

    from tests.adminapi_support import make_admin_key
    from tests.factories import make_deployment, make_key

    key, _ = make_key(world.org, name="dated", expires_at=timezone.now() + timedelta(days=30))
    make_admin_key(world.org, expires_at=timezone.now() + timedelta(days=30))
    deployment = make_deployment(world.org, base_url="http://10.0.0.5:8000/v1")
    client = client_for(world.owner)
    pages = [
        f"/w/acme/secrets/{key.public_id}/",
        "/w/acme/secrets/",
        f"/w/acme/deployments/{deployment.public_id}/",
        "/w/acme/members/",
        "/w/acme/audit/",
        "/w/acme/settings/admin-api/",
    ]
    seen_when = 0
    for url in pages:
        text = visible_text(client.get(url).content.decode())
        assert not ISO_DATE.findall(text), (url, ISO_DATE.findall(text))
        assert not OTHER_DATES.findall(text), (url, OTHER_DATES.findall(text))
        seen_when += len(WHEN.findall(text))
    assert seen_when >= 4  # the key's expiry and creation, the deployment's creation and price, the audit rows


CRUMB_NAV = re.compile(r'<nav class="crumbs" aria-label="Breadcrumb" data-testid="breadcrumb"><ol>(.*?)</ol></nav>', re.S)


def crumbs_of(client, url: str) -> list[tuple[str, bool]]:
    """The breadcrumb's steps as (text, is the current page), from the one breadcrumb on the page."""
    response = client.get(url)
    assert response.status_code == 200, url
    navs = CRUMB_NAV.findall(response.content.decode())
    assert len(navs) == 1, url
    items = re.findall(r"<li( aria-current=\"page\")?>(.*?)</li>", navs[0], re.S)
    return [(re.sub(r"<[^>]+>", "", text).strip(), bool(current)) for current, text in items]


def test_every_page_has_the_same_breadcrumb(client_for, world):
    from tests.factories import make_deployment, make_key

    key, _ = make_key(world.org, name="crm")
    deployment = make_deployment(world.org, base_url="http://10.0.0.5:8000/v1", name="Qwen3")
    client = client_for(world.owner)
    expected = {
        "/w/acme/": ["Acme"],
        "/w/acme/deployments/": ["Acme", "Deployments"],
        f"/w/acme/deployments/{deployment.public_id}/": ["Acme", "Deployments", "Qwen3"],
        "/w/acme/deployments/grants/": ["Acme", "Deployments", "Model permissions"],
        "/w/acme/usage/": ["Acme", "Usage"],
        "/w/acme/billing/": ["Acme", "Billing"],
        "/w/acme/members/": ["Acme", "Members"],
        "/w/acme/audit/": ["Acme", "Audit log"],
        "/w/acme/settings/": ["Acme", "Settings"],
        "/w/acme/secrets/": ["Acme", "Secrets"],
        "/w/acme/secrets/new/": ["Acme", "Secrets", "New key"],
        f"/w/acme/secrets/{key.public_id}/": ["Acme", "Secrets", "crm"],
        "/w/acme/sub-workspaces/new/": ["Acme", "New sub-workspace"],
        "/w/acme-research/members/": ["Acme", "Research", "Members"],
    }
    for url, steps in expected.items():
        crumbs = crumbs_of(client, url)
        assert [text for text, _ in crumbs] == steps, url
        # Only the last step is the current page; every step before it is a link.
        assert [current for _, current in crumbs] == [False] * (len(steps) - 1) + [True], url


def test_relative_times_read_one_way_from_just_now_to_days(client_for, world):
    """Every "how long since" on the console goes through |ago: never Django's "0 minutes ago"."""
    from datetime import timedelta

    from django.utils import timezone

    from lib.dates import ago
    from tests.factories import make_key

    now = timezone.now()
    assert [ago(now - timedelta(seconds=s)) for s in (0, 59, 61, 3599, 3601, 86400, 3 * 86400)] == [
        "just now",
        "just now",
        "1 min ago",
        "59 min ago",
        "1 h ago",
        "1 day ago",
        "3 days ago",
    ]
    assert ago(None) == ""
    key, _ = make_key(world.org, name="used")
    key.last_used_at = now - timedelta(seconds=5)
    key.save(update_fields=["last_used_at"])
    client = client_for(world.owner)
    for url in ("/w/acme/", "/w/acme/secrets/", f"/w/acme/secrets/{key.public_id}/"):
        text = visible_text(client.get(url).content.decode())
        assert "minutes ago" not in text and "0\xa0minutes" not in text, url
    assert "just now" in visible_text(client.get("/w/acme/secrets/").content.decode())
