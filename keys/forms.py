"""Forms parse and shape input; the rules themselves live in keys.services (and keys.names, lib.net)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.utils import timezone

from console.models import Workspace
from deployments.selectors import callable_deployments
from keys.models import ApiKey, ApiKeyKind
from keys.names import MAX_NAME_LENGTH, NAME_HELP, validate_key_name
from keys.provider_fields import parse_model_names
from keys.router_providers import router_providers_granted_to
from keys.selectors import KeyStatus
from keys.services import GRACE_CHOICES, MAX_TPM, MAX_YEARLY_TOKENS, check_expiry
from lib.net import MAX_ALLOWLIST_ENTRIES, parse_allowlist


class StrictForm(forms.Form):
    """Refuses any field it does not declare, so a request that tries to set a workspace, owner,
    kind or other privileged field is rejected as a whole instead of silently half-applied."""

    always_allowed = frozenset({"csrfmiddlewaretoken"})

    def clean(self):
        data = super().clean()
        unknown = sorted(set(self.data) - set(self.fields) - self.always_allowed)
        if unknown:
            names = ", ".join(f"“{name[:40]}”" for name in unknown[:5])
            raise ValidationError(f"This form does not accept {names}. Nothing was saved.", code="unknown_field")
        return data


class DeploymentChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj) -> str:
        return f"{obj.name} · {obj.model_id}"


def _whole_number(label: str, maximum: int, help_text: str, placeholder: str) -> forms.IntegerField:
    message = f"{label}: use a whole number from 1 to {maximum:,}, or leave it empty for no limit."
    return forms.IntegerField(
        required=False,
        min_value=1,
        max_value=maximum,
        help_text=help_text,
        error_messages={"invalid": message, "min_value": message, "max_value": message},
        widget=forms.NumberInput(attrs={"placeholder": placeholder, "min": 1, "step": 1, "inputmode": "numeric"}),
    )


class ApiKeySettingsForm(StrictForm):
    """Everything about a key except its name: used to edit, and extended for creation."""

    description = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="What uses this key, so a reader knows whether it can be revoked.",
    )
    all_models = forms.BooleanField(required=False, label="All models")
    deployments = DeploymentChoiceField(queryset=None, required=False, to_field_name="public_id", widget=forms.CheckboxSelectMultiple)
    router_providers = forms.ModelMultipleChoiceField(
        queryset=None, required=False, to_field_name="slug", label="Router", widget=forms.CheckboxSelectMultiple
    )
    all_byok = forms.BooleanField(required=False, label="All BYOK")
    byok_credentials = forms.ModelMultipleChoiceField(
        queryset=None, required=False, to_field_name="public_id", label="BYOK", widget=forms.CheckboxSelectMultiple
    )
    tpm_limit = _whole_number("TPM", MAX_TPM, "Tokens per minute across all calls with this key. Empty: no limit.", "e.g. 60000")
    tpm_limit.label = "TPM (tokens per minute)"
    yearly_token_limit = _whole_number("Yearly token limit", MAX_YEARLY_TOKENS, "", "e.g. 10000000")
    ip_allowlist = forms.CharField(
        required=False,
        label="IP allowlist",
        max_length=8000,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "192.168.1.1, 10.0.0.0/8", "spellcheck": "false"}),
        help_text=f"IPv4/IPv6 addresses or CIDR ranges, separated by commas or new lines; at most {MAX_ALLOWLIST_ENTRIES}. "
        "Empty: any address.",
    )
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        error_messages={"invalid": "Enter a date and time such as 2027-01-31 18:00."},
    )

    def __init__(self, *args, workspace: Workspace, validate_url: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.workspace = workspace
        self.fields["deployments"].queryset = callable_deployments(workspace).order_by("name")
        self.fields["router_providers"].queryset = router_providers_granted_to(workspace)
        self.fields["byok_credentials"].queryset = workspace.byok_credentials.order_by("name")
        self.fields[
            "yearly_token_limit"
        ].help_text = f"Tokens per calendar year in this workspace's time zone ({workspace.time_zone}). Empty: no limit."
        self.fields["expires_at"].help_text = f"In {workspace.time_zone}. Empty: never expires."
        if not workspace.is_default:
            self.fields["all_models"].label = "All models granted to this sub-workspace"
        if validate_url:
            for name in ("name", "ip_allowlist", "expires_at", "tpm_limit", "yearly_token_limit"):
                if name in self.fields:
                    self.fields[name].widget.attrs.update(
                        {
                            "hx-post": validate_url,
                            "hx-trigger": "input changed delay:300ms, change",
                            "hx-target": f"#feedback-{name}",
                            "hx-swap": "innerHTML",
                            "hx-sync": "this:replace",
                            "aria-describedby": f"feedback-{name}",
                        }
                    )

    def clean_expires_at(self):
        value, initial = self.cleaned_data["expires_at"], self.initial.get("expires_at")
        # The browser's datetime-local has minute precision: an untouched stored expiry comes back
        # without its seconds, and must count as unchanged (even if it already passed).
        if value and initial and value.replace(second=0, microsecond=0) == initial.replace(second=0, microsecond=0):
            return initial
        return check_expiry(value, timezone.now())

    def clean_ip_allowlist(self) -> list[str]:
        return parse_allowlist(self.cleaned_data["ip_allowlist"])

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        return {
            name: data[name]
            for name in (
                "description",
                "all_models",
                "deployments",
                "router_providers",
                "all_byok",
                "byok_credentials",
                "tpm_limit",
                "yearly_token_limit",
                "ip_allowlist",
                "expires_at",
            )
        }

    @classmethod
    def initial_for(cls, api_key: ApiKey) -> dict:
        return {
            "description": api_key.description,
            "all_models": api_key.all_models,
            "deployments": [d.public_id for d in api_key.deployments.all()],
            "router_providers": [p.slug for p in api_key.router_providers.all()],
            "all_byok": api_key.all_byok,
            "byok_credentials": [c.public_id for c in api_key.byok_credentials.all()],
            "tpm_limit": api_key.tpm_limit,
            "yearly_token_limit": api_key.yearly_token_limit,
            "ip_allowlist": "\n".join(api_key.ip_allowlist),
            "expires_at": api_key.expires_at,
        }


class ApiKeyCreateForm(ApiKeySettingsForm):
    # strip=False: a leading or trailing space is refused and named, never silently dropped.
    name = forms.CharField(
        strip=False,
        help_text=NAME_HELP,
        error_messages={"required": "Enter a name."},
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "maxlength": MAX_NAME_LENGTH + 16}),
    )

    field_order = ["name", "description"]

    def clean_name(self) -> str:
        name = self.cleaned_data["name"]
        validate_key_name(name)
        if ApiKey.objects.filter(workspace=self.workspace, kind=ApiKeyKind.USER, name__iexact=name).exists():
            raise ValidationError(f"A key named “{name}” already exists in this workspace.")
        return name

    def service_kwargs(self) -> dict:
        return {"name": self.cleaned_data["name"], **super().service_kwargs()}


GRACE_LABELS = {"none": "None: the old secret stops working now", "1h": "1 hour", "24h": "24 hours", "7d": "7 days"}


class ApiKeyRotateForm(StrictForm):
    grace = forms.ChoiceField(
        choices=[(value, GRACE_LABELS[value]) for value in GRACE_CHOICES], initial="1h", label="Keep the old secret working for"
    )
    expected_hint = forms.CharField(max_length=32, widget=forms.HiddenInput)

    @property
    def grace_delta(self):
        return GRACE_CHOICES[self.cleaned_data["grace"]]


class KeyFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "All"), *KeyStatus.choices], required=False)
    q = forms.CharField(
        max_length=MAX_NAME_LENGTH,
        required=False,
        label="Search by name",
        error_messages={"max_length": f"Search for at most {MAX_NAME_LENGTH} characters (names are no longer)."},
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Search by name", "autocomplete": "off"}),
    )


class ByokCredentialForm(StrictForm):
    name = forms.CharField(
        max_length=40, help_text="Lowercase letters, digits, - and _. Clients call byok/<name>/<model>. It cannot be changed later."
    )
    provider = forms.CharField(max_length=80, widget=forms.TextInput(attrs={"placeholder": "e.g. OpenAI"}))
    base_url = forms.CharField(
        max_length=300, label="Base URL", widget=forms.TextInput(attrs={"placeholder": "https://api.openai.com/v1", "type": "url"})
    )
    api_key = forms.CharField(
        max_length=500,
        label="API key",
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Encrypted at rest; only its last four characters are shown again.",
    )
    model_names = forms.CharField(
        label="Models",
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "gpt-4o-mini\ngpt-4o", "spellcheck": "false"}),
        help_text="The model names this provider serves, separated by commas or new lines.",
    )

    def clean_model_names(self) -> list[str]:
        return parse_model_names(self.cleaned_data["model_names"])


class ByokCredentialEditForm(ByokCredentialForm):
    def __init__(self, *args, last4: str, **kwargs):
        super().__init__(*args, **kwargs)
        del self.fields["name"]
        self.fields["api_key"].required = False
        self.fields["api_key"].help_text = f"Leave empty to keep the stored key (…{last4}). A new key replaces it."
