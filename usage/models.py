from __future__ import annotations

from decimal import Decimal

from django.db import models

from usage.latency import LatencyHistogramField

# The API a request came through (gateway.shapes: each shape's endpoint label), for breakdowns.
ENDPOINTS = {
    "chat.completions": "Chat completions",
    "responses": "Responses",
    "messages": "Anthropic Messages",
    "messages.count_tokens": "Anthropic token count",
    "dashscope.generation": "DashScope generation",
    "completions": "Completions",
    "embeddings": "Embeddings",
    "rerank": "Rerank",
    "models": "Models list",
}


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
    # The replica that answered (gateway.balancer); no database constraint, so removing a replica
    # never has to touch append-only events.
    replica = models.ForeignKey(
        "deployments.DeploymentReplica", null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
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
    # HMAC of what was billed (usage.seal), stamped at the source: reconciliation names events
    # changed after they were written instead of adopting their new values. Empty: not sealed.
    seal = models.CharField(max_length=64, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["workspace", "created_at"]),
            # A key's latest refusal ("Last refused" on its page): only error rows are indexed.
            models.Index(fields=["api_key", "-created_at"], condition=models.Q(status_code__gte=400), name="usage_event_key_errors"),
        ]

    def __str__(self) -> str:
        return self.request_id


class RollupMetrics(models.Model):
    """What a rollup row counts. Rows are recomputed from events and replaced, bucket by bucket."""

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    # SET_NULL like the events: a deleted key or deployment folds into the "deleted" row on the
    # bucket's next recompute. The deployment is the identity; `model` is its label (the name the
    # events carried, the greatest if it was renamed), kept for display after a deletion.
    api_key = models.ForeignKey("keys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    deployment = models.ForeignKey("deployments.Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    currency = models.CharField(max_length=3)
    model = models.CharField(max_length=200)
    endpoint = models.CharField(max_length=32, default="chat.completions")  # the API the requests came through
    # The price version the events were costed with (copied from the events, so part of the
    # row's identity): a bucket that spans a price change has one row per version, and a
    # statement can show tokens × price per version.
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))

    requests = models.PositiveIntegerField()
    errors = models.PositiveIntegerField(help_text="Requests answered with HTTP status 400 or above")
    prompt_tokens = models.PositiveBigIntegerField()
    completion_tokens = models.PositiveBigIntegerField()
    total_tokens = models.PositiveBigIntegerField()
    estimated_requests = models.PositiveIntegerField(help_text="Requests whose token counts were estimated")
    estimated_tokens = models.PositiveBigIntegerField(help_text="total_tokens of those requests")
    cost = models.DecimalField(max_digits=20, decimal_places=9)
    # The requests' latencies bucketed (usage.latency): histograms add up, so the p95 of any
    # group of rows (a month, a key's year) is read from their sum, not guessed from row p95s.
    latency_histogram = LatencyHistogramField()
    # The slowest request: a p95 interpolated within its bucket never reads above it.
    latency_max_ms = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True


class UsageDaily(RollupMetrics):
    """Per workspace × key × deployment (× price version, currency) × day, the day in the workspace's time zone."""

    day = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["workspace", "day"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.day} {self.model}"


class UsageHourly(RollupMetrics):
    """The same per UTC hour, kept for the last USAGE_HOURLY_RETENTION_HOURS hours."""

    hour = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["workspace", "hour"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.hour:%Y-%m-%d %H}h {self.model}"


class UsageMonthly(RollupMetrics):
    """UsageDaily summed per local calendar month (`month` is its first day), for the pages that
    read whole months: a year of a busy organisation is ~10k rows here against ~200k daily ones.

    Written by the rollup pass from UsageDaily, in the transaction that replaces the daily rows
    of any of the month's days.
    """

    month = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["workspace", "month"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.month:%Y-%m} {self.model}"


class UsageDailyTotal(models.Model):
    """UsageDaily summed per workspace × local day × currency: the usage page's per-day series
    without key or deployment filters (~1 row per workspace and day, not ~80). Written with the
    day's UsageDaily rows, in the same transaction."""

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    currency = models.CharField(max_length=3)
    requests = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    prompt_tokens = models.PositiveBigIntegerField()
    completion_tokens = models.PositiveBigIntegerField()
    total_tokens = models.PositiveBigIntegerField()
    estimated_requests = models.PositiveIntegerField()
    estimated_tokens = models.PositiveBigIntegerField()
    cost = models.DecimalField(max_digits=20, decimal_places=9)

    class Meta:
        indexes = [models.Index(fields=["workspace", "day"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.day} {self.currency}"


class ErrorRollup(models.Model):
    """Errors (events with status ≥ 400: refusals and failures) counted per reason, for the usage
    page's "errors by reason". Recomputed from events with the daily/hourly rows, in the same
    transaction, so its counts add up to their `errors`."""

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("keys.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    deployment = models.ForeignKey("deployments.Deployment", null=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=32, default="chat.completions")
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    requests = models.PositiveIntegerField()

    class Meta:
        abstract = True


class UsageErrorDaily(ErrorRollup):
    day = models.DateField()

    class Meta:
        indexes = [models.Index(fields=["workspace", "day"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.day} {self.status_code} {self.error_code}"


class UsageErrorHourly(ErrorRollup):
    hour = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["workspace", "hour"])]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.hour:%Y-%m-%d %H}h {self.status_code} {self.error_code}"


class RollupBucketState(models.Model):
    """Checkpoint for one bucket: dirty until its rollup rows were recomputed from events.

    Marking a bucket dirty is an upsert (dirty=True); the worker that recomputes it holds the
    row lock from reading events until it clears the flag in the same transaction, so a mark
    that lands meanwhile waits and survives.
    """

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    dirty = models.BooleanField(default=True)
    marked_at = models.DateTimeField()
    computed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True


class UsageDayBucket(RollupBucketState):
    day = models.DateField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "day"], name="usage_day_bucket_unique")]
        indexes = [models.Index(fields=["workspace", "day"], condition=models.Q(dirty=True), name="usage_day_bucket_dirty")]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.day} {'dirty' if self.dirty else 'done'}"


