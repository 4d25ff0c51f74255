"""Budget blocks other templates include: the card on Billing and Usage, the banner in the shell."""

from __future__ import annotations

from django import template

from usage.budgets import budget_banners, budget_statuses

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
