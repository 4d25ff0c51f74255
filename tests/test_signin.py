"""Sign-in a security team accepts: lockout, invitations instead of user look-up, password reset,
re-authentication, required MFA and the one-time-password path (django-allauth underneath)."""

from __future__ import annotations

import json
import re
import time

import pytest
from allauth.mfa.totp.internal.auth import TOTP
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from console.models import AuditEvent, Invitation, Membership, Role, User
from console.services import ONE_TIME_PASSWORD_ALPHABET, one_time_password
from keys.models import ApiKey
from tests.conftest import PASSWORD
from tests.totp import totp_code


@pytest.fixture(autouse=True)
def _fresh_rate_limits():
    # allauth counts failures in the cache (Redis here), which outlives a test's transaction.
    cache.clear()
    yield
    cache.clear()


def _sign_in(client: Client, login: str, password: str, ip: str = "203.0.113.7"):
    return client.post(reverse("account_login"), {"login": login, "password": password}, REMOTE_ADDR=ip)


def test_account_is_locked_after_repeated_failures_even_for_the_right_password(world, settings):
    client = Client()
    for _ in range(settings.SIGNIN_FAILURES_PER_ACCOUNT):
        response = _sign_in(client, "olivia", "wrong-password")
        assert response.status_code == 200
        assert "not correct" in response.content.decode()
    response = _sign_in(client, "olivia", PASSWORD)
    assert response.status_code in (200, 429)
    assert "Too many failed login attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another account from another address is not affected.
    assert _sign_in(Client(), "adam", PASSWORD, ip="198.51.100.9").status_code == 302


def test_lockout_counts_the_email_and_the_username_as_one_account(world, settings):
    client = Client()
    for i in range(settings.SIGNIN_FAILURES_PER_ACCOUNT):
        _sign_in(client, "olivia" if i % 2 else "olivia@example.com", "wrong-password")
    assert "Too many failed login attempts" in _sign_in(client, "olivia", PASSWORD).content.decode()


