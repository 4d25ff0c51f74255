"""Forms for installation admins' router provider pages. Rules live in keys.router_providers."""

from __future__ import annotations

from django import forms

from console.models import Workspace
from deployments.forms import PriceFields, currency_field, price_field
from keys.provider_fields import check_base_url, upstream_key_field, upstream_url_field


class RouterProviderForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What people see in key scopes, e.g. OpenRouter.")
    slug = forms.CharField(
        max_length=40,
        help_text="Clients call its models as <slug>/<model>, e.g. openrouter/openai/gpt-4o-mini. Cannot be changed later.",
        widget=forms.TextInput(attrs={"spellcheck": "false", "autocomplete": "off"}),
    )
    base_url = upstream_url_field(
        placeholder="https://openrouter.ai/api/v1",
        help_text="OpenAI-compatible base URL. Checked against UPSTREAM_ALLOWED_NETWORKS when saved and on every connection.",
    )
    api_key = upstream_key_field(
        required=True, help_text="The installation's key at the provider. Encrypted at rest and never shown again."
    )
    model_names = forms.CharField(
        label="Models",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "placeholder": "openai/gpt-4o-mini\nanthropic/claude-3.5-haiku"}),
        help_text="One per line. Empty: any model under <slug>/ (not listed by /v1/models).",
    )
    is_active = forms.BooleanField(
        label="Active", required=False, initial=True, help_text="Inactive providers answer 404 at the gateway, for every workspace."
    )

    def __init__(self, *args, editing: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if editing:
            del self.fields["slug"]
            self.fields["api_key"].required = False
            self.fields["api_key"].help_text = "A key is stored and never shown. Leave empty to keep it; paste a new one to replace it."

    def clean_base_url(self) -> str:
        # The service checks again; checking here too shows the problem next to every other one.
        return check_base_url(self.cleaned_data["base_url"])


class RouterProviderCreateForm(PriceFields, RouterProviderForm):  # this order keeps the price fields last
    pass


class RouterProviderPriceForm(forms.Form):
    model_name = forms.CharField(
        label="Model",
        max_length=200,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "every model without its own price", "spellcheck": "false"}),
        help_text="Empty: the provider's default price.",
    )
    input_per_million = price_field("Input / 1M")
    output_per_million = price_field("Output / 1M")
    currency = currency_field()
    effective_from = forms.DateTimeField(
        label="From (UTC)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Empty: now. Past usage keeps its price.",
    )


class RouterProviderGrantForm(forms.Form):
    workspace = forms.ModelChoiceField(queryset=Workspace.objects.none(), to_field_name="public_id", empty_label="Choose a workspace…")

    def __init__(self, *args, workspaces, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workspace"].queryset = workspaces
        self.fields["workspace"].label_from_instance = lambda w: f"{w.parent.name} / {w.name}" if w.parent_id else f"{w.name} (default)"
