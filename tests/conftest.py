from __future__ import annotations

import time
from pathlib import Path

import pytest

from console.audit import Actor
from console.models import Role, User
from console.services import membership_add, workspace_create

PASSWORD = "correct-horse-battery"


class World:
    """One fixture world: an organisation with a sub-workspace, people in every role, and an outsider."""

    def __init__(self):
        actor = Actor.system("tests")
        make = lambda name: User.objects.create_user(name, f"{name}@example.com", PASSWORD)  # noqa: E731
        self.owner, self.admin, self.developer, self.viewer = make("olivia"), make("adam"), make("dev"), make("vera")
        self.sub_member, self.outsider = make("sam"), make("oscar")
        self.org = workspace_create(name="Acme", slug="acme", actor=actor, owner=self.owner)
        self.sub = workspace_create(name="Research", slug="acme-research", parent=self.org, actor=actor)
        self.other_org = workspace_create(name="Globex", slug="globex", actor=actor, owner=self.outsider)
        membership_add(workspace=self.org, user=self.admin, role=Role.ADMIN, actor=actor)
        membership_add(workspace=self.org, user=self.developer, role=Role.DEVELOPER, actor=actor)
        membership_add(workspace=self.org, user=self.viewer, role=Role.VIEWER, actor=actor)
        self.sub_membership = membership_add(workspace=self.sub, user=self.sub_member, role=Role.DEVELOPER, actor=actor)

    def user(self, role: str) -> User | None:
        return {
            "owner": self.owner,
            "admin": self.admin,
            "developer": self.developer,
            "viewer": self.viewer,
            "outsider": self.outsider,
            "sub_member": self.sub_member,
            "anonymous": None,
        }[role]


@pytest.fixture
def world(db) -> World:
    return World()


def record_sign_in(client, user) -> None:
    """Mark the test client's session as just signed in with a password, as allauth's sign-in does.

    Sensitive changes (keys, roles, budgets) need a recent sign-in; force_login alone records none.
    """
    session = client.session
    session["account_authentication_methods"] = [{"method": "password", "at": time.time(), "username": user.get_username()}]
    session["account_authentication_methods_user"] = str(user.pk)
    session.save()


@pytest.fixture
def client_for(client):
    def login(user):
        client.logout()
        if user is not None:
            client.force_login(user)
            record_sign_in(client, user)
        return client

    return login


ARTIFACTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "artifacts"


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium driven by Playwright (never a downloaded browser build)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(chromium, live_server, request):
    """A fresh browser context on the live server; a screenshot of the last state is saved as an artifact."""
    context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    pg = context.new_page()
    yield pg
    ARTIFACTS.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "screenshots" / f"{request.node.name}-final.png"), full_page=True)
    context.close()


@pytest.fixture
def screenshot(request):
    def take(page, label: str) -> str:
        ARTIFACTS.joinpath("screenshots").mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / "screenshots" / f"{request.node.name}-{label}.png"
        page.screenshot(path=str(path), full_page=True)
        return str(path)

    return take


@pytest.fixture
def sign_in(page):
    def do(username: str, password: str = PASSWORD):
        page.goto("/accounts/login/")
        page.fill("#id_login", username)
        page.fill("#id_password", password)
        page.click("button[type=submit]")
        try:
            page.wait_for_url(lambda url: "/accounts/login/" not in url)
        except Exception as error:
            # Say what the sign-in page shows instead (a throttle message, a form error, a hang).
            raise AssertionError(f"sign-in as {username} stayed on {page.url}: {page.locator('main').inner_text()[:800]!r}") from error
        return page

    return do


def pytest_configure(config):
    from tests.log_leaks import record_created_keys

    record_created_keys()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if any server log it produced holds a key it created (tests/log_leaks.py)."""
    from tests import log_leaks

    roots = [Path(__file__).resolve().parent.parent / "var" / "test"]
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        roots.append(factory.getbasetemp())
    files = log_leaks.log_files(roots, log_leaks.STARTED)
    leaks = log_leaks.find_leaks(files, log_leaks.created)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"log check: {len(files)} server logs searched for {len(log_leaks.created)} keys this run created")
        for path, count in leaks.items():
            reporter.write_line(f"KEY LEAK: {path} contains {count} key(s) created by this run", red=True)
    if leaks:
        session.exitstatus = 1
