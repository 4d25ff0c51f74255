from __future__ import annotations

from decimal import Decimal

from django import forms

from console.models import Workspace
from deployments.models import Deployment, DeploymentKind, UpstreamKind
from keys.models import ByokCredential, RouterProvider
from keys.provider_fields import upstream_key_field, upstream_url_field


class DeploymentForm(forms.Form):
    """Create or edit a deployment. URL rules and uniqueness live in the services."""

    name = forms.CharField(max_length=80, strip=True)
    model_id = forms.CharField(
        label="Model id", max_length=200, strip=False, help_text="What clients send as “model”, e.g. @acme/Qwen/Qwen3-0.6B or qwen-plus."
    )
    description = forms.CharField(max_length=500, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    kind = forms.ChoiceField(
        label="Kind",
        choices=DeploymentKind.choices,
        initial=DeploymentKind.CHAT,
        required=False,
        help_text="Chat models serve chat, completions, Responses, Anthropic Messages and DashScope calls; "
        "embedding models /v1/embeddings (input price only); rerank models /v1/rerank.",
    )
    responses_passthrough = forms.BooleanField(
        label="Upstream serves /v1/responses itself",
        required=False,
        help_text="Pass Responses API calls through unchanged instead of translating them to chat completions (chat models only).",
    )
    upstream_kind = forms.ChoiceField(label="Routes to", choices=UpstreamKind.choices, initial=UpstreamKind.ENDPOINT)
    upstream_base_url = upstream_url_field(
        label="Upstream base URL",
        required=False,
        placeholder="http://10.0.0.5:8000/v1",
        help_text="OpenAI-compatible base URL (http or https). Private addresses are fine; link-local and cloud "
        "metadata addresses are refused, and so is this server's own loopback unless the operator allows it.",
    )
    upstream_model = forms.CharField(
        label="Upstream model name", max_length=200, required=False, help_text="The model name sent upstream. Empty: the model id above."
    )
    upstream_api_key = upstream_key_field(help_text="Encrypted at rest and never shown again.")
    router_provider = forms.ModelChoiceField(queryset=RouterProvider.objects.none(), required=False)
    byok_credential = forms.ModelChoiceField(label="BYOK credential", queryset=ByokCredential.objects.none(), required=False)
    timeout_seconds = forms.IntegerField(label="Timeout (seconds)", min_value=1, max_value=3600, initial=120)
    fallback = forms.ModelChoiceField(
        label="Fallback deployment",
        queryset=Deployment.objects.none(),
        required=False,
        empty_label="None",
        help_text="Takes the calls when every replica is down, for keys that may call it too; metered and priced as itself.",
    )
    tokenizer_path = forms.CharField(
        label="Tokenizer file",
        max_length=500,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "/models/Qwen3-0.6B/tokenizer.json", "spellcheck": "false"}),
        help_text="Optional. Absolute path to the model's tokenizer.json on the gateway hosts, so token limits count "
        "prompts as this model does. Empty: counted with tiktoken cl100k_base.",
    )

    queue_timeout_seconds = forms.IntegerField(
        label="Queue wait (seconds)",
        required=False,
        min_value=0,
        max_value=600,
        initial=10,
        help_text="When every replica is at its max concurrent, a request waits this long for a slot, then gets 429. 0: no queue.",
    )
    queue_max_waiting = forms.IntegerField(
        label="Queue length",
        required=False,
        min_value=1,
        max_value=100_000,
        initial=100,
        help_text="Requests waiting at most (per gateway process).",
    )

    def clean_queue_timeout_seconds(self) -> int:
        value = self.cleaned_data.get("queue_timeout_seconds")
        return 10 if value is None else value

    def clean_queue_max_waiting(self) -> int:
        return self.cleaned_data.get("queue_max_waiting") or 100

    def clean_kind(self) -> str:
        return self.cleaned_data.get("kind") or DeploymentKind.CHAT

    def __init__(self, *args, workspace: Workspace, editing: bool = False, key_last4: str = "", own_pk: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        org_slug = workspace.parent.slug if workspace.parent_id else workspace.slug
        self.fields[
            "model_id"
        ].help_text = f"What clients send as “model”, unique in this organisation, e.g. @{org_slug}/Qwen/Qwen3-0.6B or qwen-plus."
        self.fields["fallback"].queryset = Deployment.objects.filter(workspace.organisation_q()).exclude(pk=own_pk).order_by("name")
        self.fields["fallback"].label_from_instance = lambda d: f"{d.name} ({d.model_id})"
        self.fields["router_provider"].queryset = RouterProvider.objects.filter(is_active=True, grants__workspace=workspace)
        self.fields["router_provider"].help_text = (
            "Router providers the installation's administrators granted to this workspace."
            if self.fields["router_provider"].queryset.exists()
            else "No router provider is granted to this workspace; installation administrators grant them under Router providers."
        )
        self.fields["byok_credential"].queryset = ByokCredential.objects.filter(workspace_id__in={workspace.id, workspace.root_id})
        # Each upstream kind needs its own field; the one matching the chosen kind is required.
        kind = self.data.get("upstream_kind") if self.is_bound else self.initial.get("upstream_kind", UpstreamKind.ENDPOINT)
        required = {
            UpstreamKind.ENDPOINT: "upstream_base_url",
            UpstreamKind.ROUTER: "router_provider",
            UpstreamKind.BYOK: "byok_credential",
        }
        if kind in required:
            self.fields[required[kind]].required = True
        if editing:
            self.fields["upstream_api_key"].help_text = (
                f"A key ending in …{key_last4} is stored. Leave empty to keep it."
                if key_last4
                else "No key is stored. Leave empty for none."
            )
            self.fields["clear_upstream_api_key"] = forms.BooleanField(label="Remove the stored upstream key", required=False)


class ReplicaForm(forms.Form):
    """Add or edit one replica of an endpoint deployment. URL rules live in the services."""

    base_url = upstream_url_field(
        placeholder="http://10.0.0.6:8000/v1", help_text="Another server running the same model (OpenAI-compatible)."
    )
    weight = forms.IntegerField(min_value=1, max_value=100, initial=1, help_text="Share of traffic relative to the other replicas.")
    max_concurrent = forms.IntegerField(
        label="Max concurrent requests", min_value=1, max_value=100_000, required=False, help_text="Empty: no cap."
    )
    api_key = upstream_key_field(help_text="Encrypted at rest and never shown again.")
    enabled = forms.BooleanField(required=False, initial=True, help_text="Disabled replicas get no traffic and are not probed.")

    def __init__(self, *args, editing: bool = False, key_last4: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if editing:
            self.fields["api_key"].help_text = (
                f"A key ending in …{key_last4} is stored. Leave empty to keep it."
                if key_last4
                else "No key is stored. Leave empty for none."
            )
            self.fields["clear_api_key"] = forms.BooleanField(label="Remove the stored upstream key", required=False)


def price_field(label: str, **kwargs) -> forms.DecimalField:
    """A per-million price as deployments.prices.clean_price takes it (the service checks again)."""
    return forms.DecimalField(label=label, min_value=Decimal("0"), max_digits=12, decimal_places=6, **kwargs)


def currency_field(**kwargs) -> forms.RegexField:
    return forms.RegexField(
        regex=r"^[A-Za-z]{3}$",
        max_length=3,
        initial="USD",
        error_messages={"invalid": "Use a three-letter currency code such as USD."},
        **kwargs,
    )


class PriceFields(forms.Form):
    """A price's three fields, for the forms that set a first price (deployments, router providers)."""

    input_per_million = price_field("Input price / 1M tokens", initial=Decimal("0"))
    output_per_million = price_field("Output price / 1M tokens", initial=Decimal("0"))
    currency = currency_field(help_text="Three-letter code, e.g. USD.")


class PriceForm(PriceFields):
    effective_from = forms.DateTimeField(
        label="Effective from (workspace time zone)",
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Empty: now. Past usage keeps the price it was made at.",
    )


class DeploymentCreateForm(DeploymentForm, PriceForm):
    def __init__(self, *args, workspace: Workspace, **kwargs):
        super().__init__(*args, workspace=workspace, **kwargs)
        del self.fields["effective_from"]


class GrantsForm(forms.Form):
    """Which sub-workspaces may call one deployment."""

    workspaces = forms.ModelMultipleChoiceField(
        queryset=Workspace.objects.none(), required=False, to_field_name="slug", widget=forms.CheckboxSelectMultiple
    )

    def __init__(self, *args, candidates, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workspaces"].queryset = candidates


class TestCallForm(forms.Form):
    system_prompt = forms.CharField(
        required=False,
        max_length=20000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Optional instructions sent as the system message.",
    )
    prompt = forms.CharField(max_length=20000, widget=forms.Textarea(attrs={"rows": 4}))
    temperature = forms.DecimalField(
        required=False,
        min_value=Decimal("0"),
        # The gateway takes [0, 2): 2 itself is refused there, so the form stops at 1.99 (the
        # browser too, from the max and step this renders).
        max_value=Decimal("1.99"),
        max_digits=3,
        decimal_places=2,
        error_messages={"max_value": "Must be below 2: the gateway takes temperatures from 0 up to, not including, 2."},
        help_text="From 0 to 1.99; empty uses the model's default.",
    )
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=32000, help_text="Empty uses the model's default.")
    stream = forms.BooleanField(required=False, initial=True, label="Stream the answer", help_text="Show the answer as it is generated.")


class ImportServerForm(forms.Form):
    base_url = upstream_url_field(
        label="Server URL",
        placeholder="http://10.0.0.7:8000/v1",
        help_text="A vLLM, SGLang, llama.cpp or Ollama server; its OpenAI model list (/v1/models) is read.",
    )
    api_key = upstream_key_field(label="Server API key", help_text="If the server wants one. Stored encrypted with what you import.")
