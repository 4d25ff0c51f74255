"""Blocks other templates include: the budget card on Billing and Usage, the budget and usage-spool banners in the shell."""

from __future__ import annotations

from django import template

from console.access import effective_role
from console.models import Role
from usage.budgets import budget_banners, budget_statuses
from usage.spool_status import spool_alerts

register = template.Library()


@register.inclusion_tag("usage/budget_card.html")
def budget_card(access) -> dict:
    """This workspace's budget against this month's spend (live from the rollups); on a default
    workspace, admins also see each sub-workspace's budget."""
    workspace = access.workspace
    status, subs = budget_statuses(workspace, with_subs=access.can_admin)
    return {"access": access, "ws": workspace, "status": status, "subs": subs}


@register.inclusion_tag("usage/budget_banner.html")
def budget_banner(access) -> dict:
    if access is None:
        return {"banners": []}
    return {"ws": access.workspace, "banners": budget_banners(access.workspace, can_admin=access.can_admin)}


@register.inclusion_tag("usage/spool_banner.html")
def usage_spool_banner(access) -> dict:
    """Usage events waiting in a gateway's local spool for minutes (the gateway cannot reach the
    database), for the installation's admins: superusers and admins of a default workspace."""
    if access is None or not _installation_admin(access):
        return {"spools": []}
    return {"spools": spool_alerts()}


def _installation_admin(access) -> bool:
    if access.user.is_superuser:
        return True
    if not access.can_admin:
        return False
    if access.workspace.parent_id is None:
        return True
    # In a sub-workspace: only an owner/admin of its organisation (the default workspace).
    return effective_role(access.user, access.workspace.parent) in (Role.OWNER, Role.ADMIN)
