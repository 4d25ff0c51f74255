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
