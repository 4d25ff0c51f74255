"""Walk the whole URLconf: every non-public URL refuses anonymous users and outsiders, and every POST needs CSRF."""

from __future__ import annotations

from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

PUBLIC = {"healthz", "password_change", "password_change_old", "invitation_open", "invitation_accept"}
# Django's admin has its own staff-only login; allauth's pages (sign-in, sign-up, password reset,
# MFA, SSO) are public or guard themselves, and tests/test_signin.py covers them.
SKIP_PREFIXES = ("admin/", "accounts/")


def iter_patterns(patterns=None, prefix=""):
    for p in patterns if patterns is not None else get_resolver().url_patterns:
        route = prefix + str(p.pattern)
        if isinstance(p, URLResolver):
            yield from iter_patterns(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route, p


def fill(route: str, pattern: URLPattern, values: dict) -> str:
    import re

    url = "/" + route
    for name in re.findall(r"<(?:\w+:)?(\w+)>", route):
        assert name in values, f"test_urls does not know how to fill <{name}> in {route}: add it to url_values()"
        url = re.sub(rf"<(?:\w+:)?{name}>", str(values[name]), url)
    return url


def url_values(world) -> dict:
    # Objects of the organisation the outsider is not in; extend as apps add URL parameters.
    values = {"ws": world.org.slug, "member": world.org.memberships.first().public_id}
    from tests import url_fixtures

    values.update(url_fixtures.extra_values(world))
    return values


def private_urls(world):
    values = url_values(world)
    for route, pattern in iter_patterns():
        if pattern.name in PUBLIC or route.startswith(SKIP_PREFIXES) or route.startswith(("v1/", "api/", "metrics")):
            continue
        yield pattern.name, fill(route, pattern, values)


def test_every_private_url_refuses_anonymous_and_outsiders(world):
    urls = list(private_urls(world))
    assert len(urls) >= 10  # the walk really found the console's URLs
    anonymous, outsider = Client(), Client()
    outsider.force_login(world.outsider)
    for name, url in urls:
        for method in ("get", "post"):
            response = getattr(anonymous, method)(url)
            assert response.status_code in (302, 405), (name, url, method, response.status_code)
            if response.status_code == 302:
                assert response.url.startswith("/accounts/login/"), (name, url)
            if name == "home":
                continue  # the outsider has their own workspace to go to
            response = getattr(outsider, method)(url)
            assert response.status_code in (404, 405), (name, url, method, response.status_code)


def test_every_post_endpoint_enforces_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    checked = 0
    for name, url in private_urls(world):
        response = client.post(url, {})
        if response.status_code == 405:
            continue
        assert response.status_code == 403, (name, url)
        assert b"CSRF" in response.content
        checked += 1
    assert checked >= 6