class UsageHourBucket(RollupBucketState):
    hour = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "hour"], name="usage_hour_bucket_unique")]
        indexes = [models.Index(fields=["workspace", "hour"], condition=models.Q(dirty=True), name="usage_hour_bucket_dirty")]

    def __str__(self) -> str:
        return f"{self.workspace_id} {self.hour:%Y-%m-%d %H}h {'dirty' if self.dirty else 'done'}"


class UsageRollupZone(models.Model):
    """The time zone a workspace's daily rollups are built in.

    Each rollup pass compares it with Workspace.time_zone. When the console has changed the zone,
    local days have moved: the pass marks the workspace's whole history dirty, recomputes it in
    the new zone and records that zone here, so the console needs no hook into usage.
    An empty time_zone means "unknown": the next pass rebuilds.
    """

    workspace = models.OneToOneField("console.Workspace", primary_key=True, on_delete=models.CASCADE, related_name="+")
    time_zone = models.CharField(max_length=64, blank=True)
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"workspace {self.workspace_id} rolled up in {self.time_zone or 'an unknown zone'}"


class UsageCursor(models.Model):
    """Singleton (pk=1): how far event discovery has read.

    Every event id <= high_water_id has been seen, except the ids in pending_gaps
    ([low, high, first_seen_epoch] ranges): ids a concurrent transaction may still commit.
    They are re-checked on every run until they appear or are older than USAGE_GAP_TTL_SECONDS.
    """

    high_water_id = models.BigIntegerField(default=0)
    pending_gaps = models.JSONField(default=list, blank=True)
    # Retention (usage.services.usage_events_prune): every workspace's events of local days
    # before this date were deleted on purpose; their rollups are kept and never recomputed.
    pruned_before = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"events seen through id {self.high_water_id} ({len(self.pending_gaps)} gaps pending)"


class DriftCheck(models.TextChoices):
    ROLLUP = "rollup", "Daily rollups vs usage events"
    TREE = "tree", "Default workspace total vs its own plus its sub-workspaces'"
    COARSE = "coarse", "Monthly and per-day total rollups vs the daily rollups"
    EDITED = "edited", "Usage events changed after they were recorded"


class UsageDrift(models.Model):
    """A reconciliation mismatch: open until a later check finds the numbers equal again."""

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    kind = models.CharField(max_length=16, choices=DriftCheck.choices)
    # {metric: {"expected": str, "actual": str}}; expected is what the events say.
    details = models.JSONField(default=dict)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-day", "workspace_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "day", "kind"], condition=models.Q(resolved_at__isnull=True), name="usage_drift_one_open"
            )
        ]
        indexes = [models.Index(fields=["workspace"], condition=models.Q(resolved_at__isnull=True), name="usage_drift_open")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} drift, workspace {self.workspace_id}, {self.day}"


class Budget(models.Model):
    """A monthly spending budget for one workspace, in the currency of its prices.

    A default workspace's budget covers its whole organisation (its own usage plus every
    sub-workspace's); a sub-workspace's covers its own usage only. Months are calendar months in
    the workspace's time zone. `spent`/`spent_month`/`checked_at` are the worker's last reading
    (usage.services.budgets_check after each rollup pass): the banner and the gateway read them,
    so neither aggregates usage per request.
    """

    workspace = models.OneToOneField("console.Workspace", on_delete=models.CASCADE, related_name="budget")
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, default="USD")
    block_requests = models.BooleanField(default=False, help_text="Refuse gateway requests once 100 % is reached")
    spent = models.DecimalField(max_digits=20, decimal_places=9, default=Decimal("0"))
    spent_month = models.DateField(null=True, blank=True, help_text="First day of the month `spent` refers to")
    checked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(amount__gt=0), name="budget_amount_positive")]

    def __str__(self) -> str:
        return f"{self.amount} {self.currency} a month"

    def exhausted_in(self, month) -> bool:
        return self.spent_month == month and self.spent >= self.amount


class BudgetAlert(models.Model):
    """One threshold (80 or 100 %) crossed in one month: the unique row makes the alert fire once."""

    workspace = models.ForeignKey("console.Workspace", on_delete=models.CASCADE, related_name="+")
    month = models.DateField()
    threshold = models.PositiveSmallIntegerField()
    spent = models.DecimalField(max_digits=20, decimal_places=9)
    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-month", "-threshold"]
        constraints = [models.UniqueConstraint(fields=["workspace", "month", "threshold"], name="budget_alert_once_a_month")]

    def __str__(self) -> str:
        return f"{self.threshold} % of the budget in {self.month:%Y-%m}"
