"""Read side of budgets: spend this month from the daily rollups, status for dashboards and banners,
and the gateway's "blocked until" for a key's workspace.

Scope: a default workspace's budget covers its whole organisation (its own usage plus every
sub-workspace's), a sub-workspace's budget only its own usage. Months are calendar months in the
budget's workspace's time zone; a sub-workspace's usage days are its own local days (as on the
billing statement). Spend counts only the budget's currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_DOWN, Decimal
from zoneinfo import ZoneInfo

from django.db.models import Q, Sum
from django.utils import timezone

from console.models import Workspace
from deployments.models import DeploymentPrice
from deployments.selectors import callable_deployments
from usage.models import Budget, UsageMonthly
from usage.rollup import local_day_start
from usage.selectors import ZERO, cents

THRESHOLDS = (80, 100)


def local_month(now: datetime, tz: ZoneInfo) -> date:
    """The first day of the month `now` falls in, in the time zone `tz`."""
    return now.astimezone(tz).date().replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + 1, 1, 1) if month.month == 12 else date(month.year, month.month + 1, 1)


def budget_currencies(workspace: Workspace, budget: Budget | None) -> list[str]:
    """The currencies a workspace's budget may be set in: those of the prices of the deployments
    it may call, and the budget's own (USD when there is none yet)."""
    found = set(
        DeploymentPrice.objects.filter(deployment__in=callable_deployments(workspace).values("id")).values_list("currency", flat=True)
    )
    found.add(budget.currency if budget else "USD")
    return sorted(found)


def covered(workspace: Workspace) -> Q:
    """Rows (keys, usage) a workspace's budget counts: the organisation for a default workspace."""
    return workspace.tree_q()


def budget_spend(workspace: Workspace, month: date, currency: str) -> Decimal:
    """Exact spend (9 places) in `month` from the monthly rollups (the sums of its daily ones), in
    one query; a default workspace's budget counts its organisation (Workspace.tree_q)."""
    total = UsageMonthly.objects.filter(workspace.tree_q(), month=month.replace(day=1), currency=currency).aggregate(s=Sum("cost"))["s"]
    return total or ZERO


def level_of(spent: Decimal, amount: Decimal) -> int:
    """The highest threshold reached (0, 80 or 100)."""
    reached = [t for t in THRESHOLDS if spent * 100 >= amount * t]
    return reached[-1] if reached else 0


@dataclass
class BudgetStatus:
    workspace: Workspace
    budget: Budget
    month: date
    spent: Decimal

    @property
    def spent_cents(self) -> Decimal:
        return cents(self.spent)

    @property
    def percent(self) -> int:
        """Whole percent, rounded down: "80 %" is shown only once 80 % is really reached."""
        return int((self.spent * 100 / self.budget.amount).to_integral_value(rounding=ROUND_DOWN))

    @property
    def meter_value(self) -> Decimal:
        return min(self.spent_cents, self.budget.amount)

    @property
    def level(self) -> int:
        return level_of(self.spent, self.budget.amount)

    @property
    def exhausted(self) -> bool:
        return self.level >= 100

    @property
    def blocking(self) -> bool:
        return self.exhausted and self.budget.block_requests

    @property
    def remaining_cents(self) -> Decimal:
        return max(self.budget.amount - self.spent_cents, ZERO).quantize(Decimal("0.01"))

    @property
    def resets_on(self) -> date:
        return next_month(self.month)


def budget_status(workspace: Workspace, *, now: datetime | None = None) -> BudgetStatus | None:
    """The workspace's budget with this month's spend read live from the rollups (two queries)."""
    budget = Budget.objects.filter(workspace=workspace).first()
    if budget is None:
        return None
    month = local_month(now or timezone.now(), workspace.tz)
    return BudgetStatus(workspace, budget, month, budget_spend(workspace, month, budget.currency))


