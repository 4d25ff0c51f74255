"""README "Production", followed as an operator would: DEBUG=0, secrets from files, a TLS proxy in
front, `scripts/entrypoint.sh web` (collectstatic + migrate under a lock, then uvicorn). Every
console page loads for a signed-in owner; health endpoints answer; no log line carries a key;
SIGTERM lets an in-flight stream finish."""

from __future__ import annotations

import re
import threading
import time
import uuid

import httpx
import pytest
from django.conf import settings

from console.audit import Actor
from keys.services import api_key_create
from tests import gateway_support
from tests.conftest import PASSWORD
from tests.factories import make_deployment
from tests.gateway_support import UPSTREAM_KEY
from tests.prod_support import Browser, Process, database_url, free_port, production_env, set_production_password
from tests.test_urls import PUBLIC, iter_patterns, url_values

pytestmark = pytest.mark.django_db(transaction=True)
demo = gateway_support.demo  # the demo model server, a live-process fixture


@pytest.fixture(scope="module")
def production(django_db_setup, django_db_blocker, tmp_path_factory):
    """One `entrypoint.sh web` process on the test database, as README "Production" starts it."""
    tmp = tmp_path_factory.mktemp("production")
    port = free_port()
    env = production_env(tmp, database_url=database_url(), redis_url=settings.REDIS_URL, port=port)
    web = Process("web", env, tmp / "web.log")
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz")
        yield web, f"http://127.0.0.1:{port}", env
    finally:
        web.kill()


def test_every_console_page_loads_with_debug_off(production, world):
    web, url, _ = production
    assert "Static files collected" in web.output() and "Database migrated" in web.output()
    values = url_values(world)
    set_production_password(world.owner, PASSWORD)
    browser = Browser(url)
    browser.sign_in(world.owner.username, PASSWORD)
    pages = 0
    for route, pattern in iter_patterns():
        if route.startswith(("v1/", "api/", "metrics", "admin/")) or pattern.name in ("logout", "account_logout"):
            continue
        if route.startswith("accounts/") and ("<" in route or "(?P" in route or "^" in route):
            continue  # allauth's pages that need a key from an email, a provider or an authenticator id
        path = "/" + route
        for name in re.findall(r"<(?:\w+:)?(\w+)>", route):
            path = re.sub(rf"<(?:\w+:)?{name}>", str(values[name]), path)
        for headers in ({}, {"hx-request": "true"}):
            response = browser.get(path, headers=headers)
            assert response.status_code < 500, (pattern.name, path, headers, response.text[:3000])
            if response.status_code == 200 and "text/html" in response.headers["content-type"] and not headers:
                pages += 1
                stylesheet = re.search(r'<link rel="stylesheet" href="(/static/css/app\.[0-9a-f]{12}\.css)"', response.text)
                if stylesheet and pages == 1:
                    css = browser.get(stylesheet.group(1))
                    assert css.status_code == 200 and "max-age=315360000" in css.headers["cache-control"]
    assert pages >= 15, pages
    # Django's admin signs in through the console's sign-in (throttling, MFA).
    admin_login = Browser(url).get("/admin/login/")
    assert admin_login.status_code == 302 and admin_login.headers["location"].startswith("/accounts/login/?next=")
    assert {"password_change", "healthz"} <= PUBLIC


def test_health_endpoints_answer_without_a_session_or_https(production):
    _, url, _ = production
    # Plain HTTP with no X-Forwarded-Proto: probes from an orchestrator are never redirected.
    live = httpx.get(url + "/healthz", timeout=5)
    assert live.status_code == 200 and live.text == "ok"
    ready = httpx.get(url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "redis": "ok"}}


def test_readyz_fails_when_redis_is_unreachable_and_healthz_does_not(tmp_path, db):
    port = free_port()
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # a port nothing listens on
    env = production_env(tmp_path, database_url=database_url(), redis_url=dead_redis, port=port, GATEHOUSE_COLLECTSTATIC="0")
    web = Process("web", env, tmp_path / "web.log")
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz")
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"database": "ok", "redis": "failed (ConnectionError)"}
    finally:
        web.kill()


def test_without_collected_static_files_pages_fail_with_the_styled_500(tmp_path, db):
    # The failure the issue found (nothing ran collectstatic): now at least the 500 page is ours.
    port = free_port()
    env = production_env(tmp_path, database_url=database_url(), redis_url=settings.REDIS_URL, port=port, GATEHOUSE_COLLECTSTATIC="0")
    web = Process("web", env, tmp_path / "web.log")
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz")
        page = Browser(f"http://127.0.0.1:{port}").get("/accounts/login/")
        assert page.status_code == 500
        assert 'data-testid="error-page"' in page.text and "Something went wrong" in page.text
        assert "Missing staticfiles manifest entry" in web.output()  # logged for the operator, not shown
        assert "Missing staticfiles manifest entry" not in page.text
    finally:
        web.kill()


