"""Styled 403, 404 and 500 pages inside the console shell."""

from __future__ import annotations

import logging
import re
import time
import uuid

import pytest
from django.test import RequestFactory
from django.views import defaults

from console.audit import Actor
from keys.services import api_key_create

pytestmark = pytest.mark.django_db


def _normalised(html: str) -> str:
    # The CSRF token and the CSP nonce are new on every render; nothing else may differ.
    return re.sub(r'("X-CSRFToken": "|name="csrfmiddlewaretoken" value="|nonce=")[^"]+', r"\1…", html)


def test_404_for_another_tenants_key_reads_exactly_like_a_missing_one(world, client_for):
    key, _ = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="billing", all_models=True)
    client = client_for(world.outsider)
    not_yours = client.get(f"/w/acme/secrets/{key.public_id}/")
    missing = client.get(f"/w/acme/secrets/{uuid.uuid4()}/")
    no_workspace = client.get("/w/no-such-workspace/secrets/")
    assert not_yours.status_code == missing.status_code == no_workspace.status_code == 404
    body = _normalised(not_yours.content.decode())
    assert body == _normalised(missing.content.decode()) == _normalised(no_workspace.content.decode())
    # Inside the shell: the outsider's own workspace to go to, their account, a way back.
    assert 'data-testid="error-page"' in body and "Page not found" in body
    assert 'href="/w/globex/"' in body and "Acme" not in body
    assert "oscar" in body and "Sign out" in body


def test_403_explains_the_role_needed_inside_the_shell(world, client_for):
    response = client_for(world.viewer).get("/w/acme/settings/")
    assert response.status_code == 403
    body = response.content.decode()
    assert 'data-testid="error-page"' in body
    assert "This needs the admin role or higher." in body
    assert 'href="/w/acme/"' in body and 'href="/w/acme-research/"' not in body  # vera is in acme only
    assert '<link rel="stylesheet" href="/static/css/app' in body


def test_404_for_a_signed_out_visitor_offers_sign_in(client, db):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    body = response.content.decode()
    assert 'data-testid="error-page"' in body and 'href="/accounts/login/"' in body and "Sign out" not in body


def test_500_renders_without_database_request_or_context_processors(django_assert_num_queries):
    request = RequestFactory().get("/w/acme/")
    with django_assert_num_queries(0):
        response = defaults.server_error(request)
    assert response.status_code == 500
    body = response.content.decode()
    assert 'data-testid="error-page"' in body and "Something went wrong" in body
    assert 'href="/static/css/app.css"' in body  # not {% static %}: works even without a manifest


def test_csrf_failure_page_is_styled_and_keeps_the_signed_in_shell(world, client_for):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(world.owner)
    response = client.post("/w/acme/settings/", {"name": "x"})
    assert response.status_code == 403
    body = response.content.decode()
    assert "This form has expired" in body and 'href="/w/acme/"' in body and "olivia" in body


def test_a_403_logs_one_line_without_a_traceback(world, client_for, caplog):
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client_for(world.viewer).get("/w/acme/settings/").status_code == 403
    records = [r for r in caplog.records if r.name == "django.request"]
    assert [r.getMessage() for r in records] == ["Forbidden (Permission denied): /w/acme/settings/"]
    # The filter from LOGGING drops the exception; a handler formatting this record prints no traceback.
    assert all(r.exc_info is None for r in records)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("debug", ["1", "0"])
def test_a_403_is_one_line_in_a_real_server_log(tmp_path, debug):
    """Issue 16: every 403 wrote two full tracebacks to the web log (Django's DEBUG-only handler
    printed each record a second time). `make run` is DEBUG=1; production is DEBUG=0."""
    from django.conf import settings

    from tests.conftest import PASSWORD, World
    from tests.prod_support import Browser, Process, database_url, free_port, production_env, set_production_password

    world = World()
    set_production_password(world.viewer, PASSWORD)
    port = free_port()
    env = production_env(tmp_path, database_url=database_url(), redis_url=settings.REDIS_URL, port=port, DEBUG=debug)
    web = Process("web", env, tmp_path / "web.log")
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz")
        browser = Browser(f"http://127.0.0.1:{port}")
        browser.sign_in("vera", PASSWORD)
        assert browser.get("/w/acme/settings/").status_code == 403
        time.sleep(0.5)
    finally:
        web.terminate()
    log = web.output()
    assert log.count("Forbidden (Permission denied): /w/acme/settings/") == 1, log
    assert "Traceback" not in log, log
