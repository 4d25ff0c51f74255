from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models


class UpstreamKind(models.TextChoices):
    ENDPOINT = "endpoint", "OpenAI-compatible endpoint"
    ROUTER = "router", "Router provider"
    BYOK = "byok", "BYOK credential"


class DeploymentStatus(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    UNREACHABLE = "unreachable", "Unreachable"


class Deployment(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=80)
    model_id = models.CharField(max_length=200, unique=True, help_text="The model name clients send, e.g. @acme/Qwen/Qwen3-0.6B")
    description = models.CharField(max_length=500, blank=True)

    upstream_kind = models.CharField(max_length=16, choices=UpstreamKind.choices, default=UpstreamKind.ENDPOINT)
    upstream_base_url = models.URLField(max_length=300, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True, help_text="Model name sent upstream; defaults to model_id")
    upstream_api_key_encrypted = models.TextField(blank=True)
    upstream_api_key_last4 = models.CharField(max_length=4, blank=True, help_text="Shown instead of the key, which is never displayed again")
    router_provider = models.ForeignKey("keys.RouterProvider", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    byok_credential = models.ForeignKey("keys.ByokCredential", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    timeout_seconds = models.PositiveIntegerField(default=120)

    status = models.CharField(max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.RUNNING)
    last_error = models.CharField(max_length=500, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DeploymentPrice(models.Model):
    """Effective-dated price versions: an event is costed with the version in force at its time."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="prices")
    effective_from = models.DateTimeField()
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="USD")
    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-effective_from"]
        constraints = [models.UniqueConstraint(fields=["deployment", "effective_from"], name="price_unique_version")]

    def __str__(self) -> str:
        return f"{self.input_per_million}/{self.output_per_million} {self.currency} from {self.effective_from:%Y-%m-%d}"


class ModelGrant(models.Model):
    """Lets a sub-workspace call a deployment of its organisation (the default workspace may call all)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="grants")
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="model_grants")
    granted_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["deployment", "workspace"], name="grant_unique")]

    def __str__(self) -> str:
        return f"{self.workspace} may call {self.deployment}"
