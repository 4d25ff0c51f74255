"""Sign-in flows in Chromium: lockout, invitations through a real SMTP server, TOTP, passkeys."""

from __future__ import annotations

import email
import re
import socket
import threading
from email import policy

import pytest
from django.core.cache import cache
from django.test import override_settings

from console.models import Membership, Role
from tests.conftest import PASSWORD, World

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    cache.clear()
    yield
    cache.clear()


class Inbox:
    """Messages received by the aiosmtpd server, parsed."""

    def __init__(self):
        self.messages: list[email.message.EmailMessage] = []
        self._arrived = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        message = email.message_from_bytes(envelope.content, policy=policy.default)
        with self._arrived:
            self.messages.append(message)
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def wait_for(self, count: int = 1, timeout: float = 10) -> list:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
        assert len(self.messages) >= count, f"the SMTP server received {len(self.messages)} message(s)"
        return self.messages


@pytest.fixture
def smtp_inbox():
    """A real SMTP server on 127.0.0.1 (aiosmtpd); Django's SMTP backend sends to it."""
    from aiosmtpd.controller import Controller

    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    mailers = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {"host": "127.0.0.1", "port": port, "use_tls": False, "use_ssl": False, "timeout": 10},
        }
    }
    with override_settings(MAILERS=mailers, EMAIL_ENABLED=True):
        yield inbox
    controller.stop()


def test_sign_in_is_locked_after_repeated_failures(page, settings, screenshot):
    World()
    page.goto("/accounts/login/")
    screenshot(page, "1-sign-in")
    for _ in range(settings.SIGNIN_FAILURES_PER_ACCOUNT):
        page.fill("#id_login", "olivia")
        page.fill("#id_password", "not-the-password")
        page.click("button:has-text('Sign in')")
        assert "not correct" in page.locator(".form-errors").inner_text()
    screenshot(page, "2-wrong-password")
    page.fill("#id_login", "olivia")
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    assert "Too many failed login attempts" in page.locator(".form-errors").inner_text()
    assert "/accounts/login/" in page.url
    screenshot(page, "3-locked")


def test_invitation_accepted_from_the_email_the_smtp_server_received(page, sign_in, chromium, live_server, smtp_inbox, screenshot):
    world = World()
    sign_in("olivia")
    page.goto("/w/acme/members/")
    page.fill("#id_email", "nina@example.com")
    page.select_option("form[action$='members/invite/'] #id_role", "developer")
    page.click("text=Send invitation")
    page.wait_for_selector("tr[data-invitation='nina@example.com']")
    screenshot(page, "1-invited")

    message = smtp_inbox.wait_for(1)[0]
    assert message["To"] == "nina@example.com"
    assert "invited you to Acme" in message["Subject"]
    link = re.search(r"http://\S+/invitations/\S+/", message.get_content()).group(0)
    assert link.startswith(live_server.url)

    # Nina, in her own browser.
    context = chromium.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(10_000)
    nina = context.new_page()
    nina.goto(link)
    nina.wait_for_url("**/invitations/accept/")
    assert "Join Acme" in nina.locator("h1").inner_text()
    screenshot(nina, "2-invitation")
    nina.click("text=Create my account")
    nina.fill("#id_username", "nina")
    nina.fill("#id_email", "nina@example.com")
    nina.fill("#id_password1", "ninas-own-password-42")
    nina.fill("#id_password2", "ninas-own-password-42")
    screenshot(nina, "3-sign-up")
    nina.click("button[type=submit]")
    nina.wait_for_url("**/invitations/accept/")
    assert not Membership.objects.filter(workspace=world.org, user__username="nina").exists()
    nina.click("button:has-text('Accept and join')")
    nina.wait_for_url("**/w/acme/")
    assert "Welcome to Acme" in nina.locator(".flash").inner_text()
    assert nina.locator(".account-name .role").inner_text() == "Developer"
    screenshot(nina, "4-joined")
    assert Membership.objects.get(workspace=world.org, user__username="nina").role == Role.DEVELOPER
    context.close()
