from __future__ import annotations

import uuid
from decimal import Decimal

from django.db import models
from django.db.models.functions import Lower


class RouterProvider(models.Model):
    """An installation-wide upstream that installation admins (staff) manage in the console and
    grant to workspaces; a key may scope it only when its workspace holds a grant. Its upstream key
    is the operator's, so calls are priced (RouterProviderPrice) and count towards budgets.

    Clients call its models as `<slug>/<model>`.
    """

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    base_url = models.URLField(max_length=300)
    api_key_encrypted = models.TextField(blank=True)
    model_names = models.JSONField(default=list, blank=True, help_text="Model names this provider serves.")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RouterProviderGrant(models.Model):
    """Lets one workspace's keys (and its deployments) use a router provider. Granted by an
    installation admin; without a grant the provider is invisible to the workspace."""

    provider = models.ForeignKey(RouterProvider, on_delete=models.CASCADE, related_name="grants")
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="router_provider_grants")
    granted_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["provider", "workspace"], name="router_grant_unique")]

    def __str__(self) -> str:
        return f"{self.workspace} may use {self.provider}"


class RouterProviderPrice(models.Model):
    """Effective-dated price versions of a router provider, as DeploymentPrice for deployments.

    model_name "" is the provider's default, used for every model without versions of its own.
    A call is costed with the version in force at its time.
    """

    provider = models.ForeignKey(RouterProvider, on_delete=models.CASCADE, related_name="prices")
    model_name = models.CharField(max_length=200, blank=True)
    effective_from = models.DateTimeField()
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="USD")
    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model_name", "-effective_from"]
        constraints = [models.UniqueConstraint(fields=["provider", "model_name", "effective_from"], name="router_price_unique_version")]

    def __str__(self) -> str:
        return f"{self.input_per_million}/{self.output_per_million} {self.currency} from {self.effective_from:%Y-%m-%d}"


class ByokCredential(models.Model):
    """A workspace's own provider key ("bring your own key"); clients call `byok/<name>/<model>`."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="byok_credentials")
    name = models.SlugField(max_length=40)
    provider = models.CharField(max_length=80)
    base_url = models.URLField(max_length=300)
    api_key_encrypted = models.TextField()
    api_key_last4 = models.CharField(max_length=4)
    model_names = models.JSONField(default=list, blank=True)
    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["workspace", "name"], name="byok_unique_name")]

    def __str__(self) -> str:
        return self.name


class ApiKeyKind(models.TextChoices):
    USER = "user", "Application key"
    # A workspace-owned credential the worker uses for console test calls; never displayed.
    TEST_CALL = "test_call", "Test-call credential"


def display_name(name: str, kind: str) -> str:
    return "Console test calls" if kind == ApiKeyKind.TEST_CALL else name


class ApiKey(models.Model):
    """An application access key's identity: scope, limits, lifecycle. Its secrets are ApiKeySecret rows."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="api_keys")
    kind = models.CharField(max_length=16, choices=ApiKeyKind.choices, default=ApiKeyKind.USER)
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=500, blank=True)
    hint = models.CharField(max_length=32, help_text="prefix…last4 of the current secret")

    all_models = models.BooleanField(default=False)
    deployments = models.ManyToManyField("deployments.Deployment", blank=True, related_name="+")
    router_providers = models.ManyToManyField(RouterProvider, blank=True, related_name="+")
    all_byok = models.BooleanField(default=False)
    byok_credentials = models.ManyToManyField(ByokCredential, blank=True, related_name="+")

    tpm_limit = models.PositiveIntegerField(null=True, blank=True)
    yearly_token_limit = models.PositiveBigIntegerField(null=True, blank=True)
    ip_allowlist = models.JSONField(default=list, blank=True, help_text="Canonical CIDR strings")
    expires_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_by_label = models.CharField(max_length=150, blank=True, help_text="Who created it, kept if the user is deleted")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Case-insensitive so "Prod" and "prod" cannot both exist; hidden test-call keys do not
            # take names away from people.
            models.UniqueConstraint(Lower("name"), "workspace", condition=models.Q(kind="user"), name="api_key_unique_name"),
            models.CheckConstraint(condition=models.Q(tpm_limit__isnull=True) | models.Q(tpm_limit__gte=1), name="api_key_tpm_positive"),
            models.CheckConstraint(
                condition=models.Q(yearly_token_limit__isnull=True) | models.Q(yearly_token_limit__gte=1), name="api_key_yearly_positive"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def display_name(self) -> str:
        """What dashboards call the key: its name, or what the hidden test-call credential is for."""
        return display_name(self.name, self.kind)


class ApiKeySecret(models.Model):
    """One secret of a key. Rotation adds a new row and gives the old one a grace deadline."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="secrets")
    digest = models.CharField(max_length=64, unique=True, help_text="HMAC-SHA256(API_KEY_PEPPER, key), hex")
    hint = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    valid_until = models.DateTimeField(null=True, blank=True, help_text="Set when rotated away; null while current")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.hint
