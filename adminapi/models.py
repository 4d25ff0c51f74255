"""Admin keys (the admin API's credentials) and stored idempotent responses."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models.functions import Lower


class AdminKeyRole(models.TextChoices):
    """The console role an admin key acts with; the access_* chokepoints enforce it as for a person."""

    ADMIN = "admin", "Admin"
    VIEWER = "viewer", "Viewer"


class AdminKey(models.Model):
    """A workspace's credential for the admin API (/api/admin/v1/). It reaches its workspace and,
    when that is a default workspace, its sub-workspaces, as an admin or viewer member would. It
    never calls models: the gateway refuses its prefix. Its secrets are AdminKeySecret rows."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="admin_keys")
    name = models.CharField(max_length=64)
    role = models.CharField(max_length=16, choices=AdminKeyRole.choices)
    hint = models.CharField(max_length=32, help_text="prefix…last4 of the current secret")
    ip_allowlist = models.JSONField(default=list, blank=True, help_text="Canonical CIDR strings")
    expires_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_by_label = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(Lower("name"), "workspace", name="admin_key_unique_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def actor_label(self) -> str:
        """How the audit log names this key as the actor of a change."""
        return f"admin key {self.name} ({self.hint})"[:150]


class AdminKeySecret(models.Model):
    """One secret of an admin key. Rotation adds a row and gives the older ones a grace deadline."""

    admin_key = models.ForeignKey(AdminKey, on_delete=models.CASCADE, related_name="secrets")
    digest = models.CharField(max_length=64, unique=True, help_text="HMAC-SHA256(API_KEY_PEPPER, key), hex")
    hint = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    valid_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.hint


class IdempotentRequest(models.Model):
    """A create request made with an Idempotency-Key header and the response it got, so a retry
    gets the same response instead of a second object. Secrets in the response are not stored
    (the replay carries null where the first response had the secret)."""

    admin_key = models.ForeignKey(AdminKey, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=200)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    request_digest = models.CharField(max_length=64, help_text="SHA-256 of method, path and body")
    status_code = models.PositiveSmallIntegerField(null=True)
    response_body = models.JSONField(null=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["admin_key", "key"], name="idempotent_request_unique_key")]

    def __str__(self) -> str:
        return self.key
