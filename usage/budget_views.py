"""Budget editing and the overview page's usage panel (kept apart from the dashboards in views.py)."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from console.access import access_workspace, require_recent_authentication
from console.audit import Actor
from console.models import Role
from usage.budgets import budget_currencies, budget_status
from usage.forms import BudgetForm
from usage.models import Budget
from usage.overview import overview_numbers
from usage.services import budget_remove, budget_set

TOP_DAYS = 7


@login_required
@require_http_methods(["GET", "POST"])
def budget_edit(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    if request.method == "POST":
        require_recent_authentication(request)
    workspace = access.workspace
    budget = Budget.objects.filter(workspace=workspace).first()
    initial = {"amount": budget.amount, "currency": budget.currency, "block_requests": budget.block_requests} if budget else {}
    form = BudgetForm(request.POST or None, initial=initial, currencies=budget_currencies(workspace, budget))
    if request.method == "POST":
        if form.is_valid():
            budget_set(workspace=workspace, actor=Actor.from_request(request), **form.cleaned_data)
            messages.success(request, f"Monthly budget saved: {form.cleaned_data['amount']} {form.cleaned_data['currency']}.")
            return redirect("billing_page", ws=workspace.slug)
        status = 400
    else:
        status = 200
    context = {"access": access, "nav": "billing", "form": form, "budget": budget}
    return render(request, "usage/budget_form_page.html", context, status=status)


@login_required
@require_POST
def budget_delete(request: HttpRequest, ws: str) -> HttpResponse:
    access = access_workspace(request.user, ws, min_role=Role.ADMIN)
    require_recent_authentication(request)
    if budget_remove(workspace=access.workspace, actor=Actor.from_request(request)):
        messages.success(request, "Monthly budget removed.")
    return redirect("billing_page", ws=access.workspace.slug)


@login_required
@require_GET
def usage_overview_panel(request: HttpRequest, ws: str) -> HttpResponse:
    """Today's numbers, the top keys and deployments of the last 7 days and the budget, from the
    daily rollups (as fresh as the last rollup pass, at most about a minute old)."""
    access = access_workspace(request.user, ws)
    workspace = access.workspace
    today = timezone.now().astimezone(workspace.tz).date()
    numbers = overview_numbers(workspace, today=today, top_since=today - timedelta(days=TOP_DAYS - 1))
    context = {"access": access, "numbers": numbers, "today": today, "top_days": TOP_DAYS, "status": budget_status(workspace)}
    return render(request, "usage/overview_panel.html", context)
