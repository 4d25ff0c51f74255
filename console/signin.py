"""django-allauth adapters: how sign-in, sign-up and SSO fit Gatehouse's tenancy.

Accounts are made by invitation (or by an admin with a one-time password), never by open sign-up:
sign-up is open only to the holder of a pending invitation, for the invited address, and SSO
creates an account only for an invited person or one whose identity-provider groups a workspace
maps to a role.
"""

from __future__ import annotations

import logging
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core import context as allauth_context
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from django import forms
from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse

from console.access import signed_in_recently
from console.audit import Actor
from console.invitations import pending_invitation_from_session
from console.models import User
from console.sso import sso_groups_from_claims, sso_has_mapping_for, sso_memberships_sync
from lib.net import client_ip

logger = logging.getLogger(__name__)


class AccountAdapter(DefaultAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest) -> bool:
        return pending_invitation_from_session(request) is not None

    def clean_email(self, email: str) -> str:
        email = super().clean_email(email)
        request = getattr(self, "request", None)
        invitation = pending_invitation_from_session(request) if request is not None else None
        # The invitation link is what proves the address: an account made with it must use it.
        if invitation is not None and email.lower() != invitation.email.lower() and not request.user.is_authenticated:
            raise forms.ValidationError(f"Use the address the invitation was sent to ({invitation.email}).")
        return email

    def is_reauthentication_required(self, *, app: str, **kwargs) -> bool:
        # allauth's own pages (adding an authenticator, changing email) accept a sign-in of the last
        # few minutes as well, the same rule as Gatehouse's sensitive changes.
        if not super().is_reauthentication_required(app=app, **kwargs):
            return False
        request = allauth_context.request
        return request is None or not signed_in_recently(request)

    def _get_login_attempts_cache_key(self, request: HttpRequest, **credentials) -> str:
        # allauth keys failed sign-ins by what was typed, so a username and an email address
        # would be two counters for one account: key them by the account when there is one.
        login = (credentials.get("email") or credentials.get("username") or "").strip().lower()
        user = User.objects.filter(Q(username__iexact=login) | Q(email__iexact=login)).order_by("pk").values_list("pk", flat=True).first()
        return f"user:{user}" if user is not None else f"login:{login}"

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        if not settings.EMAIL_ENABLED:
            logger.warning("Email is not configured (EMAIL_HOST is unset): %s was not sent", template_prefix)
            return
        super().send_mail(template_prefix, email, context)

    def get_client_ip(self, request: HttpRequest) -> str:
        # The same rule as the audit log and the gateway: X-Forwarded-For only from TRUSTED_PROXIES.
        return client_ip(request) or "unknown"

    def post_login(self, request: HttpRequest, user, *, signal_kwargs: dict[str, Any] | None = None, **kwargs) -> HttpResponse:
        sociallogin = (signal_kwargs or {}).get("sociallogin")
        if sociallogin is not None:
            sso_memberships_sync(
                user=user,
                groups=sso_groups_from_claims(sociallogin.account.extra_data, claim=settings.OIDC_GROUPS_CLAIM),
                actor=Actor(user=user, ip=client_ip(request), label=f"sso:{user.get_username()}"),
            )
        return super().post_login(request, user, signal_kwargs=signal_kwargs, **kwargs)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request: HttpRequest, sociallogin) -> bool:
        if pending_invitation_from_session(request) is not None:
            return True
        return sso_has_mapping_for(sso_groups_from_claims(sociallogin.account.extra_data, claim=settings.OIDC_GROUPS_CLAIM))
