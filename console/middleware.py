from __future__ import annotations

from allauth.account.adapter import get_adapter
from allauth.core.exceptions import ReauthenticationRequired
from django.contrib import messages
from django.contrib.auth import logout
from django.http import HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from console.access import MfaEnrolmentRequired


class PasswordChangeRequiredMiddleware:
    """Send users created with a one-time password to the password change page until they set their own."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        # The admin API (adminapi/) never reads the session: its callers are admin keys, not people.
        if user.is_authenticated and user.must_change_password and not request.path.startswith("/api/admin/"):
            allowed = {reverse("password_change"), reverse("account_logout")}
            if request.path not in allowed and not request.path.startswith("/static/"):
                return redirect("password_change")
        return self.get_response(request)


class MfaEnrolmentRequiredMiddleware:
    """Members of a workspace tree that requires MFA and have no second factor go to enrolment."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if isinstance(exception, ReauthenticationRequired) and request.user.is_authenticated:
            if not get_adapter().get_reauthentication_methods(request.user):
                # Signed in with SSO only, no password and no second factor: allauth has no way to
                # re-authenticate such an account, so a fresh sign-in with the provider stands in.
                logout(request)
                messages.info(request, "Please sign in again to confirm it is you.")
                return redirect(f"{reverse('account_login')}?next={request.path}")
            return None
        if not isinstance(exception, MfaEnrolmentRequired):
            return None
        messages.warning(request, f"{exception} requires two-factor authentication. Set up an authenticator app or a passkey to continue.")
        url = reverse("mfa_index")
        if getattr(request, "htmx", False):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = url
            return response
        return redirect(url)
