"""Django admin: router providers are managed here by site admins. Keys and BYOK credentials are
shown read-only (workspace members manage them in the console, where changes are audited)."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from keys.models import ApiKey, ByokCredential, RouterProvider
from keys.services import parse_model_names, router_provider_save


class RouterProviderForm(forms.ModelForm):
    api_key = forms.CharField(
        required=False,
        label="API key",
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only: stored encrypted, never shown. Leave empty to keep the stored key.",
    )
    model_names = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Model names this provider serves, one per line (empty: any model).",
    )

    class Meta:
        model = RouterProvider
        fields = ["name", "slug", "base_url", "api_key", "model_names", "is_active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["model_names"] = "\n".join(self.instance.model_names or [])

    def clean_model_names(self) -> list[str]:
        return parse_model_names(self.cleaned_data["model_names"], required=False)

    def clean_api_key(self) -> str:
        value = self.cleaned_data["api_key"]
        if value and (len(value) < 8 or any(ch.isspace() for ch in value)):
            raise ValidationError("Paste the provider's API key: 8–500 characters, no spaces.")
        return value


@admin.register(RouterProvider)
class RouterProviderAdmin(admin.ModelAdmin):
    form = RouterProviderForm
    list_display = ["name", "slug", "base_url", "is_active", "has_api_key", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "slug"]

    @admin.display(boolean=True, description="API key set")
    def has_api_key(self, obj: RouterProvider) -> bool:
        return bool(obj.api_key_encrypted)

    def save_model(self, request, obj, form, change):
        router_provider_save(provider=obj, api_key=form.cleaned_data.get("api_key", ""))


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["name", "workspace", "hint", "kind", "created_at", "expires_at", "revoked_at", "last_used_at"]
    list_filter = ["kind"]
    search_fields = ["name", "workspace__slug"]
    exclude = ["deployments", "router_providers", "byok_credentials"]


@admin.register(ByokCredential)
class ByokCredentialAdmin(ReadOnlyAdmin):
    list_display = ["name", "workspace", "provider", "base_url", "api_key_last4", "created_at"]
    search_fields = ["name", "workspace__slug"]
    exclude = ["api_key_encrypted"]
