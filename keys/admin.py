"""Django admin: keys, BYOK credentials and router providers are shown read-only. Workspace members
manage keys and BYOK in the console, installation admins manage router providers there too
(keys.router_providers), where changes are audited, priced and announced to gateways."""

from __future__ import annotations

from django.contrib import admin

from keys.models import ApiKey, ByokCredential, RouterProvider


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(RouterProvider)
class RouterProviderAdmin(ReadOnlyAdmin):
    """Installation admins manage router providers in the console (Router providers in the
    sidebar), where a provider gets its price and grants and gateways are told of changes."""

    list_display = ["name", "slug", "base_url", "is_active", "created_at"]
    search_fields = ["name", "slug"]
    exclude = ["api_key_encrypted"]


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
