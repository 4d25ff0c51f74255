"""Console forms for admin keys; the rules live in adminapi.services."""

from __future__ import annotations

from django import forms

from adminapi.models import AdminKeyRole
from keys.forms import GRACE_LABELS, StrictForm
from keys.names import MAX_NAME_LENGTH, NAME_HELP
from keys.services import GRACE_CHOICES
from lib.net import MAX_ALLOWLIST_ENTRIES


class AdminKeyCreateForm(StrictForm):
    name = forms.CharField(max_length=MAX_NAME_LENGTH, help_text=NAME_HELP)
    role = forms.ChoiceField(
        choices=AdminKeyRole.choices,
        initial=AdminKeyRole.VIEWER,
        help_text="Viewer reads (usage, audit, settings); admin also changes what an admin member may change.",
    )
    ip_allowlist = forms.CharField(
        required=False,
        label="IP allowlist",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "10.0.0.0/8", "spellcheck": "false"}),
        help_text=f"Addresses or CIDR ranges the automation calls from, at most {MAX_ALLOWLIST_ENTRIES}. Empty: any address.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        error_messages={"invalid": "Enter a date and time such as 2027-01-31 18:00."},
        help_text="Empty: never expires.",
    )


class AdminKeyRotateForm(StrictForm):
    grace = forms.ChoiceField(
        choices=[(value, GRACE_LABELS[value]) for value in GRACE_CHOICES], initial="1h", label="Keep the old secret working for"
    )

    @property
    def grace_delta(self):
        return GRACE_CHOICES[self.cleaned_data["grace"]]
