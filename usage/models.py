from __future__ import annotations

from decimal import Decimal

from django.db import models


class UsageEvent(models.Model):
    """Append-only: one row per gateway request or test call, stamped at the source.

    request_id is unique, so a retried write of the same request is a no-op. Price fields copy
    the version in force at `created_at`, so later price changes never alter past cost.
    """

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.PROTECT, related_name="+")
    api_key = models.ForeignKey("keys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    deployment = models.ForeignKey("deployments.Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32, default="chat.completions")

    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False, help_text="Upstream never reported usage; counts were estimated")

    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    aborted = models.BooleanField(default=False, help_text="Client went away before the response completed")
    streamed = models.BooleanField(default=False)
    is_test_call = models.BooleanField(default=False)
    latency_ms = models.PositiveIntegerField(default=0)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)

    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="USD")
    cost = models.DecimalField(max_digits=18, decimal_places=9, default=Decimal("0"))

    class Meta:
        indexes = [models.Index(fields=["workspace", "created_at"])]

    def __str__(self) -> str:
        return self.request_id