def test_no_log_line_carries_a_key(production, world):
    """Keys in query strings, headers and even URL paths, on console and gateway routes: the
    server's whole output is then searched for every key this test created."""
    web, url, _ = production
    actor = Actor.system("tests")
    created = [api_key_create(workspace=world.org, actor=actor, name=f"leak-{i}", all_models=True)[1] for i in range(3)]
    set_production_password(world.owner, PASSWORD)
    browser = Browser(url)
    browser.sign_in(world.owner.username, PASSWORD)
    first, second, third = created
    answers = {
        "gateway, key in the query": httpx.get(f"{url}/v1/models?api_key={first}", timeout=10).status_code,
        "gateway, key in the header": httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {first}"}, timeout=10).status_code,
        "gateway, key in the path": httpx.get(f"{url}/v1/{second}/models", timeout=10).status_code,
        "console, key in the query": browser.get(f"/w/acme/?api_key={second}&token={third}").status_code,
        "console 404, key in the path": browser.get(f"/w/acme/{third}/").status_code,
        "console 403, key in the query": Browser(url).get(f"/w/acme/settings/?key={third}").status_code,
        "health, key in the query": httpx.get(f"{url}/healthz?api_key={third}", timeout=10).status_code,
    }
    assert answers == {
        "gateway, key in the query": 400,
        "gateway, key in the header": 200,
        "gateway, key in the path": 404,
        "console, key in the query": 200,
        "console 404, key in the path": 404,
        "console 403, key in the query": 302,  # signed out: to the login page
        "health, key in the query": 200,
    }
    time.sleep(0.5)  # the access log line is written as the response finishes
    log = web.output()
    # The access logs are there (so this search reads real request lines) ...
    assert '"path":"/v1/models","status":400' in log and '"path":"/w/acme/","status":200' in log
    assert '"path":"/v1/gh_live_[redacted]/models"' in log
    # ... and no key, nor any part of a query string, is in the whole output.
    for key in created:
        assert key not in log and key[8:30] not in log
    assert "api_key=" not in log and "?key=" not in log


def test_sigterm_lets_an_in_flight_stream_finish_and_meters_it(tmp_path, world, demo):
    from usage.models import UsageEvent

    make_deployment(world.org, base_url=demo.url + "/v1", model_id="@acme/demo", upstream_api_key=UPSTREAM_KEY)
    _, key = api_key_create(workspace=world.org, actor=Actor.system("tests"), name="drain", all_models=True)
    port = free_port()
    env = production_env(tmp_path, database_url=database_url(), redis_url=settings.REDIS_URL, port=port, GATEHOUSE_COLLECTSTATIC="0")
    web = Process("web", env, tmp_path / "web.log")
    try:
        web.wait_http(f"http://127.0.0.1:{port}/healthz")
        chunks: list[str] = []
        first_chunk = threading.Event()
        body = {
            "model": "@acme/demo",
            "stream": True,
            "messages": [{"role": "user", "content": "Tell me about gates."}],
            "metadata": {"demo_chunk_delay_ms": "150", "demo_reply_tokens": "20"},
        }

        def stream() -> None:
            with httpx.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}, timeout=30
            ) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        chunks.append(line[6:])
                        first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(20)
        web.proc.send_signal(15)  # SIGTERM mid-stream, as an orchestrator stopping the replica
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no new connections while draining
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        reader.join(30)
        assert not reader.is_alive()
        assert chunks[-1] == "[DONE]" and len(chunks) >= 20, chunks
        assert web.proc.wait(30) in (0, -15)
        assert "Waiting for connections to close" in web.output() or "Waiting for background tasks" in web.output()
        event = UsageEvent.objects.get(api_key__name="drain")
        assert event.status_code == 200 and event.completion_tokens == 20 and not event.aborted
    finally:
        web.kill()


def test_replicas_starting_together_migrate_a_fresh_database_once(tmp_path, db):
    """Three web replicas' `prepare` at once on an empty database: one migrates under the advisory
    lock, the others wait for it. Without the lock they race to create the same tables and fail."""
    import psycopg
    from django.db import connection

    name = f"gh_prepare_{uuid.uuid4().hex[:10]}"
    params = {k: v for k, v in connection.get_connection_params().items() if k in ("host", "port", "user", "password")}
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url().rsplit("/", 1)[0] + "/" + name
        env = production_env(tmp_path, database_url=url, redis_url=settings.REDIS_URL, port=free_port(), GATEHOUSE_COLLECTSTATIC="0")
        replicas = [Process("prepare", env, tmp_path / f"prepare-{i}.log") for i in range(3)]
        codes = [replica.proc.wait(300) for replica in replicas]
        outputs = [replica.output() for replica in replicas]
        assert codes == [0, 0, 0], "\n\n".join(outputs)
        assert all("Database migrated." in output for output in outputs)
        with psycopg.connect(dbname=name, **params) as conn:
            rows = conn.execute("SELECT app, name, count(*) FROM django_migrations GROUP BY app, name HAVING count(*) > 1").fetchall()
            applied = conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0]
        assert rows == [] and applied > 20
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
