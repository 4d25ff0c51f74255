"""The in-app API reference: the client-facing sections of docs/GATEWAY.md, rendered as HTML.

docs/GATEWAY.md stays the one source; this page shows the sections a caller needs (endpoints and
model names, errors, API shapes, limits, budgets) and leaves out the operator's (replicas, key
cache, metering, configuration). markdown-it-py renders it with raw HTML off (anything in the
file that looks like HTML is escaped) and its own link check (no javascript: or data: links);
the output has no scripts or style attributes, so the strict CSP holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import slugify
from django.views.decorators.http import require_GET
from markdown_it import MarkdownIt

from console.access import access_workspace

SOURCE = Path(settings.BASE_DIR) / "docs" / "GATEWAY.md"
# The `## ` sections of GATEWAY.md shown, in this order, with their subsections. A heading renamed
# in the file fails tests/test_api_reference.py rather than silently dropping from the page.
SECTIONS = ("Endpoints", "Request flow and errors", "API shapes", "Limits", "Budgets")
# Subsections for operators and maintainers, left out of the page.
LEFT_OUT = ("The overshoot bound",)


@dataclass(frozen=True)
class Reference:
    html: SafeString
    toc: tuple[tuple[int, str, str], ...]  # (level, anchor, title)


def _sections(text: str) -> dict[str, str]:
    """`## ` heading → its text up to the next `## ` heading, subsections in LEFT_OUT removed."""
    found: dict[str, str] = {}
    for part in re.split(r"(?m)^(?=## )", text):
        if not part.startswith("## "):
            continue
        title = part.splitlines()[0][3:].strip()
        kept = [
            sub for sub in re.split(r"(?m)^(?=### )", part) if not (sub.startswith("### ") and sub.splitlines()[0][4:].strip() in LEFT_OUT)
        ]
        found[title] = "".join(kept)
    return found


def render_reference(text: str) -> Reference:
    sections = _sections(text)
    missing = [name for name in SECTIONS if name not in sections]
    if missing:
        raise ValueError(f"docs/GATEWAY.md has no section {', '.join(missing)}")
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", lambda self, tokens, idx, options, env: "</table></div>\n")
    tokens = md.parse("\n".join(sections[name] for name in SECTIONS))
    toc: list[tuple[int, str, str]] = []
    section = ""
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            token.meta["label"] = f"{section} (table)" if section else "Table"
        if token.type in ("th_open", "td_open") and token.attrGet("style"):
            # An aligned column: a class instead of a style attribute, which the CSP refuses.
            align = str(token.attrGet("style")).removeprefix("text-align:")
            token.attrs.pop("style")
            token.attrSet("class", f"align-{align}")
        if token.type == "heading_open":
            title = tokens[i + 1].content
            anchor = slugify(title)
            token.attrSet("id", anchor)
            toc.append((int(token.tag[1]), anchor, title))
            section = title
    anchors = {anchor for _, anchor, _ in toc}
    for token in tokens:
        opened = []
        for child in token.children or ():
            if child.type == "link_open":
                # A link to a section not on this page (or to a file) becomes plain text.
                href = child.attrGet("href") or ""
                child.hidden = not (href.startswith("#") and href[1:] in anchors)
                opened.append(child)
            elif child.type == "link_close" and opened:
                child.hidden = opened.pop().hidden
    # html=False above: any HTML in the source was escaped by the renderer.
    return Reference(html=mark_safe(md.renderer.render(tokens, md.options, {})), toc=tuple(toc))


def _table_open(self, tokens, idx, options, env) -> str:
    # Wide tables scroll sideways inside a region the keyboard can reach and focus (axe:
    # scrollable-region-focusable), named after their section.
    label = escape(tokens[idx].meta.get("label", "Table"))
    return f'<div class="table-wrap" tabindex="0" role="region" aria-label="{label}"><table>\n'


_cache: dict[str, tuple[float, Reference]] = {}


def reference() -> Reference:
    """The rendered reference, re-rendered when the file changes (a few ms, once per process)."""
    mtime = SOURCE.stat().st_mtime
    cached = _cache.get("gateway")
    if cached is None or cached[0] != mtime:
        cached = (mtime, render_reference(SOURCE.read_text(encoding="utf-8")))
        _cache["gateway"] = cached
    return cached[1]


@login_required
@require_GET
def api_reference_page(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws)
    context = {"access": access, "nav": "api_reference", "reference": reference(), "base_url": settings.PUBLIC_BASE_URL}
    return render(request, "console/api_reference_page.html", context)
