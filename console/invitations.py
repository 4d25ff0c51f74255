"""Invitations by email: an admin offers a role; the invited person accepts before becoming a member.

Only an HMAC of the emailed token is stored. Opening the link puts the invitation's id in the
session and redirects to a token-free URL, so the token does not travel on in `next` parameters,
Referer headers or access logs of the pages that follow.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.crypto import salted_hmac

from console.audit import Actor, audit_record
from console.models import Invitation, Membership, Role, User, Workspace
from console.services import membership_add

SESSION_KEY = "gatehouse_invitation"


def _digest(token: str) -> str:
    return salted_hmac("gatehouse.invitation", token, algorithm="sha256").hexdigest()


def invitation_create(*, workspace: Workspace, email: str, role: Role, actor: Actor, actor_role: Role) -> tuple[Invitation, str]:
    """A new invitation and the token for its link (returned once; only its digest is stored)."""
    email = email.strip().lower()
    if role == Role.OWNER and actor_role != Role.OWNER:
        raise ValidationError({"role": "Only an owner can invite an owner."})
    # Said the same way whether or not the address has an account anywhere on the installation.
    if Membership.objects.filter(workspace=workspace, user__email__iexact=email).exists():
        raise ValidationError({"email": f"{email} is already a member of {workspace.name}."})
    token = secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                workspace=workspace,
                email=email,
                role=role,
                token_digest=_digest(token),
                invited_by=actor.user if getattr(actor.user, "pk", None) else None,
                expires_at=timezone.now() + timedelta(days=settings.INVITATION_DAYS),
            )
            audit_record(
                workspace=workspace, actor=actor, action="invitation.created", target=invitation, details={"email": email, "role": role}
            )
    except IntegrityError:
        raise ValidationError(
            {"email": f"{email} already has an open invitation to {workspace.name}. Revoke it to send a new one."}
        ) from None
    return invitation, token


def invitation_send(*, invitation: Invitation, accept_url: str) -> None:
    context = {"invitation": invitation, "accept_url": accept_url, "days": settings.INVITATION_DAYS}
    subject = render_to_string("console/email/invitation_subject.txt", context).strip()
    body = render_to_string("console/email/invitation_message.txt", context)
    send_mail(subject, body, None, [invitation.email])


def invitation_for_token(token: str) -> Invitation | None:
    invitation = (
        Invitation.objects.select_related("workspace", "workspace__parent", "invited_by").filter(token_digest=_digest(token)).first()
    )
    return invitation if invitation is not None and invitation_is_open(invitation) else None


def invitation_is_open(invitation: Invitation) -> bool:
    return invitation.accepted_at is None and invitation.revoked_at is None and invitation.expires_at > timezone.now()


def pending_invitation_from_session(request) -> Invitation | None:
    public_id = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    if not public_id:
        return None
    invitation = Invitation.objects.select_related("workspace", "workspace__parent", "invited_by").filter(public_id=public_id).first()
    return invitation if invitation is not None and invitation_is_open(invitation) else None


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User, actor: Actor) -> Membership:
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if not invitation_is_open(invitation):
        raise ValidationError("This invitation has already been used, was revoked, or has expired.")
    if Membership.objects.filter(workspace=invitation.workspace, user=user).exists():
        raise ValidationError(f"You are already a member of {invitation.workspace.name}.")
    # The inviter's rank was checked when the invitation was made; the invited person accepts it.
    membership = membership_add(workspace=invitation.workspace, user=user, role=Role(invitation.role), actor=actor)
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        workspace=invitation.workspace,
        actor=actor,
        action="invitation.accepted",
        target=invitation,
        details={"email": invitation.email, "user": user.get_username(), "role": invitation.role},
    )
    return membership


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor) -> None:
    if not invitation_is_open(invitation):
        return
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        workspace=invitation.workspace, actor=actor, action="invitation.revoked", target=invitation, details={"email": invitation.email}
    )