def test_one_address_is_limited_across_accounts(world, settings):
    client = Client()
    names = ["adam", "dev", "vera", "sam", "nobody", "ghost"]
    for i in range(settings.SIGNIN_FAILURES_PER_IP):
        _sign_in(client, names[i % len(names)] + str(i // len(names)), "wrong-password", ip="192.0.2.50")
    response = _sign_in(client, "olivia", PASSWORD, ip="192.0.2.50")
    assert "Too many failed login attempts" in response.content.decode()
    assert _sign_in(Client(), "olivia", PASSWORD, ip="192.0.2.51").status_code == 302


def test_correct_password_signs_in_with_username_or_email(world):
    for login in ("olivia", "OLIVIA@example.com"):
        client = Client()
        response = _sign_in(client, login, PASSWORD)
        assert response.status_code == 302 and response.url == "/"
        assert client.get("/").url == reverse("workspace_overview", kwargs={"ws": "acme"})


def test_old_password_address_redirects_to_the_change_page(world, client_for):
    response = client_for(world.owner).get("/accounts/password/")
    assert response.status_code == 302 and response.url == reverse("password_change")


def test_admins_cannot_add_or_look_up_users_of_other_tenants(world, client_for, mailoutbox):
    client = client_for(world.admin)
    # The old look-up endpoint is gone.
    assert client.post("/w/acme/members/add/", {"user": "oscar", "role": "viewer"}).status_code == 404
    # Inviting someone else's user by address sends an invitation and adds nobody.
    response = client.post(reverse("invitation_create", kwargs={"ws": "acme"}), {"email": "oscar@example.com", "role": "viewer"})
    assert response.status_code == 302
    assert not Membership.objects.filter(workspace=world.org, user=world.outsider).exists()
    assert len(mailoutbox) == 1 and mailoutbox[0].to == ["oscar@example.com"]
    # The answer is the same for an address nobody has: nothing tells whether it exists.
    page = client.get(reverse("members_page", kwargs={"ws": "acme"})).content.decode()
    assert "oscar" not in page.replace("oscar@example.com", "")


def _link_from(mail) -> str:
    return re.search(r"https?://[^\s]+/invitations/[^\s/]+/", mail.body).group(0)


def test_invitation_by_email_is_accepted_by_a_new_account(world, client_for, mailoutbox):
    response = client_for(world.admin).post(
        reverse("invitation_create", kwargs={"ws": "acme-research"}), {"email": "Nina@Example.com", "role": "developer"}
    )
    assert response.status_code == 302
    invitation = Invitation.objects.get(workspace=world.sub)
    assert invitation.email == "nina@example.com" and invitation.role == Role.DEVELOPER
    link = _link_from(mailoutbox[0])
    token = link.rstrip("/").rsplit("/", 1)[1]
    assert token not in invitation.token_digest and len(invitation.token_digest) == 64  # only a digest is stored
    assert "Research" in mailoutbox[0].subject

    nina = Client()
    # Sign-up is closed without an invitation.
    assert "made by invitation" in nina.get(reverse("account_signup")).content.decode()
    opened = nina.get(link)
    assert opened.status_code == 302 and opened.url == reverse("invitation_accept")  # the token leaves the address bar
    page = nina.get(reverse("invitation_accept")).content.decode()
    assert "Join Research" in page and "nina@example.com" in page

    # The account must use the invited address.
    data = {
        "username": "nina",
        "email": "someone-else@example.com",
        "password1": "a-long-new-password-9",
        "password2": "a-long-new-password-9",
    }
    assert "Use the address the invitation was sent to" in nina.post(reverse("account_signup"), data).content.decode()
    data["email"] = "nina@example.com"
    assert nina.post(f"{reverse('account_signup')}?next={reverse('invitation_accept')}", data).status_code == 302
    user = User.objects.get(username="nina")
    assert not Membership.objects.filter(user=user).exists()  # not a member until they accept

    response = nina.post(reverse("invitation_accept"), {"decision": "accept"})
    assert response.url == reverse("workspace_overview", kwargs={"ws": "acme-research"})
    assert Membership.objects.get(user=user, workspace=world.sub).role == Role.DEVELOPER
    invitation.refresh_from_db()
    assert invitation.accepted_by == user
    assert AuditEvent.objects.filter(workspace=world.sub, action="invitation.accepted").exists()
    # The link works once.
    assert Client().get(link).status_code == 404


def test_existing_user_of_another_tenant_joins_only_by_accepting(world, client_for, mailoutbox):
    client_for(world.owner).post(reverse("invitation_create", kwargs={"ws": "acme"}), {"email": "oscar@example.com", "role": "viewer"})
    oscar = Client()
    oscar.get(_link_from(mailoutbox[0]))
    assert _sign_in(oscar, "oscar", PASSWORD).status_code == 302
    assert not Membership.objects.filter(workspace=world.org, user=world.outsider).exists()
    oscar.post(reverse("invitation_accept"), {"decision": "decline"})
    assert not Membership.objects.filter(workspace=world.org, user=world.outsider).exists()
    assert Invitation.objects.get().accepted_at is None


def test_revoked_or_expired_invitation_cannot_be_used(world, client_for, mailoutbox):
    client = client_for(world.admin)
    client.post(reverse("invitation_create", kwargs={"ws": "acme"}), {"email": "nina@example.com", "role": "viewer"})
    invitation = Invitation.objects.get()
    client.post(reverse("invitation_revoke", kwargs={"ws": "acme", "invitation": invitation.public_id}))
    response = Client().get(_link_from(mailoutbox[0]))
    assert response.status_code == 404 and "not valid" in response.content.decode()
    # A new invitation for the same address can be sent once the old one is revoked.
    client.post(reverse("invitation_create", kwargs={"ws": "acme"}), {"email": "nina@example.com", "role": "viewer"})
    assert Invitation.objects.filter(revoked_at=None).count() == 1


def test_password_reset_by_email(world, mailoutbox):
    client = Client()
    response = client.post(reverse("account_reset_password"), {"email": "vera@example.com"})
    assert response.status_code == 302
    link = re.search(r"https?://[^\s]+/accounts/password/reset/key/[^\s]+/", mailoutbox[0].body).group(0)
    form_page = client.get(link, follow=True)
    action = form_page.redirect_chain[-1][0] if form_page.redirect_chain else link
    response = client.post(action, {"password1": "vera-brand-new-pass-7", "password2": "vera-brand-new-pass-7"})
    assert response.status_code == 302
    assert _sign_in(Client(), "vera", "vera-brand-new-pass-7").status_code == 302
    assert "Too many" not in _sign_in(Client(), "vera", PASSWORD, ip="192.0.2.77").content.decode()
    assert _sign_in(Client(), "vera", PASSWORD, ip="192.0.2.78").status_code == 200  # the old one no longer works


def test_stale_session_must_reauthenticate_before_creating_a_key_and_the_post_is_replayed(world, client_for):
    client = client_for(world.developer)
    session = client.session
    session["account_authentication_methods"][-1]["at"] = time.time() - 3600
    session.save()
    url = reverse("api_key_create", kwargs={"ws": "acme"})
    data = {"name": "after-reauth", "all_models": "on"}
    response = client.post(url, data)
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
    assert not ApiKey.objects.filter(name="after-reauth").exists()
    response = client.post(response.url, {"password": PASSWORD})
    # The suspended POST ran: it redirects to the key's show-once page (Post/Redirect/Get).
    assert response.status_code == 302 and "/secret/" in response.url
    assert ApiKey.objects.filter(name="after-reauth", workspace=world.org).exists()


@pytest.mark.parametrize(
    ("name", "kwargs", "data"),
    [
        ("member_role", "membership", {"role": "developer"}),
        ("budget_edit", None, {"amount": "10", "currency": "USD"}),
    ],
)
def test_role_and_budget_changes_need_a_recent_sign_in(world, client_for, name, kwargs, data):
    client = client_for(world.owner)
    session = client.session
    session["account_authentication_methods"][-1]["at"] = time.time() - 3600
    session.save()
    args = {"ws": "acme"}
    if kwargs:
        args["member"] = Membership.objects.get(workspace=world.org, user=world.viewer).public_id
    before = Membership.objects.get(workspace=world.org, user=world.viewer).role, AuditEvent.objects.count()
    response = client.post(reverse(name, kwargs=args), data)
    assert response.status_code == 302 and response.url.startswith(reverse("account_reauthenticate"))
    assert (Membership.objects.get(workspace=world.org, user=world.viewer).role, AuditEvent.objects.count()) == before


def test_outsider_gets_404_not_a_reauthentication_prompt(world, client_for):
    client = client_for(world.outsider)
    session = client.session
    session["account_authentication_methods"][-1]["at"] = time.time() - 3600
    session.save()
    assert client.post(reverse("api_key_create", kwargs={"ws": "acme"}), {}).status_code == 404


def test_owner_requires_mfa_and_members_without_it_are_sent_to_enrolment(world, client_for):
    url = reverse("workspace_require_mfa", kwargs={"ws": "acme"})
    assert client_for(world.admin).post(url, {"require_mfa": "on"}).status_code == 403  # owners only
    client = client_for(world.owner)
    client.post(url, {"require_mfa": "on"})
    world.org.refresh_from_db()
    assert not world.org.require_mfa  # the owner has no second factor yet: refused, so they cannot lock themselves out
    TOTP.activate(world.owner, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    client.post(url, {"require_mfa": "on"})
    world.org.refresh_from_db()
    assert world.org.require_mfa
    assert AuditEvent.objects.filter(action="workspace.mfa_required", actor=world.owner).exists()

    # A member of a sub-workspace without MFA is sent to enrolment, on every page of the tree.
    sam = client_for(world.sub_member)
    for name in ("workspace_overview", "secrets_page", "usage_page"):
        response = sam.get(reverse(name, kwargs={"ws": "acme-research"}))
        assert response.status_code == 302 and response.url == reverse("mfa_index"), name
    assert sam.get(reverse("mfa_index")).status_code == 200
    # htmx requests get a client-side redirect instead of a swapped-in page.
    response = sam.get(reverse("workspace_overview", kwargs={"ws": "acme-research"}), HTTP_HX_REQUEST="true")
    assert response["HX-Redirect"] == reverse("mfa_index")
    TOTP.activate(world.sub_member, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXQ")
    assert sam.get(reverse("workspace_overview", kwargs={"ws": "acme-research"})).status_code == 200
    # Other organisations are not affected.
    assert client_for(world.outsider).get(reverse("workspace_overview", kwargs={"ws": "globex"})).status_code == 200


def test_totp_sign_in_asks_for_the_code(world):
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    TOTP.activate(world.owner, secret)
    client = Client()
    response = _sign_in(client, "olivia", PASSWORD)
    assert response.url == reverse("mfa_authenticate")
    assert "_auth_user_id" not in client.session
    assert client.post(reverse("mfa_authenticate"), {"code": "000000" if totp_code(secret) != "000000" else "111111"}).status_code == 200
    assert "_auth_user_id" not in client.session
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302
    assert client.session["_auth_user_id"] == str(world.owner.pk)


def test_webauthn_enrolment_page_offers_passkey_creation_with_static_scripts(world, client_for):
    response = client_for(world.owner).get(reverse("mfa_add_webauthn"))
    assert response.status_code == 200
    html = response.content.decode()
    options = re.search(r'data-allauth-onload="allauth.webauthn.forms.addForm" type="application/json">(.*?)</script>', html, re.S)
    assert options is not None
    assert '<script src="/static/mfa/js/webauthn.js"' in html and '<script src="/static/mfa/js/webauthn-json.js"' in html
    # No inline executable script: every <script> either loads a static file or is a JSON data block.
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert "'unsafe-inline'" not in response["Content-Security-Policy"]
    creation = json.loads(re.search(r'<script id="js_data" type="application/json">(.*?)</script>', html, re.S).group(1))
    public_key = creation["creation_options"]["publicKey"]
    assert public_key["rp"]["id"] == "testserver"  # bound to the host the console is served on
    assert public_key["user"]["name"] == "olivia@example.com"
    assert {p["alg"] for p in public_key["pubKeyCredParams"]} >= {-7, -257}  # ES256 and RS256
    assert public_key["challenge"]


def test_one_time_passwords_have_no_look_alike_characters(world, client_for):
    for ambiguous in "0Oo1lIi5S2Z8B":
        assert ambiguous not in ONE_TIME_PASSWORD_ALPHABET
    for _ in range(200):
        password = one_time_password()
        assert re.fullmatch(rf"[{ONE_TIME_PASSWORD_ALPHABET}]{{4}}(-[{ONE_TIME_PASSWORD_ALPHABET}]{{4}}){{3}}", password)
    response = client_for(world.admin).post(
        reverse("member_create", kwargs={"ws": "acme"}), {"username": "offline", "email": "", "role": "viewer"}
    )
    password = response.context["password"]
    assert not set(password) & set("0Oo1lIi5S2Z8B")
    assert _sign_in(Client(), "offline", password).url == "/"


def test_sso_sync_follows_the_groups_but_never_touches_invited_members(world):
    from console.audit import Actor
    from console.sso import sso_groups_from_claims, sso_mapping_create, sso_memberships_sync

    actor = Actor.system("tests")
    sso_mapping_create(workspace=world.org, group="eng", role=Role.DEVELOPER, actor=actor, actor_role=Role.OWNER)
    sso_mapping_create(workspace=world.org, group="leads", role=Role.ADMIN, actor=actor, actor_role=Role.OWNER)
    sso_mapping_create(workspace=world.sub, group="research", role=Role.VIEWER, actor=actor, actor_role=Role.OWNER)
    carol = User.objects.create_user("carol", "carol@example.com")
    claims = {"id_token": {"groups": ["eng"]}, "userinfo": {"groups": ["research", "other"]}}
    sso_memberships_sync(user=carol, groups=sso_groups_from_claims(claims, claim="groups"), actor=actor)
    assert {(m.workspace.slug, m.role) for m in carol.memberships.all()} == {("acme", "developer"), ("acme-research", "viewer")}
    sso_memberships_sync(user=carol, groups={"eng", "leads"}, actor=actor)  # highest mapped role wins; research gone
    assert {(m.workspace.slug, m.role) for m in carol.memberships.all()} == {("acme", "admin")}
    assert AuditEvent.objects.filter(action="member.removed", details__via="sso", workspace=world.sub).exists()
    # A member added by hand (or invitation) keeps their role whatever the IdP says.
    sso_memberships_sync(user=world.viewer, groups={"leads"}, actor=actor)
    assert Membership.objects.get(workspace=world.org, user=world.viewer).role == Role.VIEWER
    sso_memberships_sync(user=world.viewer, groups=set(), actor=actor)
    assert Membership.objects.filter(workspace=world.org, user=world.viewer).exists()


def test_sso_mappings_in_the_console(world, client_for):
    url = reverse("sso_mapping_add", kwargs={"ws": "acme"})
    admin = client_for(world.admin)
    response = admin.post(url, {"group": "acme-owners", "role": "owner"})
    assert response.status_code == 400  # admins cannot map to owner
    assert admin.post(url, {"group": "acme-engineers", "role": "developer"}).status_code == 302
    page = admin.get(reverse("workspace_settings", kwargs={"ws": "acme"})).content.decode()
    assert "acme-engineers" in page
    # Another organisation cannot claim the same group and pull Acme's people in.
    response = client_for(world.outsider).post(
        reverse("sso_mapping_add", kwargs={"ws": "globex"}), {"group": "acme-engineers", "role": "admin"}
    )
    assert response.status_code == 400 and "mapped by another organisation" in response.content.decode()
    mapping = world.org.sso_mappings.get()
    assert (
        client_for(world.outsider).post(reverse("sso_mapping_remove", kwargs={"ws": "acme", "mapping": mapping.public_id})).status_code
        == 404
    )
    assert client_for(world.developer).post(url, {"group": "x", "role": "viewer"}).status_code == 403
    admin = client_for(world.admin)
    admin.post(reverse("sso_mapping_remove", kwargs={"ws": "acme", "mapping": mapping.public_id}))
    assert not world.org.sso_mappings.exists()
    assert AuditEvent.objects.filter(action="sso_mapping.deleted", actor=world.admin).exists()


def test_admin_site_signs_in_through_the_throttled_console_sign_in(world):
    response = Client().post("/admin/login/", {"username": "olivia", "password": "wrong"})
    assert response.status_code == 302 and response.url.startswith(reverse("account_login"))


@pytest.mark.parametrize(
    "name",
    [
        "mfa_index",
        "mfa_deactivate_totp",
        "mfa_list_webauthn",
        "mfa_add_webauthn",
        "mfa_view_recovery_codes",
        "mfa_generate_recovery_codes",
        "password_change",
        "socialaccount_connections",
        "account_reauthenticate",
    ],
)
def test_account_pages_render_for_a_signed_in_user(world, client_for, name):
    from allauth.mfa.recovery_codes.internal.auth import RecoveryCodes

    TOTP.activate(world.owner, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP")
    RecoveryCodes.activate(world.owner)
    response = client_for(world.owner).get(reverse(name))
    assert response.status_code == 200, name
    assert 'class="auth-card' in response.content.decode()  # the console's look, not allauth's bare HTML
