from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from console.models import AuditEvent, Membership, User, Workspace


@admin.register(User)
class GatehouseUserAdmin(UserAdmin):
    fieldsets = UserAdmin.fieldsets + (("Gatehouse", {"fields": ("must_change_password",)}),)


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "parent", "time_zone", "queue_priority", "created_at"]
    search_fields = ["name", "slug"]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "workspace", "role", "created_at"]
    list_filter = ["role"]


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "workspace", "actor_label", "action", "target_label", "client_ip"]
    list_filter = ["action"]

    # The audit log is append-only (a PostgreSQL trigger refuses UPDATE/DELETE too): entries are
    # written by the services that make changes, never typed in, edited or removed here.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