def budget_statuses(
    workspace: Workspace, *, with_subs: bool, now: datetime | None = None
) -> tuple[BudgetStatus | None, list[BudgetStatus]]:
    """The workspace's own budget status and, with_subs on a default workspace, its sub-workspaces'
    (one query for the budgets, then one per own budget and one for all sub-workspace budgets)."""
    scope = workspace.tree_q() if with_subs else Q(workspace=workspace)
    budgets = list(Budget.objects.filter(scope).select_related("workspace").order_by("workspace__name"))
    now = now or timezone.now()
    own = next((b for b in budgets if b.workspace_id == workspace.id), None)
    subs = [b for b in budgets if b.workspace_id != workspace.id]
    status = None
    if own is not None:
        month = local_month(now, workspace.tz)
        status = BudgetStatus(workspace, own, month, budget_spend(workspace, month, own.currency))
    if not subs:
        return status, []
    months = {b.id: local_month(now, b.workspace.tz) for b in subs}
    ranges = Q(pk__in=[])
    for b in subs:
        ranges |= Q(workspace_id=b.workspace_id, currency=b.currency, month=months[b.id])
    spent = dict(
        UsageMonthly.objects.filter(ranges).values("workspace_id").annotate(s=Sum("cost")).values_list("workspace_id", "s").order_by()
    )
    return status, [BudgetStatus(b.workspace, b, months[b.id], spent.get(b.workspace_id) or ZERO) for b in subs]


@dataclass
class Banner:
    workspace: Workspace
    level: int
    percent: int
    blocking: bool
    own: bool  # False: the organisation's budget seen from a sub-workspace (shown without figures)
    resets_on: date


def budget_banners(workspace: Workspace, *, can_admin: bool, now: datetime | None = None) -> list[Banner]:
    """Budgets at 80 % or more this month, for the shell, from the worker's last reading (one query).

    Members see their workspace's budget; in a sub-workspace they also learn that the
    organisation's budget blocks requests, never its figures (they include siblings' spend).
    Admins of a default workspace also see their sub-workspaces' budgets.
    """
    scope = workspace.tree_q() if workspace.is_default and can_admin else Q(workspace_id__in=workspace.lineage_ids)
    now = now or timezone.now()
    banners = []
    for budget in (
        Budget.objects.filter(scope, spent_month__isnull=False)
        .select_related("workspace")
        .order_by("workspace__parent_id", "workspace__name")
    ):
        month = local_month(now, budget.workspace.tz)
        level = level_of(budget.spent, budget.amount) if budget.spent_month == month else 0
        if not level:
            continue
        own = budget.workspace_id != workspace.parent_id
        blocking = level >= 100 and budget.block_requests
        if not own and not blocking:
            continue
        percent = int((budget.spent * 100 / budget.amount).to_integral_value(rounding=ROUND_DOWN))
        banners.append(Banner(budget.workspace, level, percent, blocking, own, next_month(month)))
    return banners


def budget_blocked_until(workspace: Workspace, *, now: datetime | None = None) -> datetime | None:
    """Until when the gateway refuses this workspace's requests (None: not blocked), one query."""
    return budget_guard(workspace, now=now)[1]


def budget_guard(workspace: Workspace, *, now: datetime | None = None) -> tuple[bool, datetime | None]:
    """Whether a budget that blocks requests covers this workspace, and until when it refuses them
    (None: not blocked), in one query.

    Its own budget and, for a sub-workspace, the organisation's count; each blocks until the end
    of the month (in its workspace's time zone) in which the worker found it used up, so a new
    month unblocks without anyone publishing a change. The gateway caps completions for a
    workspace with a blocking budget, so a runaway answer cannot run far past it.
    """
    now = now or timezone.now()
    blocks, until = False, None
    for budget in Budget.objects.filter(workspace_id__in=workspace.lineage_ids, block_requests=True).select_related("workspace"):
        blocks = True
        if budget.spent_month is None or budget.spent < budget.amount:
            continue
        end = local_day_start(next_month(budget.spent_month), budget.workspace.tz)
        if end > now and (until is None or end > until):
            until = end
    return blocks, until
