from __future__ import annotations

import re
import uuid
import zoneinfo

from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.text import slugify


class Theme(models.TextChoices):
    SYSTEM = "system", "System"
    LIGHT = "light", "Light"
    DARK = "dark", "Dark"


class User(AbstractUser):
    # Set when an admin creates the account with a one-time password; cleared by a password change.
    must_change_password = models.BooleanField(default=False)
    # The console's colours: "system" follows the browser's prefers-color-scheme.
    theme = models.CharField(max_length=8, choices=Theme.choices, default=Theme.SYSTEM)


WORKSPACE_SLUG_HELP = "Lowercase letters, digits and hyphens"


def validate_workspace_slug(value: str) -> None:
    """What the form's help text promises, checked by the form and by workspace_create alike."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", value or ""):
        raise ValidationError(f"Use only {WORKSPACE_SLUG_HELP.lower()} (no hyphen at either end), e.g. “marketing-team”.")


def slug_from_name(name: str) -> str:
    """A workspace slug from its name ("Marketing_Team 2" -> "marketing-team-2"); empty if nothing is left."""
    return re.sub(r"[^a-z0-9]+", "-", slugify(name))[:50].strip("-")


def validate_time_zone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known time zone (use an IANA name such as Europe/Berlin).")


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    DEVELOPER = "developer", "Developer"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"


# Higher rank includes every right of a lower one.
ROLE_RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.ADMIN: 3, Role.OWNER: 4}


class WorkspaceQuerySet(models.QuerySet):
    def visible_to(self, user) -> WorkspaceQuerySet:
        """Workspaces the user is a member of, plus the sub-workspaces of defaults they administer."""
        managed_parents = Membership.objects.filter(user=user, role__in=[Role.OWNER, Role.ADMIN]).values("workspace_id")
        # An archived sub-workspace is seen by the default workspace's admins only (console.access.effective_role).
        own = models.Q(memberships__user=user, archived_at__isnull=True)
        return self.filter(own | models.Q(parent_id__in=managed_parents)).distinct()


def _workspace_column(field: str | None) -> str:
    """The column holding a workspace id: `field`'s foreign key, or a Workspace row's own id."""
    return "id" if field is None else f"{field}_id"


class Workspace(models.Model):
    """A default workspace (parent is null; it stands for the organisation) or one of its sub-workspaces."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=50, unique=True)
    time_zone = models.CharField(max_length=64, default="UTC", validators=[validate_time_zone])
    # When a deployment is at capacity, queued requests are admitted round robin across
    # workspaces, this many per round (gateway/capacity.py).
    queue_priority = models.PositiveSmallIntegerField(default=1)
    # Set on a default workspace: every member of it and of its sub-workspaces must use a second factor.
    require_mfa = models.BooleanField(default=False)
    # Set on an archived sub-workspace: its keys are refused by the gateway and its console is
    # read-only, visible to the default workspace's admins only; its history and bills stay.
    archived_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WorkspaceQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=~models.Q(parent=models.F("id")), name="workspace_not_own_parent")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_default(self) -> bool:
        return self.parent_id is None

    @property
    def is_archived(self) -> bool:
        return self.archived_at is not None

    @property
    def root_id(self) -> int:
        return self.parent_id or self.id

    @property
    def root(self) -> Workspace:
        return self.parent if self.parent_id else self

    @property
    def lineage_ids(self) -> list[int]:
        """This workspace and, for a sub-workspace, its default one: whose memberships and budgets reach it."""
        return [self.id] if self.parent_id is None else [self.id, self.parent_id]

    def tree_q(self, field: str | None = "workspace") -> models.Q:
        """Rows whose `field` (a foreign key to Workspace; None: Workspace rows themselves) is this
        workspace or, for a default workspace, one of its sub-workspaces: what a workspace sees of
        its own tree. An id list from a subquery rather than an OR over a join, so each id is an
        index range."""
        column = _workspace_column(field)
        if not self.is_default:
            return models.Q(**{column: self.id})
        return models.Q(**{f"{column}__in": Workspace.objects.filter(models.Q(id=self.id) | models.Q(parent_id=self.id)).values("id")})

    def organisation_q(self, field: str | None = "workspace") -> models.Q:
        """Rows of this workspace's whole organisation (its default workspace and every
        sub-workspace), whichever workspace of it this is. `field` as for tree_q."""
        root_id = self.root_id
        return models.Q(
            **{f"{_workspace_column(field)}__in": Workspace.objects.filter(models.Q(id=root_id) | models.Q(parent_id=root_id)).values("id")}
        )

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.time_zone)


class Membership(models.Model):
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey("console.User", on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    # Granted by an SSO group mapping: kept in step with the identity provider's groups at each SSO sign-in.
    via_sso = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["user__username"]
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="membership_unique_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"


class AuditEvent(models.Model):
    """Append-only record of a state change: who did what to which object, from where."""

    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey("console.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_label = models.CharField(max_length=150, help_text="Username at the time, kept if the user is deleted.")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workspace", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type} {self.target_label}"


class Invitation(models.Model):
    """An offer of membership sent by email; it becomes a membership only when the invited person accepts."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices)
    # HMAC-SHA256 of the token in the emailed link; the token itself is never stored.
    token_digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey("console.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey("console.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["workspace", "email"],
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_open_per_email",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.workspace} ({self.role})"


class SsoGroupMapping(models.Model):
    """Members of an identity-provider group get a role in a workspace when they sign in with SSO."""

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="sso_mappings")
    group = models.CharField(max_length=200)
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["group"]
        constraints = [models.UniqueConstraint(fields=["workspace", "group"], name="sso_mapping_unique_group")]

    def __str__(self) -> str:
        return f"{self.group} → {self.role} in {self.workspace}"
