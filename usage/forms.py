from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal

from django import forms

from usage.models import ENDPOINTS
from usage.selectors import DEFAULT_SORT, SORT_FIELDS

MAX_RANGE_DAYS = 366


class UsageFilterForm(forms.Form):
    range = forms.ChoiceField(required=False, choices=[("", "Per day"), ("48h", "Last 48 hours")])
    start = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    workspace = forms.ChoiceField(required=False, label="Sub-workspace")
    key = forms.ChoiceField(required=False)
    deployment = forms.ChoiceField(required=False)
    endpoint = forms.ChoiceField(required=False, label="API", choices=[("", "All APIs"), *ENDPOINTS.items()])
    sort = forms.CharField(required=False)

    def __init__(self, data, *, today: date, workspaces, keys, deployments, own=None):
        super().__init__(data)
        self.today = today
        # `own`: the default workspace, whose slug stands for its own usage without its sub-workspaces'.
        mine = [(own.slug, f"{own.name} (own usage)")] if own is not None else []
        self.fields["workspace"].choices = [("", "All workspaces"), *mine] + [(w.slug, w.name) for w in workspaces]
        subs = {w.id: w.name for w in workspaces}
        self.fields["key"].choices = [("", "All keys")] + [(str(k.public_id), _key_label(k, subs)) for k in keys]
        self.fields["deployment"].choices = [("", "All deployments")] + [(str(d.public_id), d.name) for d in deployments]

    def clean_sort(self) -> str:
        # A sort the page does not offer falls back to the default rather than hiding the numbers.
        value = self.cleaned_data["sort"]
        return value if value.lstrip("-") in SORT_FIELDS else DEFAULT_SORT

    def clean(self):
        data = super().clean()
        if data.get("range") == "48h":
            return data  # the hourly window is fixed; dates do not apply
        end = data.get("end") or self.today
        start = data.get("start") or (end - timedelta(days=29))
        if start > end:
            raise forms.ValidationError("The start date must be on or before the end date.")
        if (end - start).days + 1 > MAX_RANGE_DAYS:
            raise forms.ValidationError(f"Pick a range of at most {MAX_RANGE_DAYS} days.")
        data["start"], data["end"] = start, end
        return data


class MonthForm(forms.Form):
    month = forms.CharField(required=False, max_length=7)
    endpoint = forms.ChoiceField(required=False, label="API", choices=[("", "All APIs"), *ENDPOINTS.items()])

    def clean_month(self) -> date | None:
        value = self.cleaned_data["month"]
        if not value:
            return None
        if not re.fullmatch(r"\d{4}-\d{2}", value) or not 1 <= int(value[5:]) <= 12 or int(value[:4]) < 2000:
            raise forms.ValidationError("Pick a month as YYYY-MM.")
        return date(int(value[:4]), int(value[5:]), 1)


class BudgetForm(forms.Form):
    amount = forms.DecimalField(
        label="Monthly budget",
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.01"),
        max_value=Decimal("999999999999.99"),
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0.01", "inputmode": "decimal"}),
        error_messages={"min_value": "Enter an amount of at least 0.01.", "max_decimal_places": "Use at most 2 decimal places (cents)."},
    )
    currency = forms.ChoiceField(help_text="The currency of this workspace's prices; only spend in it counts.")
    block_requests = forms.BooleanField(
        required=False,
        label="Block requests at 100 %",
        help_text="The gateway answers 429 insufficient_quota for this workspace's keys until the budget is raised or the month ends.",
    )

    def __init__(self, *args, currencies: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["currency"].choices = [(c, c) for c in currencies]


def _key_label(key, sub_names: dict[int, str]) -> str:
    """A key as the filter lists it: a sub-workspace's keys say whose they are, revoked ones say so."""
    label = key.display_name
    if key.workspace_id in sub_names:
        label += f" ({sub_names[key.workspace_id]})"
    return label + (" (revoked)" if key.revoked_at else "")
