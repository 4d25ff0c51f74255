"""Sign-in flows in Chromium: lockout, invitations through a real SMTP server, TOTP, passkeys."""

from __future__ import annotations

import email
import os
import re
import socket
import subprocess
import sys
import threading
import time
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


@pytest.fixture
def oidc_provider(live_server, tmp_path):
    """The test OpenID Connect provider (tests/oidc_provider/) as its own process, and Gatehouse
    configured for it the way an operator does (SOCIALACCOUNT_PROVIDERS from OIDC_* variables)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client_id, client_secret = "gatehouse-test", "s3cret-" + "x" * 30
    redirect_uri = f"{live_server.url}/accounts/oidc/acme-sso/login/callback/"
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    log = open(tmp_path / "idp.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.oidc_provider.serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "idp"),
            "--redirect-uri",
            redirect_uri,
            "--client-id",
            client_id,
            "--client-secret",
            client_secret,
            "--user",
            "carol:carol-idp-password:carol@example.com:acme-engineers,staff",
            "--user",
            "dave:dave-idp-password:dave@example.com:unmapped",
        ],
        cwd=root,
        env={k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")},
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("ready"), (tmp_path / "idp.log").read_text()
        issuer = f"http://127.0.0.1:{port}/o"
        providers = {
            "openid_connect": {
                "OAUTH_PKCE_ENABLED": True,
                "APPS": [
                    {
                        "provider_id": "acme-sso",
                        "name": "Acme SSO",
                        "client_id": client_id,
                        "secret": client_secret,
                        "settings": {
                            "server_url": issuer,
                            "token_auth_method": "client_secret_basic",
                            "scope": ["openid", "profile", "email"],
                        },
                    }
                ],
            }
        }
        from django.conf import settings

        # What console/settings.py derives from OIDC_ISSUER_URL (tests/test_settings.py checks that).
        csp = {**settings.SECURE_CSP, "form-action": [*settings.SECURE_CSP["form-action"], f"http://127.0.0.1:{port}"]}
        with override_settings(SOCIALACCOUNT_PROVIDERS=providers, SECURE_CSP=csp):
            yield issuer
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_sso_sign_in_lands_in_the_mapped_workspace_with_the_mapped_role(page, oidc_provider, screenshot):
    from console.audit import Actor
    from console.sso import sso_mapping_create

    world = World()
    sso_mapping_create(workspace=world.org, group="acme-engineers", role=Role.DEVELOPER, actor=Actor.system("tests"), actor_role=Role.OWNER)

    page.goto("/accounts/login/")
    screenshot(page, "1-sign-in")
    page.click("text=Sign in with Acme SSO")
    screenshot(page, "2-continue")
    page.click("button[type=submit]")
    page.wait_for_url("http://127.0.0.1:*/login/**")  # the identity provider's own page
    page.fill("#idp-username", "carol")
    page.fill("#idp-password", "carol-idp-password")
    page.click("#idp-submit")
    page.wait_for_url("**/w/acme/")
    assert page.locator("h1").inner_text() == "Acme"
    assert page.locator(".account-name .role").inner_text() == "Developer"
    screenshot(page, "3-landed")
    membership = Membership.objects.get(workspace=world.org, user__email="carol@example.com")
    assert membership.role == Role.DEVELOPER and membership.via_sso
    assert not membership.user.has_usable_password()


def test_sso_without_invitation_or_mapped_group_creates_no_account(page, oidc_provider, screenshot):
    World()
    page.goto("/accounts/login/")
    page.click("text=Sign in with Acme SSO")
    page.click("button[type=submit]")
    page.fill("#idp-username", "dave")
    page.fill("#idp-password", "dave-idp-password")
    page.click("#idp-submit")
    page.wait_for_url("**/accounts/**")
    assert "don't have an account yet" in page.locator("h1").inner_text()
    screenshot(page, "closed")
    from console.models import User

    assert not User.objects.filter(email="dave@example.com").exists()


def _sign_out(page):
    page.goto("/accounts/2fa/")
    page.click(".account-nav button:has-text('Sign out')")
    page.wait_for_url("**/accounts/login/**")


def test_totp_enrolment_and_sign_in_with_a_code(page, sign_in, screenshot):
    from tests.totp import totp_code

    World()
    sign_in("olivia")
    page.click("a:has-text('Two-factor')")
    page.wait_for_url("**/accounts/2fa/")
    screenshot(page, "1-two-factor")
    page.click("section.panel:has-text('Authenticator App') a:has-text('Activate')")
    page.wait_for_url("**/accounts/2fa/totp/activate/")
    secret = page.input_value("#authenticator_secret")
    assert len(secret) >= 32
    assert page.locator("img.qr").get_attribute("src").startswith("data:image/svg+xml")
    screenshot(page, "2-activate")
    page.fill("#id_code", "000000" if totp_code(secret) != "000000" else "111111")
    page.click("button:has-text('Activate')")
    assert "Incorrect code" in page.locator(".field.has-error").inner_text()
    page.fill("#id_code", totp_code(secret))
    page.click("button:has-text('Activate')")
    page.wait_for_url(lambda url: "/totp/activate/" not in url)
    screenshot(page, "3-activated")
    from allauth.mfa.models import Authenticator

    assert Authenticator.objects.filter(user__username="olivia", type="totp").exists()
    assert Authenticator.objects.filter(user__username="olivia", type="recovery_codes").exists()

    _sign_out(page)
    page.fill("#id_login", "olivia")
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url("**/accounts/2fa/authenticate/")
    screenshot(page, "4-code-asked")
    # The code the app shows next (the enrolment code was spent; the neighbouring window is accepted).
    page.fill("#id_code", totp_code(secret, at=time.time() + 30))
    page.click("button[type=submit]:has-text('Sign In')")
    page.wait_for_url("**/w/acme/")
    assert page.locator("h1").inner_text() == "Acme"
    screenshot(page, "5-signed-in")


def test_passkey_enrolment_and_sign_in_with_chromiums_virtual_authenticator(page, sign_in, screenshot):
    from allauth.mfa.models import Authenticator

    World()
    cdp = page.context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    authenticator = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    sign_in("olivia")
    page.goto("/accounts/2fa/webauthn/add/")
    page.fill("#id_name", "Laptop passkey")
    page.check("#id_passwordless")
    screenshot(page, "1-add")
    page.click("#mfa_webauthn_add")
    page.wait_for_url(lambda url: "/webauthn/add/" not in url)
    screenshot(page, "2-added")
    key = Authenticator.objects.get(user__username="olivia", type="webauthn")
    assert key.wrap().name == "Laptop passkey" and key.wrap().is_passwordless
    credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator["authenticatorId"]})["credentials"]
    assert len(credentials) == 1 and credentials[0]["isResidentCredential"]

    _sign_out(page)
    page.click("#passkey_login")
    page.wait_for_url("**/w/acme/")
    assert page.locator(".account-name").inner_text().startswith("olivia")
    screenshot(page, "3-signed-in-with-passkey")


def test_owner_maps_an_sso_group_and_requires_mfa_from_settings(page, sign_in, screenshot):
    from allauth.mfa.totp.internal.auth import TOTP

    from console.models import SsoGroupMapping

    world = World()
    sign_in("olivia")
    page.click("nav a:has-text('Settings')")
    page.fill("#id_group", "acme-engineers")
    page.select_option("[data-testid=sso-mappings] #id_role", "developer")
    page.click("button:has-text('Add mapping')")
    page.wait_for_selector("tr[data-group=acme-engineers]")
    assert "become developers at their next SSO sign-in" in page.locator(".flash").inner_text()
    assert SsoGroupMapping.objects.get(workspace=world.org).role == Role.DEVELOPER

    # Requiring MFA is refused until the owner has a second factor themselves.
    page.check("#id_require_mfa")
    page.click("[data-testid=mfa-settings] button:has-text('Save')")
    assert "Set up two-factor authentication for your own account first" in page.locator(".flash").inner_text()
    screenshot(page, "1-settings")
    TOTP.activate(world.owner, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    page.check("#id_require_mfa")
    page.click("[data-testid=mfa-settings] button:has-text('Save')")
    assert "now required for every member" in page.locator(".flash").inner_text()
    world.org.refresh_from_db()
    assert world.org.require_mfa

    # A member without a second factor is sent to set one up.
    page.click(".account-links button:has-text('Sign out')")
    page.wait_for_url("**/accounts/login/**")
    page.fill("#id_login", "sam")
    page.fill("#id_password", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_url("**/accounts/2fa/")
    assert "Acme requires two-factor authentication" in page.locator(".flash-warning").inner_text()
    screenshot(page, "2-member-sent-to-enrolment")


def test_invited_person_accepts_through_sso(page, oidc_provider, client, screenshot):
    from console.audit import Actor
    from console.invitations import invitation_create

    world = World()
    invitation, token = invitation_create(
        workspace=world.sub, email="dave@example.com", role=Role.VIEWER, actor=Actor.system("tests"), actor_role=Role.OWNER
    )
    page.goto(f"/invitations/{token}/")
    page.wait_for_url("**/invitations/accept/")
    page.click("text=Continue with Acme SSO")
    page.click("button[type=submit]")
    page.fill("#idp-username", "dave")  # in no mapped group: only the invitation lets the account be made
    page.fill("#idp-password", "dave-idp-password")
    page.click("#idp-submit")
    page.wait_for_url("**/invitations/accept/")
    screenshot(page, "1-back-from-sso")
    page.click("button:has-text('Accept and join')")
    page.wait_for_url("**/w/acme-research/")
    membership = Membership.objects.get(workspace=world.sub, user__email="dave@example.com")
    assert membership.role == Role.VIEWER and not membership.via_sso
    invitation.refresh_from_db()
    assert invitation.accepted_by == membership.user
