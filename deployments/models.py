from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models

from lib.upstream import upstream_host


class UpstreamKind(models.TextChoices):
    ENDPOINT = "endpoint", "OpenAI-compatible endpoint"
    ROUTER = "router", "Router provider"
    BYOK = "byok", "BYOK credential"


class DeploymentKind(models.TextChoices):
    """What the model does, which decides the API paths it serves (docs/GATEWAY.md)."""

    CHAT = "chat", "Chat (text generation)"
    EMBEDDING = "embedding", "Embedding"
    RERANK = "rerank", "Rerank"


class DeploymentStatus(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"
    UNREACHABLE = "unreachable", "Unreachable"


class Deployment(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=80)
    # Unique within the organisation (deployments.services._clean_model_id), not installation-wide.
    model_id = models.CharField(max_length=200, db_index=True, help_text="The model name clients send, e.g. @acme/Qwen/Qwen3-0.6B")
    description = models.CharField(max_length=500, blank=True)
    kind = models.CharField(max_length=16, choices=DeploymentKind.choices, default=DeploymentKind.CHAT)
    responses_passthrough = models.BooleanField(
        default=False,
        help_text="The upstream serves /v1/responses itself: pass Responses calls through instead of translating them to chat completions.",
    )

    upstream_kind = models.CharField(max_length=16, choices=UpstreamKind.choices, default=UpstreamKind.ENDPOINT)
    upstream_base_url = models.URLField(max_length=300, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True, help_text="Model name sent upstream; defaults to model_id")
    upstream_api_key_encrypted = models.TextField(blank=True)
    upstream_api_key_last4 = models.CharField(
        max_length=4, blank=True, help_text="Shown instead of the key, which is never displayed again"
    )
    router_provider = models.ForeignKey("keys.RouterProvider", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    byok_credential = models.ForeignKey("keys.ByokCredential", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    timeout_seconds = models.PositiveIntegerField(default=120)
    queue_timeout_seconds = models.PositiveIntegerField(
        default=10, help_text="When every replica is at its max concurrent, a request waits this long at most (0: refused at once)"
    )
    queue_max_waiting = models.PositiveIntegerField(default=100, help_text="Requests waiting at most, per gateway process")
    fallback = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Takes the calls when every replica is down (for keys that may call it too)",
    )
    tokenizer_path = models.CharField(
        max_length=500,
        blank=True,
        help_text="Absolute path to the model's Hugging Face tokenizer.json on the gateway hosts; "
        "the gateway counts prompt tokens with it. Empty: tiktoken cl100k_base.",
    )

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

    @property
    def has_problem(self) -> bool:
        return self.status in (DeploymentStatus.UNREACHABLE, DeploymentStatus.FAILED)

    @property
    def is_health_checked(self) -> bool:
        """The worker probes it (deployments.health): an endpoint that is not stopped."""
        return self.upstream_kind == UpstreamKind.ENDPOINT and self.status != DeploymentStatus.STOPPED


class ReplicaStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not probed yet"
    UP = "up", "Up"
    DOWN = "down", "Down"


class DeploymentReplica(models.Model):
    """One server behind an endpoint deployment. The gateway balances across the enabled, healthy
    replicas (weighted least-in-flight, gateway/balancer.py); the worker probes each one.

    The deployment's own upstream_base_url / upstream key mirror its first replica (lowest id),
    kept in sync by deployments.services, for the pages and commands that show "the" upstream.
    """

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    base_url = models.URLField(max_length=300)
    weight = models.PositiveSmallIntegerField(default=1, help_text="Share of traffic relative to the other replicas (1-100)")
    api_key_encrypted = models.TextField(blank=True)
    api_key_last4 = models.CharField(max_length=4, blank=True)
    enabled = models.BooleanField(default=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, help_text="Requests in flight at most; empty: no cap")

    status = models.CharField(max_length=8, choices=ReplicaStatus.choices, default=ReplicaStatus.UNKNOWN)
    last_error = models.CharField(max_length=500, blank=True)
    last_checked_at = models.DateTimeField(null=True, blank=True)
    last_probe_ms = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["deployment", "base_url"], name="replica_unique_url")]

    def __str__(self) -> str:
        return upstream_host(self.base_url)


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


class TestCallStatus(models.TextChoices):
    __test__ = False  # not a pytest class

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    STREAMING = "streaming", "Streaming"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


class TestCall(models.Model):
    """A prompt sent from the console through the real gateway by the worker (deployments.console_calls)."""

    __test__ = False  # not a pytest class

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="test_calls")
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    system_prompt = models.TextField(blank=True)
    prompt = models.TextField()
    temperature = models.DecimalField(max_digits=3, decimal_places=2, null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    stream = models.BooleanField(default=True)
    status = models.CharField(max_length=16, choices=TestCallStatus.choices, default=TestCallStatus.QUEUED)
    output_text = models.TextField(blank=True)
    error = models.TextField(blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    cost = models.DecimalField(max_digits=18, decimal_places=9, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["deployment", "workspace", "-created_at"]),
            models.Index(fields=["status", "started_at"]),
        ]

    def __str__(self) -> str:
        return f"test call {self.public_id} ({self.status})"

    @property
    def finished(self) -> bool:
        return self.status in (TestCallStatus.DONE, TestCallStatus.FAILED)
