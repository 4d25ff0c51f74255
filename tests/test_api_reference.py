"""The in-app API reference: rendered from docs/GATEWAY.md (one source), escaped, CSP-clean,
linked from the sidebar and every deployment's API call tab, with PUBLIC_BASE_URL as the base URL."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from console import api_reference
from console.api_reference import SECTIONS, render_reference
from tests.factories import make_deployment

pytestmark = pytest.mark.django_db


def url(ws: str = "acme") -> str:
    return reverse("api_reference", kwargs={"ws": ws})


def test_every_member_reads_the_reference_with_the_public_base_url(world, client_for, settings):
    settings.PUBLIC_BASE_URL = "https://gatehouse.example.com"
    for user in (world.viewer, world.owner):
        response = client_for(user).get(url())
        assert response.status_code == 200
        body = response.content.decode()
        assert '<code id="reference-base-url" data-testid="reference-base-url">https://gatehouse.example.com/v1</code>' in body
    assert client_for(world.sub_member).get(url("acme-research")).status_code == 200
    assert client_for(world.outsider).get(url()).status_code == 404
    assert client_for(None).get(url()).status_code == 302


def test_the_page_is_the_gateway_docs_client_sections(world, client_for):
    body = client_for(world.owner).get(url()).content.decode()
    source = api_reference.SOURCE.read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f"\n## {title}\n" in source  # the sections the page shows exist in the one source
        assert f'<h2 id="{re.sub(r"[^a-z]+", "-", title.lower()).strip("-")}">{title}</h2>' in body
    # Endpoints, errors, limits and headers, as the file says them.
    for text in ("POST /v1/chat/completions", "invalid_api_key", "model_not_found", "workspace_archived", "x-request-id", "Retry-After"):
        assert text in source and text in body
    # Operator-only sections stay in the file.
    assert "## Key cache and changes" in source and "Key cache and changes" not in body
    assert "The overshoot bound" in source and "The overshoot bound" not in body
    # A link to a section on the page works; one to a section left out is plain text.
    assert '<a href="#budgets">' in body and 'href="#metrics"' not in body


def test_the_reference_html_is_escaped_and_csp_clean():
    hostile = (
        "\n".join(f"## {title}\n\ntext {i}\n" for i, title in enumerate(SECTIONS))
        + "\n<script>alert(1)</script>\n\n<img src=x onerror=alert(2)>\n\n[click](javascript:alert(3)) [ok](#limits)\n\n| a | b |\n| ---: | :--- |\n| 1 | 2 |\n"
    )
    html = str(render_reference(hostile).html)
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="javascript:' not in html  # markdown-it refuses the link: it stays text
    assert '<a href="#limits">ok</a>' in html
    assert "style=" not in html  # no inline styles, even for aligned table columns
    assert '<th class="align-right">a</th>' in html
    with pytest.raises(ValueError, match="no section Budgets"):
        render_reference("## Endpoints\n## Request flow and errors\n## API shapes\n## Limits\n")


def test_deployment_api_tab_and_sidebar_link_to_the_reference(world, client_for):
    deployment = make_deployment(world.org, base_url="http://127.0.0.1:9/v1")
    client = client_for(world.developer)
    tab = client.get(reverse("deployment_detail", kwargs={"ws": "acme", "deployment": deployment.public_id}), {"tab": "api"})
    body = tab.content.decode()
    assert f'href="{url()}" data-testid="api-reference-link"' in body
    assert f'href="{url()}"' in client.get(reverse("workspace_overview", kwargs={"ws": "acme"})).content.decode()


def test_wide_tables_scroll_in_a_focusable_named_region():
    text = "\n".join(f"## {title}\n\n| a | b |\n| --- | --- |\n| <x> | 2 |\n" for title in SECTIONS)
    html = str(render_reference(text).html)
    assert html.count('<div class="table-wrap" tabindex="0" role="region" aria-label="Limits (table)"><table>') == 1
    assert html.count("</table></div>") == len(SECTIONS)
    assert "<td>&lt;x&gt;</td>" in html
